"""Sparse outliers: ``split_outliers``/``merge_outliers`` on a ``[N, rows, groups, group]`` tensor.

Blocks of 256 elements (``256 // group`` consecutive rows of one group column) each give up their ``k``
elements farthest from their group's mean. Each is stored as its exact value plus a one-byte offset
inside its block, so an outlier costs 3 bytes at 16 bits.
"""

from __future__ import annotations

import torch

from ._config import OUTLIER_BLOCK

__all__ = ["group_centers", "merge_outliers", "split_outliers"]


def _flat_index(offsets: torch.Tensor, rows: int, groups: int, group: int) -> torch.Tensor:
    """Flat positions in [N, rows, groups, group] of the offsets [N, blocks, groups, k] (int64)."""
    n, blocks, _, _ = offsets.shape
    per = OUTLIER_BLOCK // group
    dev = offsets.device
    row = offsets // group + (torch.arange(blocks, device=dev) * per).view(1, blocks, 1, 1)
    col = offsets % group
    gi = torch.arange(groups, device=dev).view(1, 1, groups, 1)
    ni = torch.arange(n, device=dev).view(n, 1, 1, 1)
    return ((ni * rows + row) * groups + gi) * group + col


def group_centers(x: torch.Tensor) -> torch.Tensor:
    """Mean of each group of ``x`` [N, rows, groups, group]: [N, rows, groups, 1] fp32.

    The Triton path takes these from torch too: a sum's rounding depends on its order.
    """
    return x.mean(dim=-1, keepdim=True)


def _top_offsets(score: torch.Tensor, k: int) -> torch.Tensor:
    """Offsets of the ``k`` largest scores along the last axis (256 long), largest first; equal scores
    are taken in offset order, so the choice is the same on every device (``topk`` leaves ties open).
    """
    if k == 1:
        return score.argmax(dim=-1, keepdim=True)  # the first maximum, by its documentation
    bits = score.view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()  # the floats' order, as integers
    offset = torch.arange(score.shape[-1], device=score.device)
    key = ordered * score.shape[-1] + (score.shape[-1] - 1 - offset)  # distinct: ties go by offset
    return key.topk(k, dim=-1).indices


def split_outliers(
    x: torch.Tensor, k: int, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Take the ``k`` most extreme entries per 256-element block out of ``x``.

    Args:
        x: [N, rows, groups, group] fp32, rows a multiple of ``256 // group``; not modified.
        k: outliers per block.
        valid: bool mask broadcastable to ``x`` (False on padding), or None when nothing is padded.

    Returns:
        (rest, offsets, values): ``rest`` is ``x`` with each outlier replaced by its group's mean;
        offsets [N, blocks, groups, k] uint8 and values [N, blocks, groups, k] fp32.
    """
    n, rows, groups, group = x.shape
    per = OUTLIER_BLOCK // group
    blocks = rows // per
    center = group_centers(x)
    score = (x - center).abs_()
    if valid is not None:
        score.masked_fill_(~valid, -1.0)
    score = score.view(n, blocks, per, groups, group).transpose(2, 3).reshape(n, blocks, groups, per * group)
    offsets = _top_offsets(score, k)
    flat = _flat_index(offsets, rows, groups, group)
    values = x.reshape(-1)[flat]
    rest = x.clone()
    centers = center.expand_as(x).reshape(-1)[flat]
    rest.view(-1)[flat.reshape(-1)] = centers.reshape(-1)
    return rest, offsets.to(torch.uint8), values


def merge_outliers(x: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Put the outlier ``values`` back into ``x`` [N, rows, groups, group] (in place; returns ``x``)."""
    _, rows, groups, group = x.shape
    flat = _flat_index(offsets.long(), rows, groups, group)
    x.view(-1)[flat.reshape(-1)] = values.reshape(-1).to(x.dtype)
    return x
