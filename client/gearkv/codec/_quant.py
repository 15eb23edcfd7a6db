"""Grouped asymmetric quantization: ``quantize_groups``/``dequantize_groups`` and their group parameters.

Groups lie along the last axis of a ``[N, rows, groups, group]`` tensor. Each group stores a minimum and a
scale, either as 16-bit floats (KIVI style) or as two bytes: a minimum on a linear u8 grid and a scale on a
log-domain u8 grid, both normalised per leading index ``n`` (one KV head of one layer) by four fp32 numbers.
The minimum is rounded down and the scale up, so the rounded range still covers the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GroupParams", "dequantize_groups", "group_params", "quantize_groups"]

_LOG_RANGE = 12.0  # octaves of scale kept below a head's largest scale; smaller groups clamp up to it
_MIN_SCALE = 2.0**-100


@dataclass(frozen=True)
class GroupParams:
    """Stored group parameters: ``norm``/``mcode``/``scode`` (8-bit) or ``pmin``/``pscale`` (16-bit)."""

    norm: torch.Tensor | None = None  # [N, 4] fp32: min lo, min step, log2-scale lo, log2-scale step
    mcode: torch.Tensor | None = None  # [N, rows, groups] uint8
    scode: torch.Tensor | None = None  # [N, rows, groups] uint8
    pmin: torch.Tensor | None = None  # [N, rows, groups] 16-bit (or fp32 for huge fp32 input)
    pscale: torch.Tensor | None = None

    def named(self) -> dict[str, torch.Tensor]:
        """The stored tensors by section name (``norm``, ``mcode``, ``scode`` or ``pmin``, ``pscale``)."""
        fields = ("norm", "mcode", "scode", "pmin", "pscale")
        return {f: t for f in fields if (t := getattr(self, f)) is not None}

    def minimum_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 ``(minimum, scale)`` per group exactly as the decoder sees them."""
        if self.norm is not None and self.mcode is not None and self.scode is not None:
            n = self.norm[:, :, None, None]
            minimum = n[:, 0] + self.mcode.float() * n[:, 1]
            scale = torch.exp2(n[:, 2] + self.scode.float() * n[:, 3])
            return minimum, scale
        if self.pmin is not None and self.pscale is not None:
            return self.pmin.float(), self.pscale.float()
        raise ValueError("GroupParams holds neither 8-bit nor 16-bit parameters")


def _params_u8(mn: torch.Tensor, mx: torch.Tensor, levels: int) -> GroupParams:
    dims = (1, 2)
    lo = mn.amin(dim=dims)
    mstep = (mn.amax(dim=dims) - lo) / 255
    safe = torch.where(mstep > 0, mstep, torch.ones_like(mstep))
    mcode = ((mn - lo[:, None, None]) / safe[:, None, None]).floor_().clamp_(0, 255)
    minimum = lo[:, None, None] + mcode * mstep[:, None, None]
    log_scale = torch.log2(((mx - minimum) / levels).clamp_(min=_MIN_SCALE))
    lmax = log_scale.amax(dim=dims)
    lmin = torch.maximum(log_scale.amin(dim=dims), lmax - _LOG_RANGE)
    lstep = (lmax - lmin) / 255
    safe = torch.where(lstep > 0, lstep, torch.ones_like(lstep))
    scode = ((log_scale - lmin[:, None, None]) / safe[:, None, None]).ceil_().clamp_(0, 255)
    norm = torch.stack([lo, mstep, lmin, lstep], dim=1)
    return GroupParams(norm=norm, mcode=mcode.to(torch.uint8), scode=scode.to(torch.uint8))


def _params_16(mn: torch.Tensor, mx: torch.Tensor, levels: int, dtype: torch.dtype) -> GroupParams:
    pmin = mn.to(dtype)
    pscale = ((mx - pmin.float()) / levels).to(dtype)
    return GroupParams(pmin=pmin, pscale=pscale)


def group_params(
    mn: torch.Tensor, mx: torch.Tensor, bits: int, param_bits: int, param_dtype: torch.dtype
) -> tuple[GroupParams, torch.Tensor, torch.Tensor]:
    """Stored parameters of groups with minima ``mn`` and maxima ``mx`` [N, rows, groups] (fp32).

    Returns:
        ``(params, minimum, inv)``: the stored ``GroupParams`` and the fp32 minimum and 1 / scale per
        group that codes are computed with (0 where the scale is 0, so a constant group codes as 0).
        Shared by the torch path and the Triton kernels, which is what keeps their codes identical.
    """
    levels = (1 << bits) - 1
    mn, mx = mn + 0.0, mx + 0.0  # -0.0 -> +0.0: which zero a min/max reduction returns is unspecified
    params = _params_u8(mn, mx, levels) if param_bits == 8 else _params_16(mn, mx, levels, param_dtype)
    minimum, scale = params.minimum_and_scale()
    inv = torch.where(scale > 0, 1.0 / scale.clamp(min=_MIN_SCALE), torch.zeros_like(scale))
    return params, minimum, inv


def quantize_groups(
    x: torch.Tensor, bits: int, param_bits: int, param_dtype: torch.dtype
) -> tuple[torch.Tensor, GroupParams]:
    """Quantize ``x`` [N, rows, groups, group] (fp32) to uint8 codes of ``bits`` bits, one range per group.

    Codes are ``round((x - minimum) / scale)`` (half to even), clamped to ``[0, 2**bits - 1]``.

    Returns:
        codes [N, rows, groups, group] uint8 and the stored ``GroupParams``.
    """
    params, minimum, inv = group_params(x.amin(dim=-1), x.amax(dim=-1), bits, param_bits, param_dtype)
    codes = (x - minimum[..., None]).mul_(inv[..., None]).round_().clamp_(0, (1 << bits) - 1)
    return codes.to(torch.uint8), params


def dequantize_groups(codes: torch.Tensor, params: GroupParams) -> torch.Tensor:
    """Inverse of ``quantize_groups``: fp32 [N, rows, groups, group] from codes and parameters."""
    minimum, scale = params.minimum_and_scale()
    return torch.addcmul(minimum[..., None], codes.float(), scale[..., None])
