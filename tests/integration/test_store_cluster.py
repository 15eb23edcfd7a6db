"""The store on a real 3-master/3-replica Redis Cluster: round trips, slot layout, a master killed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
import redis
from gearkv.api.keys import Namespace, chain
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.store.redis_keys import chunk_redis_key, lease_redis_key, session_redis_key
from support.kv import code_of, commit, get_chunk, manifest, ns_proto, payload_for, put_chunk, stub_for
from support.redis_procs import RedisCluster, wait_until
from support.store import StoreHandle

pytestmark = pytest.mark.integration
NS = Namespace("fp-cluster", "gear4/v1", 8)


def test_round_trip_on_cluster(
    store_factory: Callable[..., StoreHandle], redis_cluster: RedisCluster
) -> None:
    handle = store_factory(redis_cluster.url, tenants={"alice": 0})  # one tenant: shown the backend
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    tokens = list(range(200))
    spans = chain(NS, tokens)
    with channel:
        for span in spans:
            put_chunk(stub, md, NS, span, tokens, payload_for(span, 3000 if span.start else 3 << 20))
        assert commit(stub, md, manifest("cl-1", NS, tokens, spans), 0, "c1") == 1
        found = stub.LookupPrefix(
            pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=[*tokens, 5], session_id="cl-1"),
            metadata=md,
        )
        assert found.matched_tokens == 200 and len(found.chunks) == len(spans)
        for span in spans[:3]:
            assert get_chunk(stub, md, span.key)[1] == payload_for(span, 3000 if span.start else 3 << 20)
        assert [s.session_id for s in stub.ListSessions(pb.ListSessionsRequest(), metadata=md).sessions] == [
            "cl-1"
        ]
        stats = stub.GetStats(pb.GetStatsRequest(), metadata=md)
        assert stats.backend == "redis-cluster" and stats.chunks == len(spans)
        assert stats.backend_used_memory_bytes > 3 << 20  # summed over the masters
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="cl-1"), metadata=md)
    # Chunks spread over the masters; a session's keys share one slot.
    cli = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        owners = {cli.get_node_from_key(chunk_redis_key("alice", s.key)).port for s in spans}
        assert len(owners) == 3
        slots = {cli.keyslot(k) for k in (session_redis_key("alice", "x"), lease_redis_key("alice", "x"))}
        assert len(slots) == 1
    finally:
        cli.close()


@pytest.mark.slow
def test_master_killed_during_pushes_loses_no_acknowledged_turn(
    store_factory: Callable[..., StoreHandle], redis_cluster_factory: Callable[..., RedisCluster]
) -> None:
    cluster = redis_cluster_factory(node_timeout_ms=1000)
    handle = store_factory(cluster.url, redis_retry_budget_s=8.0, redis_timeout_s=1.0)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    acked: dict[str, tuple[int, list[int]]] = {}  # session -> (version, token ids) of its last acked turn
    errors: list[grpc.StatusCode] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(w: int) -> None:
        turn = 0
        sid = f"w{w}"
        tokens: list[int] = []
        while not stop.is_set():
            new = [*tokens, *(w * 100_000 + turn * 20 + t for t in range(20))]
            spans = chain(NS, new)
            try:
                for span in spans:
                    put_chunk(stub, md, NS, span, new, payload_for(span, 20_000))
                version = commit(stub, md, manifest(sid, NS, new, spans, turns=turn + 1), turn, f"t{turn}")
            except grpc.RpcError as err:
                errors.append(err.code())
                continue  # retry the same turn (same commit id: idempotent)
            assert version == turn + 1
            with lock:
                acked[sid] = (version, new)
            tokens, turn = new, turn + 1

    with channel:
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(v for v, _ in acked.values()) >= 8, 20, "writes before the kill")
        victim = cluster.master_for_key(session_redis_key("alice", "w0"))
        killed_at = time.monotonic()
        victim.stop(kill=True)
        before = sum(v for v, _ in acked.values())
        wait_until(lambda: sum(v for v, _ in acked.values()) >= before + 8, 30, "writes after the failover")
        outage = time.monotonic() - killed_at
        stop.set()
        for t in threads:
            t.join(30)
        cluster.wait_all_ok()
        corrupt = lost = 0
        for sid, (version, tokens) in acked.items():
            got = stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md, timeout=10).manifest
            lost += got.version < version
            assert got.version != version or list(got.token_ids) == tokens
            for ref in got.chunks:
                try:
                    _, data = get_chunk(stub, md, ref.key)
                except grpc.RpcError as err:
                    corrupt += err.code() == grpc.StatusCode.DATA_LOSS
                    continue
                span = next(s for s in chain(NS, list(got.token_ids)) if s.key == ref.key)
                corrupt += data != payload_for(span, 20_000)
        print(f"failover: {len(acked)} sessions, outage {outage:.1f}s, errors {errors}, lost {lost}")
        assert corrupt == 0 and lost == 0
        assert all(code != grpc.StatusCode.UNKNOWN for code in errors)
        assert code_of(stub.GetStats, pb.GetStatsRequest(), metadata=md, timeout=10) == grpc.StatusCode.OK
