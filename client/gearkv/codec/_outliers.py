"""Sparse outliers: ``split_outliers``/``merge_outliers`` on a ``[N, rows, groups, group]`` tensor.

Blocks of 256 elements (``256 // group`` consecutive rows of one group column) each give up their ``k``
elements farthest from their group's mean. Each is stored as its exact value plus a one-byte offset
inside its block, so an outlier costs 3 bytes at 16 bits.
"""

from __future__ import annotations

import torch

from ._config import OUTLIER_BLOCK

__all__ = ["merge_outliers", "split_outliers"]


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
    center = x.mean(dim=-1, keepdim=True)
    score = (x - center).abs_()
    if valid is not None:
        score.masked_fill_(~valid, -1.0)
    score = score.view(n, blocks, per, groups, group).transpose(2, 3).reshape(n, blocks, groups, per * group)
    offsets = score.topk(k, dim=-1).indices if k > 1 else score.argmax(dim=-1, keepdim=True)
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
