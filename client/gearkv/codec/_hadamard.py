"""Orthonormal block Walsh-Hadamard rotation along head_dim (costs no bytes, evens out channels)."""

from __future__ import annotations

import functools

import torch

__all__ = ["hadamard", "hadamard_block"]


def hadamard_block(dim: int) -> int:
    """Largest power of two dividing ``dim``, capped at 256: the size of each Hadamard block."""
    block = dim & -dim
    return min(block, 256)


@functools.lru_cache(maxsize=32)
def _hadamard_cpu(dim: int) -> torch.Tensor:
    block = hadamard_block(dim)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / h.shape[0] ** 0.5
    out: torch.Tensor = torch.block_diag(*([h] * (dim // block)))  # type: ignore[no-untyped-call]
    return out.to(torch.float32)


def hadamard(dim: int, device: torch.device) -> torch.Tensor:
    """The [dim, dim] symmetric orthonormal block-diagonal Hadamard matrix (its own inverse)."""
    return _hadamard_cpu(dim).to(device)
