"""Backoff between retries: pure math shared by the SDK's retry loops and the store's Redis retries.

A strategy answers one question, how long to sleep after ``failures`` consecutive failures; the loops
that sleep stay with their callers (redis-py's split: ``redis/backoff.py`` beside ``retry.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ExponentialJitterBackoff"]


@dataclass(frozen=True)
class ExponentialJitterBackoff:
    """Full jitter: sleep uniformly in ``[0, min(cap, base * 2**(failures-1))]`` seconds.

    Jitter keeps many clients that failed together (a store restart) from retrying in lockstep.
    """

    base: float = 0.01
    cap: float = 0.5

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ValueError("backoff needs base > 0 and cap >= base (seconds)")

    def ceiling(self, failures: int) -> float:
        """Upper bound of the sleep after ``failures`` consecutive failures (>= 1)."""
        if failures < 1:
            return 0.0
        # Cap the exponent so huge failure counts cannot overflow a float.
        return min(self.cap, self.base * 2.0 ** min(failures - 1, 62))

    def compute(self, failures: int, rng: random.Random | None = None) -> float:
        return (rng or _RNG).uniform(0.0, self.ceiling(failures))


_RNG = random.Random()
