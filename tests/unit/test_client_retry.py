"""Backoff math and the two retry loops (no network, no real sleeping)."""

from __future__ import annotations

import random

import pytest
from gearkv.client import ExponentialJitterBackoff, RetryPolicy
from gearkv.client._retry import acall_with_retry, call_with_retry
from gearkv.client.errors import InvalidArgument, KVStoreOverloaded, KVStoreTimeout, KVStoreUnavailable
from hypothesis import given
from hypothesis import strategies as st


def test_ceiling_doubles_then_caps() -> None:
    b = ExponentialJitterBackoff(base=0.01, cap=0.1)
    assert [b.ceiling(n) for n in range(6)] == pytest.approx([0.0, 0.01, 0.02, 0.04, 0.08, 0.1])
    assert b.ceiling(10_000) == 0.1  # no overflow for absurd failure counts


@given(st.integers(min_value=0, max_value=500), st.integers(min_value=0, max_value=2**32))
def test_compute_stays_within_ceiling(failures: int, seed: int) -> None:
    b = ExponentialJitterBackoff(base=0.005, cap=0.3)
    delay = b.compute(failures, random.Random(seed))
    assert 0.0 <= delay <= b.ceiling(failures) <= 0.3


def test_compute_is_jittered() -> None:
    b = ExponentialJitterBackoff(base=0.1, cap=1.0)
    rng = random.Random(7)
    assert len({b.compute(3, rng) for _ in range(20)}) == 20


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (0.5, 0.1)])
def test_backoff_rejects_bad_parameters(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        ExponentialJitterBackoff(base=base, cap=cap)


@pytest.mark.parametrize("attempts", [0, -1, 101])
def test_policy_rejects_bad_attempts(attempts: int) -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=attempts)


class Flaky:
    """Fails with the given errors in turn, then returns the attempt number."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.seen: list[int] = []

    def __call__(self, attempt: int) -> int:
        self.seen.append(attempt)
        if self.errors:
            raise self.errors.pop(0)
        return attempt


def test_sync_retries_retryable_errors_with_backoff() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(backoff=ExponentialJitterBackoff(0.01, 0.02), attempts=3)
    fn = Flaky(KVStoreUnavailable("down"), KVStoreTimeout("slow"))
    assert call_with_retry(policy, fn, sleep=sleeps.append) == 2
    assert fn.seen == [0, 1, 2]
    assert len(sleeps) == 2 and all(0 <= s <= 0.02 for s in sleeps)


def test_sync_gives_up_after_attempts() -> None:
    sleeps: list[float] = []
    fn = Flaky(*(KVStoreOverloaded("busy") for _ in range(5)))
    with pytest.raises(KVStoreOverloaded):
        call_with_retry(RetryPolicy(attempts=3), fn, sleep=sleeps.append)
    assert fn.seen == [0, 1, 2] and len(sleeps) == 2


def test_sync_never_retries_other_errors() -> None:
    fn = Flaky(InvalidArgument("bad"))
    with pytest.raises(InvalidArgument):
        call_with_retry(RetryPolicy(attempts=5), fn, sleep=lambda _: None)
    assert fn.seen == [0]


def test_policy_none_tries_once() -> None:
    fn = Flaky(KVStoreUnavailable("down"))
    with pytest.raises(KVStoreUnavailable):
        call_with_retry(RetryPolicy.none(), fn, sleep=lambda _: None)
    assert fn.seen == [0]


async def test_async_loop_matches_sync_loop() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    flaky = Flaky(KVStoreUnavailable("down"), KVStoreUnavailable("down"))

    async def fn(attempt: int) -> int:
        return flaky(attempt)

    assert await acall_with_retry(RetryPolicy(attempts=3), fn, sleep=sleep) == 2
    assert flaky.seen == [0, 1, 2] and len(sleeps) == 2

    flaky2 = Flaky(InvalidArgument("bad"))

    async def fn2(attempt: int) -> int:
        return flaky2(attempt)

    with pytest.raises(InvalidArgument):
        await acall_with_retry(RetryPolicy(attempts=3), fn2, sleep=sleep)
    assert flaky2.seen == [0]


def test_a_deadline_stops_retrying_before_it_passes() -> None:
    import time

    policy = RetryPolicy(backoff=ExponentialJitterBackoff(base=10.0, cap=10.0), attempts=5)
    fn = Flaky(KVStoreUnavailable("down"), KVStoreUnavailable("down"))
    slept: list[float] = []
    with pytest.raises(KVStoreUnavailable):  # the deadline has passed: no backoff, no retry
        call_with_retry(policy, fn, sleep=slept.append, deadline=time.monotonic())
    assert fn.seen == [0] and slept == []
    fn = Flaky(KVStoreUnavailable("down"))
    assert call_with_retry(policy, fn, sleep=slept.append, deadline=time.monotonic() + 60.0) == 1


@pytest.mark.parametrize("call", ["stats", "put_chunk", "get_chunk"])
def test_timeout_bounds_the_whole_call_with_retries(call: str) -> None:
    import time

    from gearkv.client import KVStoreClient, Namespace
    from gearkv.store.local import free_port

    ns = Namespace("m:1", "raw/v1", 4)
    calls = {
        "stats": lambda c: c.stats(),
        "put_chunk": lambda c: c.put_chunk(ns, "", [1, 2, 3, 4], b"x" * 64, start=0, raw_bytes=64),
        "get_chunk": lambda c: c.get_chunk("a" * 64),
    }
    with KVStoreClient(f"127.0.0.1:{free_port()}", timeout=0.6, retry=RetryPolicy(attempts=50)) as client:
        t0 = time.monotonic()
        with pytest.raises((KVStoreUnavailable, KVStoreTimeout)):
            calls[call](client)
        assert time.monotonic() - t0 < 1.5  # 50 attempts, yet the call ends near its 0.6 s timeout
