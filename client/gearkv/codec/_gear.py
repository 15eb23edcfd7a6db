"""GEAR on stacked KV: ``compress_part``/``decompress_part`` and the exact byte layout they share.

A *part* is all keys (or all values) of a chunk stacked as ``[N, tokens, head_dim]`` with
``N = layers * batch * kv_heads``. Keys are quantized per channel over groups of tokens, so they are
handled transposed, ``[N, head_dim, tokens]``; values per token over groups of dims,
``[N, tokens, head_dim]``.
Either way the quantized matrix is ``[N, rows, cols]`` with groups along ``cols``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._config import OUTLIER_BLOCK, CodecConfig
from ._hadamard import hadamard
from ._lowrank import apply_lowrank, lowrank_residual
from ._outliers import merge_outliers, split_outliers
from ._pack import pack_bits, packed_size, unpack_bits
from ._quant import GroupParams, dequantize_groups, quantize_groups

__all__ = [
    "PartGeometry",
    "Section",
    "compress_part",
    "decompress_part",
    "dequantize_part",
    "pad_groups",
    "part_geometry",
    "part_sections",
    "rotate_body",
]

Section = tuple[str, torch.dtype, tuple[int, ...]]


@dataclass(frozen=True)
class PartGeometry:
    """Everything about one part's storage that follows from the config, the shape and the sink."""

    prefix: str  # "k." or "v."
    key: bool
    n: int
    tokens: int
    dim: int
    sink: int
    bits: int
    group: int
    outliers: int  # per 256-element block
    rank: int  # effective rank (clipped to the matrix size)
    power_iters: int
    param_bits: int
    rotate: bool

    @property
    def body(self) -> int:
        """Tokens that are quantized (all but the sink)."""
        return self.tokens - self.sink

    @property
    def rows(self) -> int:
        return self.dim if self.key else self.body

    @property
    def cols(self) -> int:
        return self.body if self.key else self.dim

    @property
    def groups(self) -> int:
        return -(-self.cols // self.group)

    @property
    def padded_cols(self) -> int:
        return self.groups * self.group

    @property
    def blocks(self) -> int:
        return -(-self.rows // (OUTLIER_BLOCK // self.group))

    @property
    def padded_rows(self) -> int:
        return self.blocks * (OUTLIER_BLOCK // self.group) if self.outliers else self.rows


def part_geometry(
    cfg: CodecConfig, key: bool, n: int, tokens: int, dim: int, sink: int, late: bool = False
) -> PartGeometry:
    """Geometry of the keys (``key``), the later layers' keys (``late``) or the values."""
    bits, group, outliers, rank = (
        (cfg.k_bits, cfg.k_group, cfg.k_outliers_per_block, cfg.k_rank)
        if key
        else (cfg.v_bits, cfg.v_group, cfg.v_outliers_per_block, cfg.v_rank)
    )
    if key and late:
        bits, group = cfg.k_late_bits or bits, cfg.k_late_group or group
    body = tokens - sink
    rank = min(rank, body, dim)
    return PartGeometry(
        ("kl." if late else "k.") if key else "v.", key, n, tokens, dim, sink, bits, group, outliers, rank,
        cfg.power_iters, cfg.param_bits, cfg.rotate,
    )  # fmt: skip


def part_sections(g: PartGeometry, hp: torch.dtype) -> list[Section]:
    """Name, dtype and shape of every section this part stores, in no particular order."""
    p, n, r, ng = g.prefix, g.n, g.rows, g.groups
    out: list[Section] = []
    if g.sink:
        out.append((p + "sink", hp, (n, g.sink, g.dim)))
    if g.body == 0:
        return out
    if g.param_bits == 8:
        out += [(p + "norm", torch.float32, (n, 4)), (p + "mcode", torch.uint8, (n, r, ng))]
        out.append((p + "scode", torch.uint8, (n, r, ng)))
    else:
        out += [(p + "pmin", hp, (n, r, ng)), (p + "pscale", hp, (n, r, ng))]
    out.append((p + "codes", torch.uint8, (packed_size(n * r * g.cols, g.bits),)))
    if g.outliers:
        out.append((p + "oidx", torch.uint8, (n, g.blocks, ng, g.outliers)))
        out.append((p + "oval", hp, (n, g.blocks, ng, g.outliers)))
    if g.rank:
        out += [(p + "la", hp, (n, r, g.rank)), (p + "lb", hp, (n, g.cols, g.rank))]
    return out


def _valid_mask(g: PartGeometry, device: torch.device) -> torch.Tensor | None:
    rows, cols = g.padded_rows, g.padded_cols
    if rows == g.rows and cols == g.cols:
        return None
    r = torch.arange(rows, device=device).view(1, rows, 1, 1) < g.rows
    c = (torch.arange(cols, device=device) < g.cols).view(1, 1, g.groups, g.group)
    return r & c


def rotate_body(body: torch.Tensor, g: PartGeometry) -> torch.Tensor:
    """The rotated body as the quantized matrix [N, rows, cols] fp32 (``g.rotate`` only)."""
    h = hadamard(g.dim, body.device)
    return h @ body.mT.float() if g.key else body.float() @ h


def pad_groups(y: torch.Tensor, g: PartGeometry) -> torch.Tensor:
    """``y`` [N, rows, cols] as [N, padded_rows, groups, group], padded by repeating the last column / row.

    Padding must not widen any group's range; the padded copy is contiguous.
    """
    yp = y
    if g.padded_cols > g.cols:
        yp = torch.cat([y, y[:, :, -1:].expand(-1, -1, g.padded_cols - g.cols)], dim=2)
    if g.padded_rows > g.rows:
        yp = torch.cat([yp, yp[:, -1:].expand(-1, g.padded_rows - g.rows, -1)], dim=1)
    return yp.reshape(g.n, g.padded_rows, g.groups, g.group)


def compress_part(x: torch.Tensor, g: PartGeometry, hp: torch.dtype) -> dict[str, torch.Tensor]:
    """Compress one part ``x`` [N, tokens, head_dim] (any float dtype; not modified) into its sections."""
    p = g.prefix
    out: dict[str, torch.Tensor] = {}
    if g.sink:
        out[p + "sink"] = x[:, : g.sink].to(hp)
    if g.body == 0:
        return out
    body = x[:, g.sink :]
    if g.rotate:
        y = rotate_body(body, g)  # [N, rows, cols] fp32
    else:
        y = torch.empty(g.n, g.rows, g.cols, dtype=torch.float32, device=x.device)
        y.copy_(body.mT if g.key else body)
    grouped = pad_groups(y, g)
    rest = grouped
    if g.outliers:
        rest, oidx, oval = split_outliers(grouped, g.outliers, _valid_mask(g, x.device))
        out[p + "oidx"], out[p + "oval"] = oidx, oval.to(hp)
    codes, params = quantize_groups(rest[:, : g.rows], g.bits, g.param_bits, hp)
    out.update({p + name: t for name, t in params.named().items()})
    flat = codes.view(g.n, g.rows, g.padded_cols)[:, :, : g.cols]
    out[p + "codes"] = pack_bits(flat.contiguous(), g.bits)
    if g.rank:
        approx = dequantize_part(codes, params, out.get(p + "oidx"), out.get(p + "oval"), g)
        a, b = lowrank_residual(y - approx, g.rank, g.power_iters)
        out[p + "la"], out[p + "lb"] = a.to(hp), b.to(hp)
    return out


def dequantize_part(
    codes: torch.Tensor,
    params: GroupParams,
    oidx: torch.Tensor | None,
    oval: torch.Tensor | None,
    g: PartGeometry,
) -> torch.Tensor:
    """D + S as fp32 [N, rows, cols] (a strided view of a padded buffer)."""
    deq = dequantize_groups(codes, params)
    if oidx is not None and oval is not None:
        if g.padded_rows > g.rows:
            pad = deq.new_zeros(g.n, g.padded_rows - g.rows, g.groups, g.group)
            deq = torch.cat([deq, pad], dim=1)
        merge_outliers(deq, oidx, oval)
    return deq.view(g.n, -1, g.padded_cols)[:, : g.rows, : g.cols]


def decompress_part(sections: dict[str, torch.Tensor], g: PartGeometry, out: torch.Tensor) -> None:
    """Write the reconstruction of one part into ``out`` [N, tokens, head_dim] (any float dtype)."""
    p = g.prefix
    if g.sink:
        out[:, : g.sink].copy_(sections[p + "sink"])
    if g.body == 0:
        return
    codes = unpack_bits(sections[p + "codes"], g.bits, g.n * g.rows * g.cols).view(g.n, g.rows, g.cols)
    if g.padded_cols > g.cols:
        codes = F.pad(codes, (0, g.padded_cols - g.cols))
    params = (
        GroupParams(norm=sections[p + "norm"], mcode=sections[p + "mcode"], scode=sections[p + "scode"])
        if g.param_bits == 8
        else GroupParams(pmin=sections[p + "pmin"], pscale=sections[p + "pscale"])
    )
    grouped = codes.view(g.n, g.rows, g.groups, g.group)
    y = dequantize_part(grouped, params, sections.get(p + "oidx"), sections.get(p + "oval"), g)
    if g.rank:
        y = apply_lowrank(y, sections[p + "la"], sections[p + "lb"])
    x = y.mT if g.key else y
    if g.rotate:
        x = x @ hadamard(g.dim, out.device)
    out[:, g.sink :].copy_(x)
