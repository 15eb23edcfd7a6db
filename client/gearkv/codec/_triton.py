"""Triton backend: ``compress_part``/``decompress_part`` on fused kernels, exact against ``_gear.py``.

What runs where (per part, see ``_kernels.py`` for the kernels):

- encode: torch does the sink copy, the Hadamard rotation (one batched matmul) and, when outliers are
  on, the group means; ``stats_kernel`` takes the outliers and each group's min/max in one pass; torch
  turns those into the stored group parameters (the same ``group_params`` as the torch path, on
  tensors 1/group the size of the input); ``quant_pack_kernel`` quantizes and bit-packs in one pass.
  The low-rank factors (rank > 0, off in every preset) stay in torch.
- decode: ``decode_kernel`` unpacks, dequantizes, puts the outliers back, adds the low-rank term,
  undoes the rotation (head_dim <= 128; torch after the kernel above that) and writes the output dtype.

Codes, group parameters and outliers are bit-identical to the torch path on the same device (so are
blobs); decoded values agree to within the output dtype's rounding (the kernel sums in another order).

The kernels run compiled on CUDA tensors. A process whose first ``import triton`` saw
``TRITON_INTERPRET=1`` runs them in the Triton interpreter instead, which also takes CPU tensors (the
tests use it; far too slow for serving); without it, CPU tensors are refused.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch
import torch.nn.functional as F

from ._config import OUTLIER_BLOCK
from ._gear import PartGeometry, dequantize_part, pad_groups, rotate_body
from ._hadamard import hadamard
from ._lowrank import lowrank_residual
from ._outliers import group_centers
from ._pack import packed_size, unpack_bits
from ._quant import GroupParams, group_params
from .errors import BackendUnavailable

__all__ = ["available", "compress_part", "decompress_part", "import_error", "require"]

_KERNELS = ("stats_kernel", "quant_pack_kernel", "decode_kernel")
_STATS_ELEMS = 2048  # elements per stats program without outliers (with outliers: one 256-element block)
_PACK_CODES = 2048  # codes per quantize + pack program
_DECODE_ELEMS = 4096  # elements per decode program (tokens x padded head_dim)
_MAX_FUSED_ROTATION = 128  # decode undoes the rotation in the kernel up to this (padded) head_dim
_WIDE = 2**31 - 2 * _DECODE_ELEMS  # flat indices at or past this need int64 arithmetic


@functools.cache
def import_error() -> str | None:
    """Why ``import triton`` fails here (None when it works)."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception as exc:  # ImportError, or a broken install failing in its own way
        return f"{type(exc).__name__}: {exc}"
    return None


def available() -> bool:
    """Whether the triton package imports (the kernels' only extra dependency)."""
    return import_error() is None


@functools.cache
def _kernel_set() -> tuple[bool, dict[str, Any]]:
    """``(interpreted, kernels by name)``, built once per process.

    Triton decides at import whether its own library runs compiled or in the interpreter
    (``TRITON_INTERPRET=1`` at that moment), and kernels must match it; so do ours.
    """
    interpreter: Any = importlib.import_module("triton.runtime.interpreter")
    tl: Any = importlib.import_module("triton.language")
    jit: Any = importlib.import_module("triton.runtime.jit")
    source = importlib.import_module("gearkv.codec._kernels")
    interpreted = isinstance(tl.sum, interpreter.InterpretedFunction)
    wrap = interpreter.InterpretedFunction if interpreted else jit.JITFunction
    return interpreted, {name: wrap(getattr(source, name)) for name in _KERNELS}


def require(device: torch.device | None) -> None:
    """Raise ``BackendUnavailable`` unless the Triton kernels can run on ``device`` (None: import only)."""
    err = import_error()
    if err is not None:
        raise BackendUnavailable(
            f"backend='triton' needs the triton package (pip install 'gearkv[kernels]'); import failed: {err}"
        )
    if device is None or device.type == "cuda":
        return
    if device.type == "cpu":
        if not _kernel_set()[0]:
            raise BackendUnavailable(
                "backend='triton' runs on CUDA tensors; CPU tensors run the kernels in the Triton "
                "interpreter only when TRITON_INTERPRET=1 was set before triton was first imported "
                "(slow: for tests). Use backend='torch' or 'auto' on CPU"
            )
        return
    raise BackendUnavailable(f"backend='triton' runs on CUDA (or CPU under TRITON_INTERPRET=1), not {device}")


def _kernels(device: torch.device) -> dict[str, Any]:
    require(device)
    return _kernel_set()[1]


def _arg(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A tensor as the kernels take it: bf16 travels as its int16 bits (converted exactly in-kernel)."""
    return (t.view(torch.int16), True) if t.dtype == torch.bfloat16 else (t, False)


def _dense(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``_arg`` of a section the kernels index as contiguous (blob sections already are)."""
    return _arg(t.contiguous())


def _pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


@functools.lru_cache(maxsize=16)
def _rotation(dim: int, padded: int, device: torch.device) -> torch.Tensor:
    h = torch.zeros(padded, padded, dtype=torch.float32)
    h[:dim, :dim] = hadamard(dim, torch.device("cpu"))
    return h.to(device)


def compress_part(x: torch.Tensor, g: PartGeometry, hp: torch.dtype) -> dict[str, torch.Tensor]:
    """``_gear.compress_part`` on the kernels: the same sections, bit for bit."""
    kern = _kernels(x.device)
    p, dev = g.prefix, x.device
    out: dict[str, torch.Tensor] = {}
    if g.sink:
        out[p + "sink"] = x[:, : g.sink].to(hp)
    if g.body == 0:
        return out
    # y [N, rows, cols]: rotated in fp32, or a strided view of the input (the kernels upcast it). The
    # torch path rotates x as ``encode`` hands it over, in fp32; a matmul's rounding can depend on its
    # operands' strides, so the rotation must see the very same layout.
    body = x.float()[:, g.sink :] if g.rotate else x[:, g.sink :]
    y = rotate_body(body, g) if g.rotate else (body.mT if g.key else body)
    src, in_bf16 = _arg(y)
    mn = torch.empty(g.n, g.rows, g.groups, dtype=torch.float32, device=dev)
    mx = torch.empty_like(mn)
    k = g.outliers
    if k:
        per, row_blocks = OUTLIER_BLOCK // g.group, g.blocks
        center = group_centers(pad_groups(y.float().contiguous(), g))[..., 0].contiguous()
        oidx = torch.empty(g.n, g.blocks, g.groups, k, dtype=torch.uint8, device=dev)
        oval = torch.empty(g.n, g.blocks, g.groups, k, dtype=torch.float32, device=dev)
    else:
        per = max(1, _STATS_ELEMS // g.group)
        row_blocks = -(-g.rows // per)
        center = oval = mn  # unused placeholders
        oidx = torch.empty(1, dtype=torch.uint8, device=dev)
    kern["stats_kernel"][(g.n * row_blocks * g.groups,)](
        src, center, oidx, oval, mn, mx,
        g.rows, g.cols, g.groups, row_blocks, g.padded_rows, *src.stride(),
        K=k, GROUP=g.group, PER=per, IN_BF16=in_bf16,
    )  # fmt: skip
    params, minimum, inv = group_params(mn, mx, g.bits, g.param_bits, hp)
    out.update({p + name: t for name, t in params.named().items()})
    if k:
        out[p + "oidx"], out[p + "oval"] = oidx, oval.to(hp)
    total = g.n * g.rows * g.cols
    size = packed_size(total, g.bits)
    codes = torch.empty(size, dtype=torch.uint8, device=dev)
    low_size = packed_size(total, 2) if g.bits == 3 else size
    per_byte = 8 if g.bits == 3 else 8 // g.bits
    nb = _PACK_CODES // per_byte
    kern["quant_pack_kernel"][(-(-total // _PACK_CODES),)](
        src, center, oidx, minimum.contiguous(), inv.contiguous(), codes,
        total, g.rows, g.cols, g.groups, row_blocks, g.padded_rows, *src.stride(), low_size,
        K=k, GROUP=g.group, PER=per, BITS=g.bits, CPB=per_byte, NB=nb, IN_BF16=in_bf16,
        WIDE=total >= _WIDE,
    )  # fmt: skip
    out[p + "codes"] = codes
    if g.rank:  # as the torch path computes it, from the same codes and parameters: identical factors
        y32 = y.float().contiguous()
        flat = unpack_bits(codes, g.bits, total).view(g.n, g.rows, g.cols)
        grouped = F.pad(flat, (0, g.padded_cols - g.cols)).view(g.n, g.rows, g.groups, g.group)
        approx = dequantize_part(grouped, params, out.get(p + "oidx"), out.get(p + "oval"), g)
        a, b = lowrank_residual(y32 - approx, g.rank, g.power_iters)
        out[p + "la"], out[p + "lb"] = a.to(hp), b.to(hp)
    return out


def decompress_part(sections: dict[str, torch.Tensor], g: PartGeometry, out: torch.Tensor) -> None:
    """``_gear.decompress_part`` on the kernels: writes ``out`` [N, tokens, head_dim] (any float dtype)."""
    kern = _kernels(out.device)
    p, dev = g.prefix, out.device
    if g.sink:
        out[:, : g.sink].copy_(sections[p + "sink"])
    if g.body == 0:
        return
    dest = out[:, g.sink :]
    dp = max(16, _pow2(g.dim))
    fused = g.rotate and dp <= _MAX_FUSED_ROTATION
    target = dest  # above _MAX_FUSED_ROTATION: fp32 scratch, rotated by torch after the kernel
    if g.rotate and not fused:
        target = torch.empty(g.n, g.body, g.dim, dtype=torch.float32, device=dev)
    params = (
        GroupParams(norm=sections[p + "norm"], mcode=sections[p + "mcode"], scode=sections[p + "scode"])
        if g.param_bits == 8
        else GroupParams(pmin=sections[p + "pmin"], pscale=sections[p + "pscale"])
    )
    hp_bf16 = False
    if params.norm is not None and params.mcode is not None and params.scode is not None:
        norm, p0, p1 = params.norm.contiguous(), params.mcode.contiguous(), params.scode.contiguous()
    elif params.pmin is not None and params.pscale is not None:
        norm = torch.empty(1, dtype=torch.float32, device=dev)
        (p0, hp_bf16), (p1, _) = _dense(params.pmin), _dense(params.pscale)
    else:  # unreachable: one of the two forms is always built above
        raise RuntimeError("codec bug: no group parameters")
    placeholder = torch.empty(1, dtype=torch.uint8, device=dev)
    oidx, oval = sections.get(p + "oidx", placeholder).contiguous(), sections.get(p + "oval", placeholder)
    la, lb = sections.get(p + "la", placeholder), sections.get(p + "lb", placeholder)
    for t in (oval, la, lb):
        hp_bf16 = hp_bf16 or t.dtype == torch.bfloat16
    (oval, _), (la, _), (lb, _) = _dense(oval), _dense(la), _dense(lb)
    h = _rotation(g.dim, dp, dev) if fused else placeholder
    dst, out_bf16 = _arg(target)
    total = g.n * g.rows * g.cols
    bt = max(16, _DECODE_ELEMS // dp)
    tok_blocks = -(-g.body // bt)
    kern["decode_kernel"][(g.n * tok_blocks,)](
        sections[p + "codes"].contiguous(), norm, p0, p1, oidx, oval, la, lb, h, dst,
        g.body, g.dim, g.rows, g.cols, g.groups, g.blocks, tok_blocks,
        packed_size(total, 2) if g.bits == 3 else 0, *dst.stride(),
        KEY=g.key, BITS=g.bits, GROUP=g.group, PER=OUTLIER_BLOCK // g.group, K=g.outliers, RANK=g.rank,
        PARAM8=g.param_bits == 8, HP_BF16=hp_bf16, ROTATE=fused, OUT_BF16=out_bf16, BT=bt, DP=dp,
        WIDE=total >= _WIDE, CPB=8 // g.bits,
    )  # fmt: skip
    if g.rotate and not fused:
        dest.copy_(target @ hadamard(g.dim, dev))
