"""Retries carry idempotent calls across a store process killed and restarted mid-test."""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import pytest
from gearkv.client import ChunkRef, ExponentialJitterBackoff, Manifest, RetryPolicy, keys
from gearkv.client import errors as e
from test_client_store import NS, make_client

pytestmark = pytest.mark.integration

RETRIES: list[int] = []


class CountingBackoff(ExponentialJitterBackoff):
    """Records every retry, so the test knows the outage was really ridden out by retries."""

    def compute(self, failures: int, rng: random.Random | None = None) -> float:
        RETRIES.append(failures)
        return super().compute(failures, rng)


PATIENT = RetryPolicy(backoff=CountingBackoff(base=0.05, cap=0.5), attempts=40)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_calls_retry_through_a_store_restart(
    kind: str, redis_server: Any, store_process_factory: Any
) -> None:
    proc = store_process_factory(redis_server.url)
    kv = make_client(kind, proc.address, proc.tokens["alice"], retry=PATIENT, timeout=5.0)
    try:
        blob = os.urandom(3 * 1024 * 1024 + 5)
        put = await kv.put_chunk(NS, "", [1, 2, 3], blob, start=0, raw_bytes=1)

        proc.kill()  # SIGKILL: in-flight and new calls see UNAVAILABLE until it is back
        restarter = threading.Timer(0.3, proc.start)
        restarter.start()
        RETRIES.clear()
        try:
            assert await kv.get_chunk(put.key) == blob  # retried until the new process serves it
        finally:
            restarter.join()
        assert RETRIES, "the store was down, so the call must have been retried"

        proc.kill()
        restarter = threading.Timer(0.3, proc.start)
        restarter.start()
        RETRIES.clear()
        try:
            ref = ChunkRef(put.key, 0, 3, put.stored_bytes, 1)
            version = await kv.commit_turn(Manifest("restart-1", NS, [1, 2, 3], [ref], turns=1), 0)
        finally:
            restarter.join()
        assert version == 1 and RETRIES
        assert (await kv.get_session("restart-1")).chunks == (ref,)
    finally:
        await kv.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_without_retries_a_dead_store_fails_fast(
    kind: str, redis_server: Any, store_process_factory: Any
) -> None:
    proc = store_process_factory(redis_server.url)
    kv = make_client(kind, proc.address, proc.tokens["alice"], retry=RetryPolicy.none(), timeout=5.0)
    try:
        key = keys.chunk_key(NS, "", 0, [1])
        await kv.put_chunk(NS, "", [1], b"abc", start=0, raw_bytes=1)
        proc.kill()
        with pytest.raises(e.KVStoreUnavailable):
            await kv.get_chunk(key)
    finally:
        await kv.close()
