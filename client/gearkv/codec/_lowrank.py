"""Low-rank residual: ``lowrank_residual``/``apply_lowrank`` per KV head by subspace (power) iteration."""

from __future__ import annotations

import torch

__all__ = ["apply_lowrank", "lowrank_residual"]


def lowrank_residual(residual: torch.Tensor, rank: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors ``(a, b)`` with ``a @ b.mT ≈ residual``, one pair per leading index.

    Args:
        residual: [N, rows, cols] fp32 (one matrix per layer and KV head).
        rank: at most ``min(rows, cols)``.
        iters: subspace-iteration rounds (3 land within a few % of the truncated SVD on real KV).

    Returns:
        a [N, rows, rank] and b [N, cols, rank] (b has orthonormal columns), fp32.
    """
    n, _, cols = residual.shape
    gen = torch.Generator().manual_seed(0)  # fixed start: the same input always gives the same factors
    b = torch.randn(cols, rank, generator=gen).to(residual.device).expand(n, cols, rank)
    for _ in range(iters):
        p = torch.linalg.qr(residual @ b).Q
        b = torch.linalg.qr(residual.mT @ p).Q
    return residual @ b, b


def apply_lowrank(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x + a @ b.mT`` for x [N, rows, cols], a [N, rows, r], b [N, cols, r]."""
    return torch.baddbmm(x, a.float(), b.float().mT)
