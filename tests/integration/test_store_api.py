"""The store over raw gRPC against a real redis-server: round trips, lookup, dedup, commits, sessions."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import xxhash
from gearkv.api.keys import Namespace, chain
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc
from gearkv.store.local import free_port, health_serving
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest
from support.fake_backend import FakeBackend
from support.kv import (
    code_of,
    commit,
    get_chunk,
    manifest,
    ns_proto,
    payload_for,
    push_session,
    put_chunk,
    random_payload,
    stub_for,
)
from support.redis_procs import RedisServer, wait_until
from support.store import StoreHandle, start_store_thread, store_config

pytestmark = pytest.mark.integration
NS = Namespace("smollm2-135m.cfg1234", "gear4/v1:g64", 16)


def test_multi_mib_chunks_round_trip_bit_exact(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = store.metadata()
    tokens = list(range(40))
    spans = chain(NS, tokens)
    sizes = [5 * 2**20 + 7, 2**20, 1]  # several parts with a ragged end, exactly one part, one byte
    payloads = [random_payload(n) for n in sizes]
    for span, payload in zip(spans, payloads, strict=True):
        reply = put_chunk(stub, md, NS, span, tokens, payload, raw_bytes=len(payload) * 3)
        assert (reply.key, reply.deduplicated, reply.stored_bytes) == (span.key, False, len(payload))
    for span, payload in zip(spans, payloads, strict=True):
        info, data = get_chunk(stub, md, span.key)
        assert data == payload
        assert info.total_bytes == len(payload) and info.raw_bytes == len(payload) * 3
        assert info.digest == xxhash.xxh3_128_digest(payload)
        assert (info.start, info.end, info.namespace) == (span.start, span.end, ns_proto(NS))


def test_prefix_lookup_and_dedup_across_sessions(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = store.metadata()
    system = list(range(1000, 1040))  # 2.5 chunks of shared prompt
    a = [*system, 1, 2, 3, 4, 5]
    spans_a = push_session(stub, md, NS, a)
    assert commit(stub, md, manifest("sess-a", NS, a, spans_a), 0, "a1") == 1

    # Another session with the same system prompt: its full chunks already exist (deduplicated).
    b = [*system, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    spans_b = chain(NS, b)
    replies = [put_chunk(stub, md, NS, s, b, payload_for(s, 1000)) for s in spans_b]
    assert [r.deduplicated for r in replies] == [True, True, False, False]

    # The content chain finds the shared full chunks without any session id.
    found = stub.LookupPrefix(pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=b), metadata=md)
    assert [c.key for c in found.chunks] == [s.key for s in spans_b[:3]]
    assert [(c.stored_bytes, c.raw_bytes) for c in found.chunks] == [(1000, 4000)] * 3
    assert found.matched_tokens == 48 and found.reason == "not_stored" and found.session_version == 0

    # The manifest adds the tail chunk; a prompt extending session a matches all of a.
    found = stub.LookupPrefix(
        pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=[*a, 77, 78], session_id="sess-a"),
        metadata=md,
    )
    assert [c.key for c in found.chunks] == [s.key for s in spans_a]
    assert found.matched_tokens == len(a) and found.session_version == 1

    # An edit inside the tail chunk: matched_tokens ends inside the last returned chunk.
    edited = [*a[:42], 55, 56]
    found = stub.LookupPrefix(
        pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=edited, session_id="sess-a"), metadata=md
    )
    assert found.matched_tokens == 42 and found.chunks[-1].end == 45

    # A different namespace never matches.
    other = Namespace("another-model", NS.codec_id, NS.chunk_size)
    found = stub.LookupPrefix(
        pb.LookupPrefixRequest(namespace=ns_proto(other), token_ids=a, session_id="sess-a"), metadata=md
    )
    assert found.matched_tokens == 0 and not found.chunks and found.reason == "namespace_mismatch"

    stats = stub.GetStats(pb.GetStatsRequest(), metadata=md)
    assert stats.chunks == 5 and stats.stored_bytes == 5000 and stats.raw_bytes == 20000
    assert stats.backend == "redis" and stats.tenant == "alice"
    assert stats.backend_used_memory_bytes == 0  # several tenants: none is shown the whole backend


def test_commit_cas_and_idempotent_retry(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = store.metadata()
    tokens = list(range(20))
    spans = push_session(stub, md, NS, tokens)
    m = manifest("s1", NS, tokens, spans)
    assert commit(stub, md, m, 0, "turn-1") == 1
    assert commit(stub, md, m, 0, "turn-1") == 1  # a retry of an applied commit: same version
    assert code_of(commit, stub, md, m, 0, "turn-1b") == grpc.StatusCode.ABORTED
    assert code_of(commit, stub, md, m, 5, "turn-x") == grpc.StatusCode.ABORTED
    longer = [*tokens, 20, 21, 22, 23, 24]
    spans2 = push_session(stub, md, NS, longer)
    assert commit(stub, md, manifest("s1", NS, longer, spans2, turns=2), 1, "turn-2") == 2
    assert commit(stub, md, m, 0, "turn-1") == 1  # an old commit id still replays its own version
    got = stub.GetSession(pb.GetSessionRequest(session_id="s1"), metadata=md).manifest
    assert (got.version, got.turns, list(got.token_ids)) == (2, 2, longer)
    assert got.created_ms <= got.updated_ms and got.stored_bytes == 1000 * len(spans2)


def test_commit_with_missing_chunk_changes_nothing(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = store.metadata()
    tokens = list(range(40))
    spans = chain(NS, tokens)
    put_chunk(stub, md, NS, spans[0], tokens, b"x" * 10)  # chunks 1 and 2 never written
    with pytest.raises(grpc.RpcError) as err:
        commit(stub, md, manifest("s-miss", NS, tokens, spans), 0, "c1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "manifest.chunks[1]" in err.value.details() and spans[1].key in err.value.details()
    assert code_of(stub.GetSession, pb.GetSessionRequest(session_id="s-miss"), metadata=md) == (
        grpc.StatusCode.NOT_FOUND
    )


def test_concurrent_commits_exactly_one_wins_per_version(
    store: StoreHandle, stub: pb_grpc.KVStoreStub
) -> None:
    md = store.metadata()
    tokens = list(range(16))
    spans = push_session(stub, md, NS, tokens)
    base = manifest("race", NS, tokens, spans)
    assert commit(stub, md, base, 0, "start") == 1
    writers = 12

    def attempt(i: int, version: int) -> grpc.StatusCode:
        m = pb.Manifest()
        m.CopyFrom(base)
        m.attributes["writer"] = str(i)
        return code_of(commit, stub, md, m, version, f"w{i}-v{version}")

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        for version in (1, 2, 3):
            codes = list(pool.map(lambda i, v=version: attempt(i, v), range(writers)))
            assert codes.count(grpc.StatusCode.OK) == 1, codes
            assert codes.count(grpc.StatusCode.ABORTED) == writers - 1, codes
    final = stub.GetSession(pb.GetSessionRequest(session_id="race"), metadata=md).manifest
    assert final.version == 4


def test_list_and_delete_sessions(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = store.metadata()
    tokens = list(range(16))
    spans = push_session(stub, md, NS, tokens)
    ids = [f"s{i:02d}" for i in range(7)]
    for sid in ids:
        commit(stub, md, manifest(sid, NS, tokens, spans), 0, "c")
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListSessions(pb.ListSessionsRequest(page_size=3, page_token=token), metadata=md)
        seen += [s.session_id for s in page.sessions]
        assert all(s.version == 1 and s.tokens == 16 and s.turns == 1 for s in page.sessions)
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    stub.DeleteSession(pb.DeleteSessionRequest(session_id="s03"), metadata=md)
    assert code_of(stub.DeleteSession, pb.DeleteSessionRequest(session_id="s03"), metadata=md) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(stub.GetSession, pb.GetSessionRequest(session_id="s03"), metadata=md)
        == grpc.StatusCode.NOT_FOUND
    )
    page = stub.ListSessions(pb.ListSessionsRequest(), metadata=md)
    assert [s.session_id for s in page.sessions] == [
        i for i in ids if i != "s03"
    ] and not page.next_page_token
    # A deleted session can be created again from version 0.
    assert commit(stub, md, manifest("s03", NS, tokens, spans), 0, "again") == 1


def test_missing_chunk_is_not_found(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    assert code_of(get_chunk, stub, store.metadata(), "ab" * 32) == grpc.StatusCode.NOT_FOUND


def test_health_reflection_and_metrics(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    with grpc.insecure_channel(store.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gearkv.api.v1.KVStore"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in replies[0].list_services_response.service}
        assert "gearkv.api.v1.KVStore" in names and "grpc.health.v1.Health" in names
    code_of(stub.GetSession, pb.GetSessionRequest(session_id="nope"), metadata=store.metadata())
    registry = store.server.metrics.registry
    labels = {"method": "GetSession", "code": "NOT_FOUND"}
    # Recorded just after the status is sent: poll briefly.
    wait_until(lambda: registry.get_sample_value("gearkv_store_requests_total", labels) == 1.0, 5, "metric")
    assert b"nope" not in generate_latest(registry)  # never a session id in a label


def test_redis_server_fixture_is_private(redis_server: RedisServer) -> None:
    with redis_server.client() as cli:
        assert cli.dbsize() == 0


def test_cli_store_runs_with_just_url_and_port(redis_server: RedisServer, tmp_path: Path) -> None:
    """`gearkv store --redis-url URL --port PORT` serves (loopback, no tokens: tenant "default")."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARKV_")}
    env["GEARKV_METRICS_PORT"] = str(metrics_port)
    log = (tmp_path / "store.log").open("wb")
    cmd = [sys.executable, "-m", "gearkv.cli", "store", "--redis-url", redis_server.url, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        address = f"127.0.0.1:{port}"
        wait_until(lambda: health_serving(address), 30, "store health", interval=0.05)
        channel, stub = stub_for(address)
        with channel:
            assert stub.GetStats(pb.GetStatsRequest(), timeout=5).tenant == "default"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            assert b'gearkv_store_requests_total{code="OK",method="GetStats"} 1.0' in reply.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
        log.close()
    text = (tmp_path / "store.log").read_text()
    assert "WITHOUT authentication" in text and "Traceback" not in text


class _ExplodingBackend(FakeBackend):
    async def get_chunk(self, tenant: str, key: str, ttl_ms: int) -> bytes | None:
        raise RuntimeError("canary-internal-detail /etc/secret")


def test_unexpected_errors_are_internal_without_details(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, tokens = store_config(redis_server.url)
    handle = start_store_thread(cfg, tokens, backend=_ExplodingBackend())
    try:
        channel, stub = stub_for(handle.address)
        with channel, pytest.raises(grpc.RpcError) as err:
            get_chunk(stub, handle.metadata(), "ab" * 32)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == "internal error"
        assert "canary" not in caplog.text and "RuntimeError" in caplog.text
    finally:
        handle.stop()


def test_uploads_survive_a_flushed_script_cache(
    store: StoreHandle, stub: pb_grpc.KVStoreStub, redis_server: RedisServer
) -> None:
    """The unlimited-quota upload pipelines EVALSHA with SET; NOSCRIPT must still charge the ledger."""
    md = store.metadata()  # alice: no quota
    tokens = list(range(5000, 5048))
    spans = list(chain(NS, tokens))
    payloads = [random_payload(70_000), random_payload(1)]
    put_chunk(stub, md, NS, spans[0], tokens, payloads[0])
    redis_server.client().script_flush()
    reply = put_chunk(stub, md, NS, spans[1], tokens, payloads[1])
    assert not reply.deduplicated
    assert put_chunk(stub, md, NS, spans[1], tokens, payloads[1]).deduplicated
    stats = stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
    assert (stats.chunks, stats.stored_bytes) == (2, sum(len(p) for p in payloads))
    assert [get_chunk(stub, md, s.key)[1] for s in spans[:2]] == payloads
