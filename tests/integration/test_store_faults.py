"""Faults against real processes: TTL expiry, eviction, quotas, corruption, Redis down, store crashes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from gearkv.api.keys import Namespace, chain
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc
from gearkv.store.local import health_serving
from gearkv.store.redis_keys import chunk_redis_key, session_redis_key, tenant_redis_key
from support.kv import (
    code_of,
    commit,
    get_chunk,
    manifest,
    ns_proto,
    payload_for,
    push_session,
    put_chunk,
    put_requests,
    random_payload,
    stub_for,
)
from support.redis_procs import RedisServer, wait_until
from support.store import StoreHandle, StoreProcess, start_store_thread, store_config

pytestmark = pytest.mark.integration
NS = Namespace("fp-faults", "gear4/v1", 8)
OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _lookup(
    stub: pb_grpc.KVStoreStub, md: object, tokens: list[int], sid: str = ""
) -> pb.LookupPrefixResponse:
    req = pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=tokens, session_id=sid)
    reply: pb.LookupPrefixResponse = stub.LookupPrefix(req, metadata=md, timeout=10)
    return reply


def test_ttl_expiry_and_refresh_on_use(
    store: StoreHandle, stub: pb_grpc.KVStoreStub, redis_server: RedisServer
) -> None:
    md = store.metadata()
    tokens = list(range(20))
    spans = push_session(stub, md, NS, tokens, ttl_s=1)
    commit(stub, md, manifest("short", NS, tokens, spans), 0, "c", ttl_s=1)  # refreshes its chunks
    orphan_tokens = [7] * 8
    orphan = chain(NS, orphan_tokens)[0]
    put_chunk(stub, md, NS, orphan, orphan_tokens, b"orphan", ttl_s=1)
    used_tokens = [8] * 8
    used = chain(NS, used_tokens)[0]
    put_chunk(stub, md, NS, used, used_tokens, b"used", ttl_s=1)
    assert _lookup(stub, md, used_tokens).matched_tokens == 8  # a lookup refreshes the TTL to the default
    with redis_server.client() as cli:
        assert cli.pttl(chunk_redis_key("alice", used.key)) > 3_600_000
        assert cli.pttl(chunk_redis_key("alice", spans[0].key)) > 3_600_000
        wait_until(lambda: not cli.exists(session_redis_key("alice", "short")), 5, "session expiry")
        wait_until(lambda: not cli.exists(chunk_redis_key("alice", orphan.key)), 5, "chunk expiry")
    assert code_of(stub.GetSession, pb.GetSessionRequest(session_id="short"), metadata=md) == NOT_FOUND
    assert code_of(get_chunk, stub, md, orphan.key) == NOT_FOUND
    assert _lookup(stub, md, orphan_tokens).matched_tokens == 0
    found = _lookup(stub, md, tokens, "short")  # the session is gone; its shared full chunks remain
    assert found.session_version == 0 and found.matched_tokens == 16
    assert get_chunk(stub, md, used.key)[1] == b"used"


def test_chunk_evicted_behind_a_manifest_is_a_miss(
    store: StoreHandle, stub: pb_grpc.KVStoreStub, redis_server: RedisServer
) -> None:
    md = store.metadata()
    tokens = list(range(30))
    spans = push_session(stub, md, NS, tokens)
    commit(stub, md, manifest("ev", NS, tokens, spans), 0, "c")
    with redis_server.client() as cli:
        cli.delete(chunk_redis_key("alice", spans[2].key))  # what an LRU eviction does
    found = _lookup(stub, md, [*tokens, 99], "ev")
    assert [c.key for c in found.chunks] == [s.key for s in spans[:2]]
    assert found.matched_tokens == 16 and found.reason == "chunk_missing" and found.session_version == 1
    assert code_of(get_chunk, stub, md, spans[2].key) == NOT_FOUND


def test_allkeys_lru_eviction_never_serves_a_wrong_chunk(
    store_factory: Callable[..., StoreHandle], redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory(["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"])
    handle = store_factory(redis.url)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    with channel:
        sessions = {}
        for i in range(24):  # ~24 x 4 x 60 KB = 5.8 MB through a 3 MB Redis
            tokens = [i * 1000 + t for t in range(30)]
            spans = chain(NS, tokens)
            for span in spans:
                put_chunk(stub, md, NS, span, tokens, payload_for(span, 60_000))
            code = code_of(commit, stub, md, manifest(f"lru{i}", NS, tokens, spans), 0, "c")
            # A chunk can be evicted before its commit: the commit is refused, never half-applied.
            assert code in (OK, grpc.StatusCode.FAILED_PRECONDITION)
            if code == OK:
                sessions[f"lru{i}"] = (tokens, spans)
        misses = served = 0
        for sid, (tokens, spans) in sessions.items():
            if code_of(stub.GetSession, pb.GetSessionRequest(session_id=sid), metadata=md) != OK:
                continue
            found = _lookup(stub, md, tokens, sid)
            for ref in found.chunks:
                span = next(s for s in spans if s.key == ref.key)
                try:
                    _, data = get_chunk(stub, md, ref.key)
                except grpc.RpcError as err:
                    assert err.code() == NOT_FOUND  # evicted between lookup and read: a miss, never junk
                    misses += 1
                    continue
                assert data == payload_for(span, 60_000)
                served += 1
            misses += found.reason == "chunk_missing"
        assert served > 0 and misses > 0  # eviction happened and survivors were served bit-exact


def test_allkeys_lru_eviction_never_breaks_a_sessions_version(
    store_factory: Callable[..., StoreHandle], redis_factory: Callable[..., RedisServer]
) -> None:
    """Eviction takes a session whole or not at all: a session read at version v commits at v, and
    one reported missing is never at a version (with the version in its own key, 29 of 400 sessions
    lost it while the manifest stayed: ABORTED forever at v, and version 1 handed out twice at 0)."""
    redis = redis_factory(["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"])
    handle = store_factory(redis.url)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    with channel:
        tokens = list(range(6))
        spans = push_session(stub, md, NS, tokens, size=10)
        for i in range(400):
            m = manifest(f"v{i}", NS, tokens, spans)
            m.messages.append(pb.ChatMessage(role="assistant", content="x" * 6000))
            code_of(commit, stub, md, m, 0, "c0")  # some are refused: their chunks were evicted
        with redis.client() as cli:
            cli.config_set("maxmemory", 0)  # no more eviction while the survivors are checked
        spans = push_session(stub, md, NS, tokens, size=10)
        present = missing = 0
        for i in range(400):
            sid = f"v{i}"
            try:
                version = stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md).manifest.version
            except grpc.RpcError as err:
                assert err.code() == NOT_FOUND
                missing += 1
                assert code_of(commit, stub, md, manifest(sid, NS, tokens, spans), 1, "c1") == (
                    grpc.StatusCode.ABORTED
                )
                assert commit(stub, md, manifest(sid, NS, tokens, spans), 0, "c1") == 1
                continue
            present += 1
            assert commit(stub, md, manifest(sid, NS, tokens, spans), version, "c1") == version + 1
            assert code_of(commit, stub, md, manifest(sid, NS, tokens, spans), 0, "c2") == (
                grpc.StatusCode.ABORTED
            )
        assert present > 0 and missing > 0  # eviction happened, and some sessions survived it


def test_noeviction_rejects_writes_loudly_reads_still_work(
    store_factory: Callable[..., StoreHandle], redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory(["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"])
    handle = store_factory(redis.url)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    with channel:
        first = chain(NS, list(range(8)))[0]
        put_chunk(stub, md, NS, first, list(range(8)), b"first")
        codes = []
        for i in range(40):
            tokens = [i + 100] * 8
            span = chain(NS, tokens)[0]
            codes.append(code_of(put_chunk, stub, md, NS, span, tokens, random_payload(100_000)))
            if codes[-1] != OK:
                break
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert get_chunk(stub, md, first.key)[1] == b"first"


def test_quota_rejects_writes_and_frees_on_expiry(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    handle = store_factory(redis_server.url, tenants={"alice": 5000, "bob": 0})
    alice, bob = handle.metadata("alice"), handle.metadata("bob")
    channel, stub = stub_for(handle.address)
    with channel:
        tokens = list(range(48))
        spans = chain(NS, tokens)
        for span in spans[:4]:
            put_chunk(stub, alice, NS, span, tokens, payload_for(span, 1000), ttl_s=1)
        put_chunk(stub, alice, NS, spans[4], tokens, payload_for(spans[4], 1000))  # 5000 of 5000
        with pytest.raises(grpc.RpcError) as err:
            put_chunk(stub, alice, NS, spans[5], tokens, payload_for(spans[5], 1000))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in err.value.details()
        assert code_of(get_chunk, stub, alice, spans[5].key) == NOT_FOUND  # nothing was written
        assert put_chunk(stub, alice, NS, spans[0], tokens, payload_for(spans[0], 1000)).deduplicated
        put_chunk(stub, bob, NS, spans[5], tokens, payload_for(spans[5], 1000))  # bob has no quota
        stats = stub.GetStats(pb.GetStatsRequest(), metadata=alice)
        assert (stats.quota_bytes, stats.stored_bytes, stats.chunks) == (5000, 5000, 5)

        def freed() -> bool:  # chunks 1-3 expire (chunk 0 was refreshed by the dedup above)
            return code_of(put_chunk, stub, alice, NS, spans[5], tokens, payload_for(spans[5], 1000)) == OK

        wait_until(freed, 10, "quota freed by expired chunks", interval=0.2)
        assert stub.GetStats(pb.GetStatsRequest(), metadata=alice).stored_bytes == 3000


def test_bookkeeping_expires_with_the_data(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    """With 1 s TTLs, 2,000 accounting entries and 200 session-index entries used to stay forever
    unless GetStats or ListSessions ran (and GetStats then counted 200 live sessions)."""
    handle = store_factory(
        redis_server.url,
        tenants={"alice": 10 << 20},
        sweep_interval_s=0.5,
        default_chunk_ttl_s=1,
        default_session_ttl_s=1,
    )
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    with channel:
        for i in range(40):
            tokens = [i * 100 + t for t in range(16)]
            spans = push_session(stub, md, NS, tokens, size=100)
            commit(stub, md, manifest(f"short{i}", NS, tokens, spans), 0, "c")
        with redis_server.client() as cli:
            keys = [tenant_redis_key("alice", w) for w in ("ledger", "sizes", "sessions")]
            assert [cli.exists(k) for k in keys] == [1, 1, 1]

            def swept() -> bool:
                return not any(cli.exists(k) for k in keys)

            wait_until(swept, 15, "the sweeper releasing expired bookkeeping", interval=0.2)
            usage = cli.hgetall(tenant_redis_key("alice", "usage"))
            assert {k: int(v) for k, v in usage.items() if int(v)} == {}
        stats = stub.GetStats(pb.GetStatsRequest(), metadata=md)
        assert (stats.sessions, stats.chunks, stats.stored_bytes, stats.manifest_bytes) == (0, 0, 0, 0)


def test_manifests_count_toward_the_quota(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    """A tenant with a 100 kB quota grew Redis by 92 MB through manifests (4 MiB of messages, 60
    attributes of 64 KiB) while its usage read 100 bytes: manifest bytes now count, and are bounded."""
    handle = store_factory(redis_server.url, tenants={"alice": 100_000, "bob": 0})
    alice = handle.metadata("alice")
    channel, stub = stub_for(handle.address)
    with channel:
        tokens = list(range(8))
        spans = push_session(stub, alice, NS, tokens, size=100)
        base = stub.GetStats(pb.GetStatsRequest(), metadata=alice)
        assert (base.stored_bytes, base.manifest_bytes) == (100, 0)
        big = manifest("big", NS, tokens, spans)
        big.messages.append(pb.ChatMessage(role="user", content="x" * 4 * 1024 * 1024))
        assert code_of(commit, stub, alice, big, 0, "c") == grpc.StatusCode.INVALID_ARGUMENT  # bounded
        many = manifest("many", NS, tokens, spans)
        for i in range(60):
            many.attributes[f"a{i}"] = "y" * 65536
        assert code_of(commit, stub, alice, many, 0, "c") == grpc.StatusCode.INVALID_ARGUMENT
        fits = manifest("s0", NS, tokens, spans)
        fits.messages.append(pb.ChatMessage(role="user", content="z" * 40_000))
        assert commit(stub, alice, fits, 0, "c") == 1
        assert commit(stub, alice, fits, 1, "c2") == 2  # a new version replaces its charge, not adds
        used = stub.GetStats(pb.GetStatsRequest(), metadata=alice)
        assert 40_000 < used.manifest_bytes < 41_000 and used.stored_bytes == 100
        fits.session_id = "s1"
        assert commit(stub, alice, fits, 0, "c") == 1
        fits.session_id = "s2"
        with pytest.raises(grpc.RpcError) as err:
            commit(stub, alice, fits, 0, "c")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "manifest" in err.value.details()
        assert code_of(stub.GetSession, pb.GetSessionRequest(session_id="s2"), metadata=alice) == NOT_FOUND
        push_session(stub, handle.metadata("bob"), NS, tokens, size=100)
        assert commit(stub, handle.metadata("bob"), fits, 0, "c") == 1  # bob has no quota
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="s0"), metadata=alice)
        after = stub.GetStats(pb.GetStatsRequest(), metadata=alice)
        assert after.manifest_bytes == used.manifest_bytes  # s1 alone now
        assert commit(stub, alice, fits, 0, "c") == 1  # room again
        with redis_server.client() as cli:
            assert cli.info("memory")["used_memory"] < 20 * 1024 * 1024


def test_a_commit_id_reused_for_other_content_is_refused(
    store: StoreHandle, stub: pb_grpc.KVStoreStub
) -> None:
    md = store.metadata()
    tokens = list(range(8))
    spans = push_session(stub, md, NS, tokens)
    first = manifest("reuse", NS, tokens, spans)
    assert commit(stub, md, first, 0, "once") == 1
    assert commit(stub, md, first, 0, "once") == 1  # a retry replays
    other = manifest("reuse", NS, tokens, spans, turns=2)
    with pytest.raises(grpc.RpcError) as err:
        commit(stub, md, other, 0, "once")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "once" in err.value.details()


@pytest.mark.parametrize(
    "damage", ["flip-payload", "flip-header", "truncate", "swap", "other-tenant", "garbage"]
)
def test_corrupted_values_are_detected(
    store: StoreHandle, stub: pb_grpc.KVStoreStub, redis_server: RedisServer, damage: str
) -> None:
    md = store.metadata()
    tokens = list(range(16))
    spans = push_session(stub, md, NS, tokens, size=5000)
    put_chunk(stub, store.metadata("bob"), NS, spans[0], tokens, b"bob's chunk")
    victim = chunk_redis_key("alice", spans[0].key)
    with redis_server.client() as cli:
        value = bytearray(cli.get(victim))
        if damage == "flip-payload":
            value[-10] ^= 0x01
        elif damage == "flip-header":
            value[30] ^= 0x20
        elif damage == "truncate":
            value = value[:-1]
        elif damage == "swap":
            value = bytearray(cli.get(chunk_redis_key("alice", spans[1].key)))
        elif damage == "other-tenant":
            value = bytearray(cli.get(chunk_redis_key("bob", spans[0].key)))
        else:
            value = bytearray(b"\x00" * 7)
        cli.set(victim, bytes(value))
    with pytest.raises(grpc.RpcError) as err:
        get_chunk(stub, md, spans[0].key)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    registry = store.server.metrics.registry
    assert registry.get_sample_value("gearkv_store_integrity_failures_total", {"where": "storage"}) == 1.0
    # The corrupt value was discarded, so a re-upload repairs it.
    assert code_of(get_chunk, stub, md, spans[0].key) == NOT_FOUND
    assert not put_chunk(stub, md, NS, spans[0], tokens, payload_for(spans[0], 5000)).deduplicated
    assert get_chunk(stub, md, spans[0].key)[1] == payload_for(spans[0], 5000)


def test_corrupted_manifest_is_data_loss(
    store: StoreHandle, stub: pb_grpc.KVStoreStub, redis_server: RedisServer
) -> None:
    md = store.metadata()
    spans = push_session(stub, md, NS, [1, 2, 3])
    commit(stub, md, manifest("m", NS, [1, 2, 3], spans), 0, "c")
    with redis_server.client() as cli:
        key = session_redis_key("alice", "m")
        value = bytearray(cli.hget(key, "m"))
        value[-3] ^= 0xFF
        cli.hset(key, "m", bytes(value))
    assert (
        code_of(stub.GetSession, pb.GetSessionRequest(session_id="m"), metadata=md)
        == grpc.StatusCode.DATA_LOSS
    )


@pytest.mark.parametrize(("field", "value"), [("v", "garbage"), ("ttl", "soon"), ("mk", "\xff")])
def test_tampered_session_metadata_is_data_loss_not_unavailable(
    store: StoreHandle, stub: pb_grpc.KVStoreStub, redis_server: RedisServer, field: str, value: str
) -> None:
    """Damaged bookkeeping is DATA_LOSS (clients do not retry it), never UNAVAILABLE."""
    md = store.metadata()
    spans = push_session(stub, md, NS, [1, 2, 3])
    commit(stub, md, manifest("t", NS, [1, 2, 3], spans), 0, "c")
    with redis_server.client() as cli:
        cli.hset(session_redis_key("alice", "t"), field, value)
    codes = {
        code_of(stub.GetSession, pb.GetSessionRequest(session_id="t"), metadata=md),
        code_of(
            stub.BeginTurn, pb.BeginTurnRequest(session_id="t", holder="w", lease_id="l1"), metadata=md
        ),
        code_of(commit, stub, md, manifest("t", NS, [1, 2, 3], spans), 1, "c2"),
    }
    assert grpc.StatusCode.UNAVAILABLE not in codes and grpc.StatusCode.UNKNOWN not in codes
    if field != "mk":  # a mark that does not decode only costs the next commit a full verification
        assert grpc.StatusCode.DATA_LOSS in codes, codes


def test_redis_down_is_unavailable_and_recovers(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    handle = store_factory(redis_server.url, redis_retry_budget_s=0.3, redis_timeout_s=1.0)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    tokens = list(range(16))
    with channel:
        spans = push_session(stub, md, NS, tokens)
        redis_server.stop(kill=True)
        started = time.monotonic()
        for call in (
            lambda: put_chunk(stub, md, NS, spans[0], tokens, b"x"),
            lambda: get_chunk(stub, md, spans[0].key),
            lambda: _lookup(stub, md, tokens, "s"),
            lambda: commit(stub, md, manifest("s", NS, tokens, spans), 0, "c"),
            lambda: stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10),
        ):
            assert code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 10
        wait_until(lambda: not health_serving(handle.address), 10, "health NOT_SERVING while Redis is down")
        redis_server.start()  # same port, empty (no persistence)
        wait_until(lambda: code_of(get_chunk, stub, md, spans[0].key) == NOT_FOUND, 10, "recovery")
        spans = push_session(stub, md, NS, tokens)
        assert commit(stub, md, manifest("s", NS, tokens, spans), 0, "c") == 1
        wait_until(lambda: health_serving(handle.address), 10, "health SERVING again")


def test_redis_down_answers_before_the_client_deadline_then_fails_fast(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    """A client with 0.5 s gets the store's UNAVAILABLE, not its own timeout; once the store has seen
    Redis stay down for a whole retry budget it answers at once instead of retrying every call."""
    handle = store_factory(redis_server.url, redis_retry_budget_s=3.0, redis_timeout_s=1.0)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    with channel:
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10) is not None
        redis_server.stop(kill=True)
        for _ in range(3):
            started = time.monotonic()
            code = code_of(lambda: stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=0.5))
            assert code == grpc.StatusCode.UNAVAILABLE, code
            assert time.monotonic() - started < 0.5
        started = time.monotonic()
        code = code_of(lambda: stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE, code
        assert time.monotonic() - started < 1.0, "known down: one attempt, not a 3 s retry budget"
        redis_server.start()
        wait_until(
            lambda: code_of(lambda: stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=5)) == OK,
            10,
            "recovery after Redis is back",
        )


@pytest.mark.slow
def test_store_killed_between_chunk_writes_and_commit_leaves_only_orphans(
    store_process_factory: Callable[..., StoreProcess], redis_server: RedisServer
) -> None:
    proc = store_process_factory(redis_server.url)
    md = proc.metadata()
    turn1 = list(range(20))
    channel, stub = stub_for(proc.address)
    with channel:
        spans1 = push_session(stub, md, NS, turn1)
        assert commit(stub, md, manifest("crash", NS, turn1, spans1), 0, "t1") == 1
        turn2 = [*turn1, *range(100, 120)]
        spans2 = chain(NS, turn2)
        for span in spans2[:3]:  # some of turn 2's chunks are written ...
            put_chunk(stub, md, NS, span, turn2, payload_for(span, 1000))
        # ... one is mid-stream when the store dies (first 2 of 3 MiB sent) ...
        release = threading.Event()
        payload = random_payload(3 << 20)
        reqs = put_requests(NS, spans2[3], turn2, payload)

        def stream() -> Iterator[pb.PutChunkRequest]:
            yield reqs[0]
            yield reqs[1]
            release.wait(20)

        outcome: list[grpc.StatusCode] = []
        sender = threading.Thread(
            target=lambda: outcome.append(code_of(stub.PutChunk, stream(), metadata=md))
        )
        sender.start()
        with redis_server.client() as cli:
            wait_until(lambda: proc.proc is not None and proc.proc.poll() is None, 5, "store alive")
            time.sleep(0.3)  # let the first parts reach the store (there is nothing to poll for)
            proc.kill()  # ... and the commit of turn 2 never happens.
            release.set()
            sender.join(20)
            assert outcome and outcome[0] != OK
            assert not cli.exists(
                chunk_redis_key("alice", spans2[3].key)
            )  # a half-sent chunk is never stored
    restarted = store_process_factory(redis_server.url)
    restarted_md = restarted.metadata()
    channel, stub = stub_for(restarted.address)
    # The new process has new tokens but the same tenant names; redis holds the data.
    with channel:
        got = stub.GetSession(pb.GetSessionRequest(session_id="crash"), metadata=restarted_md).manifest
        assert got.version == 1 and list(got.token_ids) == turn1
        for ref in got.chunks:  # the manifest never points at a missing chunk
            span = next(s for s in spans1 if s.key == ref.key)
            assert get_chunk(stub, restarted_md, ref.key)[1] == payload_for(span, 1000)
        for span in spans2[:3]:  # orphans: present, expiring, referenced by nothing
            assert get_chunk(stub, restarted_md, span.key)[1] == payload_for(span, 1000)
        assert commit(stub, restarted_md, manifest("crash", NS, turn2[:24], spans2[:3]), 1, "t2") == 2


def test_sigterm_shuts_down_gracefully(
    store_process_factory: Callable[..., StoreProcess], redis_server: RedisServer
) -> None:
    proc = store_process_factory(redis_server.url, extra_args=("--grace", "1"))
    assert proc.terminate() == 0
    assert "Traceback" not in proc.log()


def test_port_refuses_a_second_server(store: StoreHandle, redis_server: RedisServer) -> None:
    from gearkv.store.server import BindError

    port = int(store.address.rsplit(":", 1)[1])
    cfg, tokens = store_config(redis_server.url, port=port)
    with pytest.raises(BindError):
        start_store_thread(cfg, tokens)
    channel, stub = stub_for(store.address)
    with channel:  # the first server is unaffected
        assert stub.GetStats(pb.GetStatsRequest(), metadata=store.metadata(), timeout=5).tenant == "alice"


def test_load_shedding_beyond_max_in_flight(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    handle = store_factory(redis_server.url, max_in_flight=1)
    md = handle.metadata()
    tokens = list(range(8))
    span = chain(NS, tokens)[0]
    reqs = put_requests(NS, span, tokens, b"abc")
    release = threading.Event()

    def slow_stream() -> Iterator[pb.PutChunkRequest]:
        yield reqs[0]
        release.wait(20)

    channel, stub = stub_for(handle.address)
    with channel:
        holder: list[grpc.StatusCode] = []
        t = threading.Thread(target=lambda: holder.append(code_of(stub.PutChunk, slow_stream(), metadata=md)))
        t.start()
        wait_until(lambda: handle.server.interceptor.in_flight == 1, 5, "one request in flight")
        with pytest.raises(grpc.RpcError) as err:
            stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in err.value.details()
        release.set()
        t.join(10)
        assert holder == [OK]
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=5).chunks == 1


def test_oversized_message_is_rejected_not_unknown(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    big = pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=[2**31] * 2_000_000)  # ~10 MB
    code = code_of(stub.LookupPrefix, big, metadata=store.metadata(), timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_cancel_mid_stream_stores_nothing(store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = store.metadata()
    tokens = list(range(8))
    span = chain(NS, tokens)[0]
    reqs = put_requests(NS, span, tokens, random_payload(3 << 20))
    sent = threading.Event()
    release = threading.Event()

    def stream() -> Iterator[pb.PutChunkRequest]:
        yield reqs[0]
        sent.set()
        release.wait(10)
        yield from reqs[1:]

    future = stub.PutChunk.future(stream(), metadata=md)
    assert sent.wait(10)
    wait_until(lambda: store.server.interceptor.in_flight == 1, 5, "upload in flight")
    future.cancel()
    release.set()
    wait_until(lambda: store.server.interceptor.in_flight == 0, 5, "upload abandoned")
    assert code_of(get_chunk, stub, md, span.key) == NOT_FOUND
    assert not put_chunk(stub, md, NS, span, tokens, b"again").deduplicated


def test_slow_redis_commit_outcome_unknown_is_idempotent(
    store_factory: Callable[..., StoreHandle], redis_factory: Callable[..., RedisServer]
) -> None:
    """A Redis timeout leaves a write's outcome unknown; the retried commit replays, never doubles."""
    redis = redis_factory(["--enable-debug-command", "yes"])
    handle = store_factory(redis.url, redis_timeout_s=0.3, redis_retry_budget_s=5.0)
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    tokens = list(range(16))
    with channel:
        spans = push_session(stub, md, NS, tokens)
        sleeper = threading.Thread(
            target=lambda: redis.client(socket_timeout=5).execute_command("DEBUG", "SLEEP", "1")
        )
        sleeper.start()
        time.sleep(0.1)  # let DEBUG SLEEP start blocking Redis (nothing to poll while it blocks)
        started = time.monotonic()
        assert commit(stub, md, manifest("slow", NS, tokens, spans), 0, "c1") == 1
        assert time.monotonic() - started > 0.5  # it did wait out the stall
        sleeper.join(5)
        got = stub.GetSession(pb.GetSessionRequest(session_id="slow"), metadata=md).manifest
        assert got.version == 1
        assert commit(stub, md, manifest("slow", NS, tokens, spans), 1, "c2") == 2
    errors = handle.server.metrics.registry.get_sample_value(
        "gearkv_store_redis_errors_total", {"kind": "timeout"}
    )
    assert errors and errors >= 1
