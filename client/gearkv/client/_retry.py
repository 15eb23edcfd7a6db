"""Retries: a pure backoff strategy, a frozen policy and two tiny loops (sync and async).

gRPC's built-in retry stops once a request exceeds 256 KiB, so the SDK retries chunk streams itself.
Only idempotent calls go through these loops (every store RPC is, given a ``commit_id`` for commits).

Example::

    policy = RetryPolicy(backoff=ExponentialJitterBackoff(base=0.05, cap=1.0), attempts=5)
    client = KVStoreClient("127.0.0.1:50051", token="t0k3n", retry=policy)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gearkv.api.backoff import ExponentialJitterBackoff
from gearkv.client.errors import KVStoreTimeout, KVStoreUnavailable

__all__ = ["ExponentialJitterBackoff", "RetryPolicy", "acall_with_retry", "call_with_retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and on what to retry an idempotent call; ``attempts`` counts the first try."""

    backoff: ExponentialJitterBackoff = field(default_factory=ExponentialJitterBackoff)
    attempts: int = 3
    retry_on: tuple[type[BaseException], ...] = (KVStoreUnavailable, KVStoreTimeout)

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 100:
            raise ValueError("retry attempts must be in 1..100")

    @classmethod
    def none(cls) -> RetryPolicy:
        """Fail on the first error (tests, or callers with their own retry)."""
        return cls(attempts=1)


def call_with_retry(
    policy: RetryPolicy,
    fn: Callable[[int], T],
    *,
    sleep: Callable[[float], object] = time.sleep,
    deadline: float | None = None,
) -> T:
    """Run ``fn(attempt)`` (attempt counts from 0) until it returns or a non-retryable error.

    ``deadline`` (``time.monotonic()``) bounds the whole loop: no retry starts, and no backoff sleeps,
    past it; the last error is raised instead.
    """
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except policy.retry_on:
            attempt += 1
            delay = policy.backoff.compute(attempt)
            if attempt >= policy.attempts or _past(deadline, delay):
                raise
        sleep(delay)


def _past(deadline: float | None, delay: float) -> bool:
    return deadline is not None and time.monotonic() + delay >= deadline


async def acall_with_retry(
    policy: RetryPolicy,
    fn: Callable[[int], Awaitable[T]],
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    deadline: float | None = None,
) -> T:
    """The async twin of :func:`call_with_retry`."""
    attempt = 0
    while True:
        try:
            return await fn(attempt)
        except policy.retry_on:
            attempt += 1
            delay = policy.backoff.compute(attempt)
            if attempt >= policy.attempts or _past(deadline, delay):
                raise
        await sleep(delay)
