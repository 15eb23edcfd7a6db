# mypy: ignore-errors
# Triton's kernel language is not typeable Python; the typed launchers live in _triton.py.
"""Triton kernels of the GEAR codec, written as plain functions.

``_triton.py`` wraps them with ``triton.jit`` (CUDA) or the Triton interpreter (CPU tensors under
``TRITON_INTERPRET=1``), so both variants can live in one process. No ``from __future__ import
annotations`` here: Triton reads the ``tl.constexpr`` annotations as objects.

Index spaces follow ``_gear.py``: one part is ``[N, rows, cols]`` with quantization groups of ``GROUP``
along ``cols`` (keys: rows = head_dim, cols = tokens; values: rows = tokens, cols = head_dim); outliers
are picked per block of ``PER`` rows x one group (256 elements). A tail group (cols not a multiple of
GROUP) and tail rows of an outlier block repeat the last column / row, exactly as the torch path pads.

Every float computation that decides a stored byte (scores, the argmax, min/max, code rounding) is an
exact IEEE operation in the same order as the torch path, so the codes are bit-identical; sums whose
order would differ (the group means, the Hadamard rotation on encode) are computed by torch and passed in.
"""

import triton.language as tl


def stats_kernel(
    x_ptr, center_ptr, oidx_ptr, oval_ptr, mn_ptr, mx_ptr,
    rows, cols, groups, row_blocks, padded_rows, sxn, sxr, sxc,
    K: tl.constexpr, GROUP: tl.constexpr, PER: tl.constexpr, IN_BF16: tl.constexpr,
):  # fmt: skip
    """Per group of one (n, row block): take the K outliers (K > 0) and write the rest's min / max.

    x: [N, rows, cols] strided (fp16/fp32, or bf16 bits as int16 when IN_BF16); center: [N, padded_rows,
    groups] fp32 group means; oidx [N, row_blocks, groups, K] uint8, oval [..., K] fp32;
    mn / mx: [N, rows, groups] fp32.
    """
    pid = tl.program_id(0)
    gi = pid % groups
    rb = (pid // groups) % row_blocks
    n = pid // (groups * row_blocks)
    lr = tl.arange(0, PER)
    lc = tl.arange(0, GROUP)
    r = rb * PER + lr  # [PER]
    c = gi * GROUP + lc  # [GROUP]
    rc = tl.minimum(r, rows - 1).to(tl.int64)  # padding repeats the last row / column
    cc = tl.minimum(c, cols - 1).to(tl.int64)
    ptrs = x_ptr + n.to(tl.int64) * sxn + rc[:, None] * sxr + cc[None, :] * sxc
    if IN_BF16:
        x = (tl.load(ptrs).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(ptrs).to(tl.float32)  # [PER, GROUP]
    rest = x
    if K > 0:
        center = tl.load(center_ptr + (n * padded_rows + r).to(tl.int64) * groups + gi)  # [PER]
        valid = (r[:, None] < rows) & (c[None, :] < cols)
        score = tl.where(valid, tl.abs(x - center[:, None]), -1.0)
        offs = lr[:, None] * GROUP + lc[None, :]  # offset inside the 256-element block
        taken = offs < 0
        out = ((n * row_blocks + rb).to(tl.int64) * groups + gi) * K
        for j in tl.static_range(K):
            best = tl.max(tl.max(score, axis=1), axis=0)
            # leftmost maximum, as torch.argmax (and topk on distinct scores)
            o = tl.min(tl.min(tl.where(score == best, offs, PER * GROUP), axis=1), axis=0)
            sel = offs == o
            tl.store(oidx_ptr + out + j, o.to(tl.uint8))
            tl.store(oval_ptr + out + j, tl.max(tl.max(tl.where(sel, x, float("-inf")), axis=1), axis=0))
            taken = taken | sel
            score = tl.where(sel, float("-inf"), score)
        rest = tl.where(taken, center[:, None], x)
    dst = (n * rows + r).to(tl.int64) * groups + gi
    keep = r < rows
    tl.store(mn_ptr + dst, tl.min(rest, axis=1), mask=keep)
    tl.store(mx_ptr + dst, tl.max(rest, axis=1), mask=keep)


def quant_pack_kernel(
    x_ptr, center_ptr, oidx_ptr, minimum_ptr, inv_ptr, out_ptr,
    total, rows, cols, groups, row_blocks, padded_rows, sxn, sxr, sxc, low_size,
    K: tl.constexpr, GROUP: tl.constexpr, PER: tl.constexpr, BITS: tl.constexpr, CPB: tl.constexpr,
    NB: tl.constexpr, IN_BF16: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    """Quantize codes in flat [N, rows, cols] order and pack them as ``_pack.pack_bits`` does.

    Each program writes NB bytes of CPB codes each (8 // BITS; for 3 bits: NB bytes of the 1-bit plane
    and 2*NB of the 2-bit plane, CPB = 8). minimum / inv: [N, rows, groups] fp32 exactly as the torch
    path computes them; outliers are quantized as their group's mean (the decoder overwrites them).
    """
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    byte = pid * NB + tl.arange(0, NB)  # [NB]
    j = tl.arange(0, CPB)  # [CPB]
    f = byte[:, None] * CPB + j[None, :]  # [NB, CPB] flat code index
    live = f < total
    f = tl.where(live, f, 0)
    rc = rows * cols
    n = f // rc
    rem = f - n * rc
    r = rem // cols
    c = rem - r * cols
    gi = c // GROUP
    ptrs = x_ptr + n.to(tl.int64) * sxn + r.to(tl.int64) * sxr + c.to(tl.int64) * sxc
    if IN_BF16:
        x = (tl.load(ptrs).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(ptrs).to(tl.float32)
    p = (n * rows + r) * groups + gi
    if K > 0:
        blk = ((n * row_blocks + r // PER) * groups + gi) * K
        off = (r % PER) * GROUP + (c % GROUP)
        hit = off < 0
        for i in tl.static_range(K):
            hit = hit | (tl.load(oidx_ptr + blk + i).to(tl.int32) == off)
        center = tl.load(center_ptr + (n * padded_rows + r) * groups + gi)
        x = tl.where(hit, center, x)
    v = (x - tl.load(minimum_ptr + p)) * tl.load(inv_ptr + p)
    # clamp, then round half to even: both fix integers and are monotone, so the order does not
    # matter; adding and removing 2**23 rounds a float in [0, 2**23) to the nearest even integer.
    v = tl.minimum(tl.maximum(v, 0.0), (1 << BITS) - 1)
    v = (v + 8388608.0) - 8388608.0
    code = tl.where(live, v.to(tl.int32), 0)
    if BITS == 8:
        tl.store(out_ptr + byte, tl.sum(code, axis=1).to(tl.uint8), mask=byte < low_size)
    elif BITS == 3:
        hi = tl.sum((code >> 2) << j[None, :], axis=1)
        tl.store(out_ptr + low_size + byte, hi.to(tl.uint8), mask=byte * 8 < total)
        lo = (code & 3) << ((j[None, :] % 4) * 2)
        lo0 = tl.sum(tl.where(j[None, :] < 4, lo, 0), axis=1)
        lo1 = tl.sum(tl.where(j[None, :] >= 4, lo, 0), axis=1)
        tl.store(out_ptr + 2 * byte, lo0.to(tl.uint8), mask=2 * byte < low_size)
        tl.store(out_ptr + 2 * byte + 1, lo1.to(tl.uint8), mask=2 * byte + 1 < low_size)
    else:
        packed = tl.sum(code << (j[None, :] * BITS), axis=1)
        tl.store(out_ptr + byte, packed.to(tl.uint8), mask=byte < low_size)


def decode_kernel(
    codes_ptr, norm_ptr, p0_ptr, p1_ptr, oidx_ptr, oval_ptr, a_ptr, b_ptr, h_ptr, out_ptr,
    body, dim, rows, cols, groups, row_blocks, tok_blocks, low_size, son, sot, sod,
    KEY: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, PER: tl.constexpr, K: tl.constexpr,
    RANK: tl.constexpr, PARAM8: tl.constexpr, HP_BF16: tl.constexpr, ROTATE: tl.constexpr,
    OUT_BF16: tl.constexpr, BT: tl.constexpr, DP: tl.constexpr, WIDE: tl.constexpr, CPB: tl.constexpr,
):  # fmt: skip
    """Unpack + dequantize + outliers + low rank (+ inverse rotation) into ``out`` [N, body, dim].

    One program covers BT tokens x all (DP >= dim) channels of one n. 16-bit side data (pmin/pscale,
    oval, la/lb) is fp16/fp32, or bf16 bits as int16 when HP_BF16; ``out`` is fp16/fp32, or int16 that
    receives bf16 bits (round to nearest even) when OUT_BF16. h: [DP, DP] fp32 rotation, zero padded.
    """
    pid = tl.program_id(0)
    tb = pid % tok_blocks
    n = pid // tok_blocks
    if WIDE:
        n = n.to(tl.int64)
    t = tb * BT + tl.arange(0, BT)  # [BT]
    d = tl.arange(0, DP)  # [DP]
    valid = (t[:, None] < body) & (d[None, :] < dim)
    zero = tl.zeros([BT, DP], dtype=tl.int32)
    if KEY:
        row = d[None, :] + zero
        col = t[:, None] + zero
    else:
        row = t[:, None] + zero
        col = d[None, :] + zero
    row = tl.where(valid, row, 0)
    col = tl.where(valid, col, 0)
    nrow = n * rows + row
    f = nrow * cols + col  # flat code index
    if BITS == 8:
        code = tl.load(codes_ptr + f).to(tl.int32)
    elif BITS == 3:
        lo = (tl.load(codes_ptr + f // 4).to(tl.int32) >> ((f % 4) * 2).to(tl.int32)) & 3
        hi = (tl.load(codes_ptr + low_size + f // 8).to(tl.int32) >> (f % 8).to(tl.int32)) & 1
        code = lo | (hi << 2)
    else:
        code = (tl.load(codes_ptr + f // CPB).to(tl.int32) >> ((f % CPB) * BITS).to(tl.int32)) & (
            (1 << BITS) - 1
        )
    gi = col // GROUP
    p = nrow * groups + gi
    if PARAM8:
        nb = norm_ptr + n * 4
        minimum = tl.load(nb) + tl.load(p0_ptr + p).to(tl.float32) * tl.load(nb + 1)
        scale = tl.exp2(tl.load(nb + 2) + tl.load(p1_ptr + p).to(tl.float32) * tl.load(nb + 3))
    elif HP_BF16:
        minimum = (tl.load(p0_ptr + p).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        scale = (tl.load(p1_ptr + p).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        minimum = tl.load(p0_ptr + p).to(tl.float32)
        scale = tl.load(p1_ptr + p).to(tl.float32)
    y = minimum + code.to(tl.float32) * scale
    if K > 0:
        blk = ((n * row_blocks + row // PER) * groups + gi) * K
        off = (row % PER) * GROUP + (col % GROUP)
        for i in tl.static_range(K):
            hit = tl.load(oidx_ptr + blk + i).to(tl.int32) == off
            if HP_BF16:
                ov = (tl.load(oval_ptr + blk + i).to(tl.int32) << 16).to(tl.float32, bitcast=True)
            else:
                ov = tl.load(oval_ptr + blk + i).to(tl.float32)
            y = tl.where(hit, ov, y)
    for i in tl.static_range(RANK):
        a_at = a_ptr + nrow * RANK + i
        b_at = b_ptr + (n * cols + col) * RANK + i
        if HP_BF16:
            av = (tl.load(a_at).to(tl.int32) << 16).to(tl.float32, bitcast=True)
            bv = (tl.load(b_at).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            av = tl.load(a_at).to(tl.float32)
            bv = tl.load(b_at).to(tl.float32)
        y = y + av * bv
    y = tl.where(valid, y, 0.0)
    if ROTATE:
        h = tl.load(h_ptr + d[:, None] * DP + d[None, :])
        y = tl.dot(y, h, input_precision="ieee")
    dst = out_ptr + n.to(tl.int64) * son + t[:, None].to(tl.int64) * sot + d[None, :].to(tl.int64) * sod
    if OUT_BF16:
        u = y.to(tl.uint32, bitcast=True)
        u = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        tl.store(dst, u.to(tl.int16), mask=valid)
    else:
        tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=valid)
