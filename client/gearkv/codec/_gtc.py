"""gtc: entropy-coded uniform quantization of rotated KV with calibrated per-layer steps.

Where GEAR spends 16 bits per group on a minimum and a scale so that a fixed number of levels covers each
group's range, gtc quantizes with a *step* (mid-tread, codes -8..7) and leaves the rate to the entropy
stage: frequent small codes cost little, rare large ones cost more, and the group parameters go away.

- Keys: Hadamard-rotated along head_dim, one mean and one spread (sigma) per channel over the chunk's
  tokens; step = beta_layer * sigma (per channel).
- Values: rotated likewise, one mean per channel; step = beta_layer * rms of the token's centred values
  (per token: a value's error reaches the output through that token's attention weight, KIVI's finding).
- beta_layer = the preset's step * the calibration's per-layer scale (bit allocation against KL).
- Codes are stored channel-major, two tokens per byte (4-bit nibbles), so a byte-oriented entropy coder
  (zstd's Huffman stage) sees one channel's codes side by side. A code outside -8..7 (rare: a step is
  a fraction of the spread) is an escape: its exact 16-bit value is kept with its index.
- The attention sink (absolute positions below ``sink_tokens``) is kept at 16 bits.

Spreads are stored as u8 codes on a per-row log2 grid (two fp32 per row); code 0 means zero (a constant
channel or token), which decodes exactly to the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._hadamard import hadamard

__all__ = ["GtcGeometry", "compress_gtc", "decompress_gtc", "gtc_sections"]

Section = tuple[str, torch.dtype, tuple[int, ...]]
QMIN, QMAX = -8, 7
_LOG_RANGE = 20.0  # octaves of spread kept below a row's largest; smaller spreads clamp up to it
# The spread grid is at most this fine (octaves): finer buys nothing (encoder and decoder use the same
# rounded spread) and costs the entropy stage, which then finds no structure in the codes.
_SPREAD_GRID = 1 / 16


@dataclass(frozen=True)
class GtcGeometry:
    prefix: str  # "k." or "v."
    key: bool
    n: int
    tokens: int
    dim: int
    sink: int
    escapes: int
    rotate: bool

    @property
    def body(self) -> int:
        return self.tokens - self.sink

    @property
    def spreads(self) -> int:
        """Spreads per row: one per channel (keys) or per token (values)."""
        return self.dim if self.key else self.body


def gtc_sections(g: GtcGeometry, hp: torch.dtype) -> list[Section]:
    p, n = g.prefix, g.n
    out: list[Section] = []
    if g.sink:
        out.append((p + "sink", hp, (n, g.sink, g.dim)))
    if g.body == 0:
        return out
    out += [
        (p + "mean", hp, (n, g.dim)),
        (p + "snorm", torch.float32, (n, 2)),
        (p + "scode", torch.uint8, (n, g.spreads)),
        (p + "codes", torch.uint8, (n, g.dim, (g.body + 1) // 2)),
    ]
    if g.escapes:
        out += [(p + "eidx", torch.int32, (g.escapes,)), (p + "eval", hp, (g.escapes,))]
    return out


def _spread_codes(spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u8 log2-grid codes of ``spread`` [N, S] (>= 0): (norm [N, 2] fp32, codes [N, S] u8, decoded [N, S])."""
    positive = spread > 0
    logs = torch.log2(spread.clamp(min=2.0**-126))
    hi = torch.where(positive, logs, torch.full_like(logs, -float("inf"))).amax(dim=1)
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    lo_all = torch.where(positive, logs, torch.full_like(logs, float("inf"))).amin(dim=1)
    lo = torch.maximum(torch.where(torch.isfinite(lo_all), lo_all, hi), hi - _LOG_RANGE)
    step = torch.clamp((hi - lo) / 254, min=_SPREAD_GRID)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = ((logs - lo[:, None]) / safe[:, None]).round_().clamp_(0, 254) + 1
    codes = torch.where(positive, codes, torch.zeros_like(codes)).to(torch.uint8)
    norm = torch.stack([lo, step], dim=1)
    return norm, codes, decode_spreads(norm, codes)


def decode_spreads(norm: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    c = codes.float()
    values = torch.exp2(norm[:, 0:1] + (c - 1) * norm[:, 1:2])
    return torch.where(codes > 0, values, torch.zeros_like(values))


def _steps(g: GtcGeometry, spread: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Quantization step broadcastable to the channel-major body [N, dim, body]."""
    s = spread * beta[:, None]
    return s[:, :, None] if g.key else s[:, None, :]


def compress_gtc(
    x: torch.Tensor, beta: torch.Tensor, g: GtcGeometry, hp: torch.dtype
) -> dict[str, torch.Tensor]:
    """Compress one part ``x`` [N, tokens, dim] with per-row steps ``beta`` [N] (fp32) into its sections.

    The escape count is data dependent: the caller reads it from ``len(out[prefix + "eidx"])``.
    """
    p = g.prefix
    out: dict[str, torch.Tensor] = {}
    if g.sink:
        out[p + "sink"] = x[:, : g.sink].to(hp)
    if g.body == 0:
        return out
    body = x[:, g.sink :].float()  # rotate in fp32: a row's rotation grows up to sqrt(dim)-fold
    y = body @ hadamard(g.dim, x.device) if g.rotate else body
    y = y.mT.contiguous()  # [N, dim, body]: channel-major, as the codes are stored
    mean = y.mean(dim=2).to(hp)
    r = y - mean.float()[:, :, None]
    spread = r.std(dim=2, correction=0) if g.key else r.pow(2).mean(dim=1).sqrt()
    norm, scode, spread_q = _spread_codes(spread)
    step = _steps(g, spread_q, beta)
    inv = torch.where(step > 0, 1.0 / step.clamp(min=2.0**-126), torch.zeros_like(step))
    q = r.mul_(inv).round_()
    escape = (q < QMIN) | (q > QMAX)
    idx = escape.view(-1).nonzero().squeeze(1)
    codes = q.clamp_(QMIN, QMAX).sub_(QMIN).to(torch.uint8)
    if g.body % 2:
        codes = torch.cat([codes, torch.zeros_like(codes[:, :, :1])], dim=2)
    packed = codes[:, :, 0::2] | (codes[:, :, 1::2] << 4)
    out.update({p + "mean": mean, p + "snorm": norm, p + "scode": scode, p + "codes": packed.contiguous()})
    if idx.numel():
        # positions as gaps from the previous escape (the first from 0): small numbers the entropy
        # stage packs far better than absolute indices
        out[p + "eidx"] = torch.diff(idx, prepend=idx.new_zeros(1)).to(torch.int32)
        out[p + "eval"] = y.view(-1)[idx].to(hp)
    return out


def decompress_gtc(
    sections: dict[str, torch.Tensor], beta: torch.Tensor, g: GtcGeometry, out: torch.Tensor
) -> None:
    """Write the reconstruction of one part into ``out`` [N, tokens, dim] (any float dtype)."""
    p = g.prefix
    if g.sink:
        out[:, : g.sink].copy_(sections[p + "sink"])
    if g.body == 0:
        return
    packed = sections[p + "codes"]
    q = (
        torch.stack([packed & 15, packed >> 4], dim=3)
        .view(g.n, g.dim, -1)[:, :, : g.body]
        .float()
        .sub_(-QMIN)
    )
    step = _steps(g, decode_spreads(sections[p + "snorm"], sections[p + "scode"]), beta.to(packed.device))
    y = torch.addcmul(sections[p + "mean"].float()[:, :, None], q, step)  # [N, dim, body]
    if g.escapes:
        gaps = sections[p + "eidx"].long()
        if gaps.numel() and (int(gaps[0]) < 0 or (gaps.numel() > 1 and int(gaps[1:].min()) < 1)):
            raise IndexError("escape positions must increase")
        idx = gaps.cumsum(0)
        if idx.numel() and int(idx[-1]) >= y.numel():  # the last is the largest
            raise IndexError("escape index outside the part")
        y.view(-1)[idx] = sections[p + "eval"].float()
    body = y.mT @ hadamard(g.dim, y.device) if g.rotate else y.mT
    out[:, g.sink :].copy_(body)
