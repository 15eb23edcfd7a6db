"""The store's gauges of what is held now, read from a real Redis: bytes raw vs stored per tenant,
sessions, chunks, deduplication savings, Redis memory, expirations and quota rejections."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gearkv.api.keys import Namespace
from gearkv.store.local import LocalRedis
from support.kv import commit, manifest, push_session, stub_for
from support.redis_procs import RedisServer, wait_until
from support.store import StoreHandle

pytestmark = pytest.mark.integration
NS = Namespace("fp-observability", "gear4/v1", 8)


def _refresh(store: StoreHandle) -> Any:
    store.runner.call(lambda server: server.refresh_metrics())
    return store.server.metrics.registry.get_sample_value


def test_live_gauges_follow_what_redis_holds(store: StoreHandle, stub: Any) -> None:
    md = store.metadata("alice")
    tokens = list(range(40))  # 5 full chunks of 8 tokens
    spans = push_session(stub, md, NS, tokens, size=1000)
    for sid in ("one", "two"):  # two sessions on the same chunks: stored once
        commit(stub, md, manifest(sid, NS, tokens, spans), 0, f"c-{sid}")
    get = _refresh(store)
    alice, bob = {"tenant": "alice"}, {"tenant": "bob"}
    assert get("gearkv_store_live_chunks", alice) == len(spans)
    assert get("gearkv_store_live_stored_bytes", alice) == 1000 * len(spans)
    assert get("gearkv_store_live_raw_bytes", alice) == 4000 * len(spans)  # put_requests: raw = 4 x
    assert get("gearkv_store_live_sessions", alice) == 2
    assert get("gearkv_store_live_manifest_bytes", alice) > 0
    assert get("gearkv_store_dedup_saved_bytes", alice) == 1000 * len(spans)  # the second session's
    assert get("gearkv_store_live_chunks", bob) == 0 and get("gearkv_store_live_raw_bytes", bob) == 0
    assert get("gearkv_store_redis_up") == 1 and get("gearkv_store_redis_ping_seconds_count") >= 1
    assert get("gearkv_store_redis_used_memory_bytes") > 0
    assert get("gearkv_store_redis_maxmemory_bytes") == 0
    ratio = get("gearkv_store_redis_chunk_memory_ratio")
    assert 1.0 <= ratio < 2.0  # MEMORY USAGE of a 1 kB value: its bytes plus tens of bytes
    assert get("gearkv_store_requests_in_flight") == 0
    assert get("gearkv_store_live_refresh_timestamp_seconds") > 0


def test_expirations_are_counted_and_release_the_live_bytes(store: StoreHandle, stub: Any) -> None:
    md = store.metadata("alice")
    tokens = list(range(16))
    spans = push_session(stub, md, NS, tokens, size=500)
    commit(stub, md, manifest("short", NS, tokens, spans), 0, "c", ttl_s=1)  # chunks outlive it
    orphans = push_session(stub, md, NS, [7] * 24, size=300, ttl_s=1)  # never committed
    get = _refresh(store)
    assert get("gearkv_store_live_chunks", {"tenant": "alice"}) == len(spans) + len(orphans)

    def released() -> bool:
        get = _refresh(store)
        return bool(get("gearkv_store_live_sessions", {"tenant": "alice"}) == 0) and bool(
            get("gearkv_store_live_chunks", {"tenant": "alice"}) == len(spans)
        )

    wait_until(released, 15, "expired chunks and session released")
    get = store.server.metrics.registry.get_sample_value
    assert get("gearkv_store_expired_total", {"kind": "chunk"}) == len(orphans)
    assert get("gearkv_store_expired_total", {"kind": "session"}) == 1
    assert get("gearkv_store_live_stored_bytes", {"tenant": "alice"}) == 500 * len(spans)
    assert get("gearkv_store_live_manifest_bytes", {"tenant": "alice"}) == 0


def test_quota_rejections_are_counted_per_tenant(store_factory: Any, redis_server: RedisServer) -> None:
    store = store_factory(redis_server.url, tenants={"small": 1500, "big": 0})
    channel, stub = stub_for(store.address)
    try:
        md = store.metadata("small")
        with pytest.raises(grpc.RpcError) as err:
            push_session(stub, md, NS, list(range(24)), size=1000)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()
    get = store.server.metrics.registry.get_sample_value
    assert get("gearkv_store_quota_rejections_total", {"tenant": "small"}) == 1
    assert get("gearkv_store_quota_rejections_total", {"tenant": "big"}) == 0


def test_redis_down_reads_zero_up_and_keeps_the_last_gauges(store_factory: Any) -> None:
    redis = LocalRedis().start()
    try:
        store = store_factory(redis.url)
        get = _refresh(store)
        assert get("gearkv_store_redis_up") == 1
        redis.stop(kill=True)
        wait_until(lambda: get("gearkv_store_redis_up") == 0, 10, "redis_up 0")
        _refresh(store)  # skipped while Redis is down: no errors, no stale overwrite
    finally:
        redis.close()


def test_live_gauges_on_a_redis_cluster(store_factory: Any, redis_cluster: Any) -> None:
    store = store_factory(redis_cluster.url, tenants={"cluster-obs": 0})
    channel, stub = stub_for(store.address)
    try:
        spans = push_session(stub, store.metadata("cluster-obs"), NS, list(range(100, 140)), size=800)
    finally:
        channel.close()
    get = _refresh(store)
    assert get("gearkv_store_live_chunks", {"tenant": "cluster-obs"}) == len(spans)
    assert get("gearkv_store_redis_used_memory_bytes") > 3 * 1_000_000  # three primaries
    assert 1.0 <= get("gearkv_store_redis_chunk_memory_ratio") < 2.0
