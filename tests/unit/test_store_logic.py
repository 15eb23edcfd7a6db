"""Store logic without network: value format, validation, auth, config/CLI, servicer on a fake backend."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from gearkv.api.keys import Namespace, chain
from gearkv.api.records import SessionSummary
from gearkv.api.units import format_size, parse_size
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.store import validation
from gearkv.store.auth import Authenticator, hash_token, parse_tenants
from gearkv.store.backend import ManifestMark, SessionHead
from gearkv.store.chunk_format import ChunkMeta, CorruptValue, decode_value, encode_value, payload_digest
from gearkv.store.cli import auth_notice, build_parser, config_from_args
from gearkv.store.commits import CommitPlan, plan_commit, shared_prefix
from gearkv.store.config import StoreConfig, TenantConfig, redacted_url
from gearkv.store.context import tenant_var
from gearkv.store.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from gearkv.store.metrics import StoreMetrics
from gearkv.store.prefix import chain_keys, chain_start, common_prefix, manifest_candidates, match_prefix
from gearkv.store.servicer import KVStoreServicer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.fake_backend import FakeBackend
from support.kv import manifest, ns_proto, put_requests

NS = Namespace("fp-unit", "gear4/v1", 4)


def _meta(payload: bytes, key: str = "ab" * 32, tenant: str = "alice") -> ChunkMeta:
    return ChunkMeta(tenant, key, NS, 0, 4, len(payload) * 4, len(payload), payload_digest(payload))


# -- chunk value format ---------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(min_size=1, max_size=3000))
def test_value_round_trip(payload: bytes) -> None:
    meta = _meta(payload)
    got, view = decode_value(encode_value(meta, payload), "alice", meta.key)
    assert got == meta and bytes(view) == payload


def test_every_single_byte_flip_is_detected() -> None:
    payload = bytes(range(64))
    value = encode_value(_meta(payload), payload)
    for i in range(len(value)):
        damaged = bytearray(value)
        damaged[i] ^= 0x04
        with pytest.raises(CorruptValue):
            decode_value(bytes(damaged), "alice", "ab" * 32)


@pytest.mark.parametrize("cut", [0, 5, 30, -1])
def test_truncation_is_detected(cut: int) -> None:
    payload = b"x" * 100
    value = encode_value(_meta(payload), payload)
    with pytest.raises(CorruptValue):
        decode_value(value[:cut], "alice", "ab" * 32)


def _legacy_v1_value(meta: ChunkMeta, payload: bytes) -> bytes:
    """A value as format 1 wrote it: blake2b-128 header check, blake2b-256 payload digest."""
    header = json.dumps(
        {
            "t": meta.tenant,
            "k": meta.key,
            "fp": NS.fingerprint,
            "codec": NS.codec_id,
            "cs": NS.chunk_size,
            "s": meta.start,
            "e": meta.end,
            "raw": meta.raw_bytes,
            "n": meta.stored_bytes,
            "d": hashlib.blake2b(payload, digest_size=32).hexdigest(),
        },
        separators=(",", ":"),
    ).encode()
    check = hashlib.blake2b(header, digest_size=16).digest()
    return struct.pack("<4sHI16s", b"GKVC", 1, len(header), check) + header + payload


def test_format_1_values_still_read_and_report_the_new_digest() -> None:
    payload = bytes(range(200))
    meta = _meta(payload)
    value = _legacy_v1_value(meta, payload)
    got, view = decode_value(value, "alice", meta.key)
    assert got == meta and bytes(view) == payload  # meta.digest is XXH3-128, as the API reports now
    damaged = bytearray(value)
    damaged[-1] ^= 1
    with pytest.raises(CorruptValue, match="digest"):
        decode_value(bytes(damaged), "alice", meta.key)


def test_current_values_use_format_2_with_a_16_byte_digest() -> None:
    payload = b"z" * 33
    value = encode_value(_meta(payload), payload)
    assert struct.unpack_from("<4sH", value) == (b"GKVC", 2) and len(_meta(payload).digest) == 16


def test_wrong_key_or_tenant_is_detected() -> None:
    payload = b"y" * 10
    value = encode_value(_meta(payload), payload)
    with pytest.raises(CorruptValue):
        decode_value(value, "alice", "cd" * 32)
    with pytest.raises(CorruptValue):
        decode_value(value, "bob", "ab" * 32)


def test_manifest_envelope_detects_damage() -> None:
    m = manifest("s", NS, [1, 2, 3], chain(NS, [1, 2, 3]))
    value = validation.encode_manifest(m)
    assert validation.decode_manifest(value) == m
    for i in (0, 10, len(value) - 1):
        damaged = bytearray(value)
        damaged[i] ^= 1
        with pytest.raises(DataLoss):
            validation.decode_manifest(bytes(damaged))


# -- auth and configuration -----------------------------------------------------------------------------


def test_parse_tenants_forms() -> None:
    digest = hash_token("t-b")
    tenants = parse_tenants(
        json.dumps({"a": {"token": "t-a", "quota_bytes": 10}, "b": {"token_sha256": digest}})
    )
    assert tenants == (TenantConfig("a", hash_token("t-a"), 10), TenantConfig("b", digest, 0))
    assert parse_tenants("a=t-a,b=t-b") == (TenantConfig("a", hash_token("t-a")), TenantConfig("b", digest))
    assert "t-a" not in repr(tenants)
    for bad in (
        "",
        "{",
        "[]",
        '{"a": "x"}',
        '{"a": {}}',
        "a",
        '{"a": {"token": "t", "quota_bytes": "9"}}',
        '{"a b": {"token": "t"}}',
    ):
        with pytest.raises(ValueError):
            parse_tenants(bad)


def test_authenticator() -> None:
    auth = Authenticator(parse_tenants("alice=tok-1,bob=tok-2"))
    assert auth.tenant_for([("authorization", "Bearer tok-2")]) == "bob"
    assert auth.tenant_for([("x", "y"), ("Authorization", "bearer  tok-1 ")]) == "alice"
    for md in (
        [],
        [("authorization", "Bearer tok-3")],
        [("authorization", "tok-1")],
        [("authorization", "Bearer ")],
    ):
        with pytest.raises(Unauthenticated) as err:
            auth.tenant_for(md)
        assert "tok-" not in str(err.value)
    assert Authenticator((), enabled=False).tenant_for(None) == "default"


def test_config_validation() -> None:
    t = (TenantConfig("a", hash_token("x")),)
    StoreConfig(tenants=t)
    StoreConfig(auth=False)
    for kwargs in (
        {"tenants": ()},
        {"tenants": t, "redis_url": "http://x"},
        {"tenants": t, "tls_key": "k"},
        {"tenants": t, "tls_client_ca": "ca"},
        {"tenants": t, "max_in_flight": 0},
        {"tenants": (*t, TenantConfig("b", hash_token("x")))},
        {"tenants": t, "default_chunk_ttl_s": 10, "max_chunk_ttl_s": 5},
    ):
        with pytest.raises(ValueError):
            StoreConfig(**kwargs)  # type: ignore[arg-type]
    assert StoreConfig(auth=False, redis_url="redis+cluster://127.0.0.1:7000").is_cluster


def test_cli_flags_over_env_over_defaults() -> None:
    env = {"GEARKV_PORT": "7001", "GEARKV_REDIS_URL": "redis://127.0.0.1:1/0", "GEARKV_TOKENS": "a=tok"}
    parser = build_parser("gearkv store", env)
    cfg = config_from_args(parser.parse_args(["--port", "7002", "--max-in-flight", "9"]), env)
    assert (cfg.port, cfg.redis_url, cfg.max_in_flight) == (7002, "redis://127.0.0.1:1/0", 9)
    assert cfg.tenants[0].name == "a" and cfg.auth
    cfg = config_from_args(parser.parse_args(["--no-auth", "--cluster"]), {})
    assert not cfg.auth and cfg.is_cluster
    with pytest.raises(ValueError, match="GEARKV_PORT"):
        config_from_args(parser.parse_args([]), {"GEARKV_PORT": "abc", "GEARKV_NO_AUTH": "1"})


def test_cli_help_documents_flags_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    from gearkv.store.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for needle in (
        "--redis-url",
        "GEARKV_REDIS_URL",
        "--port",
        "--tokens-file",
        "GEARKV_TOKENS",
        "--no-auth",
    ):
        assert needle in out


def test_cli_needs_tokens_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    from gearkv.store.cli import main

    assert main(["--redis-url", "redis://127.0.0.1:1/0", "--host", "0.0.0.0"]) == 2
    assert "tokens" in capsys.readouterr().err
    parser = build_parser("gearkv store", {})
    cfg = config_from_args(parser.parse_args(["--redis-url", "redis://127.0.0.1:1/0"]), {})
    assert not cfg.auth and cfg.host == "127.0.0.1"  # loopback demo: no setup needed


# -- servicer on a fake backend ---------------------------------------------------------------------------


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def servicer(backend: FakeBackend) -> Iterator[KVStoreServicer]:
    cfg = StoreConfig(auth=False, tenants=())
    token = tenant_var.set("alice")
    yield KVStoreServicer(cfg, backend, StoreMetrics(CollectorRegistry()))
    tenant_var.reset(token)


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _push(servicer: KVStoreServicer, tokens: list[int], size: int = 10) -> list[Any]:
    spans = chain(NS, tokens)
    for span in spans:
        await servicer.PutChunk(
            _aiter(put_requests(NS, span, tokens, bytes([span.start % 256]) * size)), None
        )
    return spans


async def test_put_get_round_trip_and_dedup(servicer: KVStoreServicer) -> None:
    tokens = [5, 6, 7, 8, 9]
    spans = chain(NS, tokens)
    payload = hashlib.sha256(b"x").digest() * 100_000  # 3.2 MB: several parts back
    reply = await servicer.PutChunk(_aiter(put_requests(NS, spans[0], tokens, payload)), None)
    assert not reply.deduplicated and reply.stored_bytes == len(payload)
    again = await servicer.PutChunk(_aiter(put_requests(NS, spans[0], tokens, payload)), None)
    assert again.deduplicated
    parts = [m async for m in servicer.GetChunk(pb.GetChunkRequest(key=spans[0].key), None)]
    part = servicer._cfg.download_part_bytes
    assert len(parts) == -(-len(payload) // part) and all(len(p.data) <= part for p in parts)
    assert parts[0].info.total_bytes == len(payload)
    assert b"".join(p.data for p in parts) == payload


async def test_corrupt_stored_chunk_is_data_loss_and_discarded(
    servicer: KVStoreServicer, backend: FakeBackend
) -> None:
    spans = await _push(servicer, [1, 2, 3, 4])
    key = ("alice", spans[0].key)
    backend.chunks[key] = backend.chunks[key][:-1] + b"?"
    with pytest.raises(DataLoss):
        [m async for m in servicer.GetChunk(pb.GetChunkRequest(key=spans[0].key), None)]
    assert key not in backend.chunks
    with pytest.raises(NotFound):
        [m async for m in servicer.GetChunk(pb.GetChunkRequest(key=spans[0].key), None)]


async def test_lookup_combines_manifest_and_chain(servicer: KVStoreServicer, backend: FakeBackend) -> None:
    tokens = list(range(10))  # chunks [0,4) [4,8) [8,10)
    spans = await _push(servicer, tokens)
    await servicer.CommitTurn(
        pb.CommitTurnRequest(manifest=manifest("s", NS, tokens, spans), commit_id="c"), None
    )

    async def lookup(query: list[int], sid: str = "") -> pb.LookupPrefixResponse:
        req = pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=query, session_id=sid)
        return await servicer.LookupPrefix(req, None)

    assert (await lookup(tokens, "s")).matched_tokens == 10
    assert (await lookup([*tokens, 1], "s")).reason == "not_stored"
    assert (await lookup(tokens)).matched_tokens == 8  # no manifest: full chunks only
    assert (await lookup([0, 1, 2, 3, 4, 5, 6, 7, 8, 99], "s")).matched_tokens == 9
    assert (await lookup([0, 1, 2, 3, 4, 9], "s")).matched_tokens == 5
    # A longer chain than the manifest (another session pushed more full chunks) wins.
    longer = [*tokens[:8], 8, 9, 10, 11, 12]
    await _push(servicer, longer)
    got = await lookup(longer, "s")
    assert got.matched_tokens == 12 and [c.end for c in got.chunks] == [4, 8, 12]
    backend.expire("alice", spans[1].key)
    got = await lookup(tokens, "s")
    assert got.matched_tokens == 4 and got.reason == "chunk_missing"
    assert (await lookup([], "s")).matched_tokens == 0


async def test_commit_rules(servicer: KVStoreServicer, backend: FakeBackend) -> None:
    tokens = list(range(6))
    spans = await _push(servicer, tokens)
    m = manifest("s", NS, tokens, spans)
    req = pb.CommitTurnRequest(manifest=m, commit_id="c1")
    assert (await servicer.CommitTurn(req, None)).version == 1
    assert (await servicer.CommitTurn(req, None)).version == 1
    with pytest.raises(Aborted):
        await servicer.CommitTurn(pb.CommitTurnRequest(manifest=m, commit_id="c2"), None)
    backend.expire("alice", spans[1].key)
    with pytest.raises(FailedPrecondition, match=r"manifest.chunks\[1\]"):
        await servicer.CommitTurn(pb.CommitTurnRequest(manifest=m, commit_id="c3", expected_version=1), None)
    stored = validation.decode_manifest(backend.sessions[("alice", "s")][0])
    assert stored.version == 1 and stored.created_ms == stored.updated_ms and stored.stored_bytes == 2000


async def test_a_commit_verifies_only_the_chunks_it_adds(
    servicer: KVStoreServicer, backend: FakeBackend
) -> None:
    tokens = list(range(10))  # chunks [0,4) [4,8) and the tail [8,10)
    spans = await _push(servicer, tokens)
    await servicer.CommitTurn(
        pb.CommitTurnRequest(manifest=manifest("s", NS, tokens, spans), commit_id="c1"), None
    )
    created = validation.decode_manifest(backend.sessions[("alice", "s")][0]).created_ms
    longer = [*tokens, 10, 11, 12, 13, 14]  # the tail is superseded by [8,12); a new tail [12,15)
    spans2 = await _push(servicer, longer)
    backend.touched.clear()
    m2 = manifest("s", NS, longer, spans2, turns=2)
    req = pb.CommitTurnRequest(manifest=m2, commit_id="c2", expected_version=1)
    assert (await servicer.CommitTurn(req, None)).version == 2
    assert backend.touched == [s.key for s in spans2[2:]]
    stored = validation.decode_manifest(backend.sessions[("alice", "s")][0])
    assert stored.created_ms == created and stored.updated_ms >= created
    # A chunk the turn adds must exist; an old one that expired is found by the next lookup instead.
    even_longer = [*longer, 15, 16]
    spans3 = chain(NS, even_longer)
    backend.expire("alice", spans2[0].key)
    req = pb.CommitTurnRequest(
        manifest=manifest("s", NS, even_longer, spans3), commit_id="c3", expected_version=2
    )
    with pytest.raises(FailedPrecondition, match=r"manifest.chunks\[3\]"):
        await servicer.CommitTurn(req, None)


def test_plan_commit() -> None:
    keys = ["k0", "k1", "k2", "k3"]
    mark = ManifestMark.of(["k0", "k1", "t2"], created_ms=5, verified_ms=1000)
    assert ManifestMark.decode(mark.encode()) == mark and ManifestMark.decode("junk") is None
    head = SessionHead(3, mark)
    assert shared_prefix(mark, keys) == 2  # its tail "t2" was superseded by k2
    assert shared_prefix(ManifestMark.of(keys[:3], 5, 1000), keys) == 3
    assert shared_prefix(ManifestMark.of(["x0", "x1"], 5, 1000), keys) == 0
    assert plan_commit(head, 3, keys, 2000, 10_000) == CommitPlan(2, mark, 5, 1000)
    assert plan_commit(head, 3, keys[:2], 2000, 10_000) == CommitPlan(1, mark, 5, 1000)  # last: verified
    assert plan_commit(head, 3, keys, 20_000, 10_000) == CommitPlan(0, mark, 5, 20_000)  # due again
    assert plan_commit(head, 2, keys, 2000, 10_000) == CommitPlan(0, None, 2000, 2000)  # stale version
    assert plan_commit(None, 0, keys, 2000, 10_000) == CommitPlan(0, None, 2000, 2000)
    assert plan_commit(SessionHead(3, None), 3, keys, 2000, 10_000) == CommitPlan(0, None, None, 2000)


async def test_a_commit_relying_on_a_changed_mark_is_aborted(backend: FakeBackend) -> None:
    summary = SessionSummary("s", 1, 1, 4, 0, 0, 0)
    one = ManifestMark.of(["a"], 1, 1)
    await backend.commit_session(
        "alice",
        "s",
        expected_version=0,
        commit_id="c1",
        manifest=b"m",
        summary=summary,
        ttl_ms=1000,
        mark=one,
    )
    with pytest.raises(Aborted):
        await backend.commit_session(
            "alice",
            "s",
            expected_version=1,
            commit_id="c2",
            manifest=b"m",
            summary=summary,
            ttl_ms=1000,
            mark=one,
            base=ManifestMark.of(["b"], 1, 1),
        )


def test_prefix_pure_steps() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2 and common_prefix([], [1]) == 0
    tokens = list(range(10))
    spans = chain(NS, tokens)
    m = manifest("s", NS, tokens, spans)
    wanted, common = manifest_candidates(m, [0, 1, 2, 3, 4, 99])
    assert common == 5 and [c.end for c in wanted] == [4, 8]
    assert chain_start(m.chunks, 10, 4) == 2 and chain_start(m.chunks, 6, 4) == 1
    assert chain_keys(NS, tokens, "", 0) == [s.key for s in spans[:2]]
    assert chain_keys(NS, tokens, spans[0].key, 1) == [spans[1].key]


async def test_match_prefix_on_the_fake_backend(servicer: KVStoreServicer, backend: FakeBackend) -> None:
    tokens = list(range(10))
    spans = await _push(servicer, tokens)
    m = manifest("s", NS, tokens, spans)
    got = await match_prefix(backend, "alice", NS, tokens, m, 1000)
    assert got.matched == 10 and got.reason == "" and len(got.chunks) == 3
    got = await match_prefix(backend, "alice", NS, [*tokens, 1], None, 1000)
    assert got.matched == 8 and got.reason == "not_stored"
    other = pb.Manifest()
    other.CopyFrom(m)
    other.namespace.fingerprint = "another"
    got = await match_prefix(backend, "alice", NS, [7, 7], other, 1000)
    assert got.matched == 0 and got.reason == "namespace_mismatch"
    got = await match_prefix(backend, "alice", NS, [*tokens, 1], other, 1000)  # the chain still helps
    assert got.matched == 8 and got.reason == "not_stored"


async def test_chain_walk_hashes_only_up_to_the_first_missing_chunk(
    servicer: KVStoreServicer, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million-token lookup with nothing stored hashes a few chunks, not every token (it held the
    event loop, and every other tenant, for seconds); a stored prefix is still found in full."""
    import gearkv.store.prefix as prefix

    hashed: list[int] = []
    real = prefix.chunk_key
    monkeypatch.setattr(prefix, "chunk_key", lambda *a: hashed.append(1) or real(*a))
    huge = list(range(1 << 20))
    got = await match_prefix(backend, "alice", NS, huge, None, 1000)
    assert got.matched == 0 and got.reason == "not_stored"
    assert len(hashed) <= 4
    tokens = list(range(4 * 40))  # 40 stored chunks: found across several growing batches
    await _push(servicer, tokens)
    hashed.clear()
    got = await match_prefix(backend, "alice", NS, [*tokens, *range(1000, 1400)], None, 1000)
    assert got.matched == len(tokens) and [c.end for c in got.chunks] == list(range(4, 161, 4))
    assert len(hashed) < 40 + 40  # the stored ones, then at most one batch past the first missing


async def test_quota_error_passes_through(servicer: KVStoreServicer, backend: FakeBackend) -> None:
    servicer._cfg = StoreConfig(tenants=(TenantConfig("alice", hash_token("t"), 15),))
    await _push(servicer, [1, 2, 3, 4])
    with pytest.raises(ResourceExhausted):
        await _push(servicer, [9, 9, 9, 9])


async def test_put_stream_errors(servicer: KVStoreServicer) -> None:
    tokens = [1, 2, 3, 4]
    span = chain(NS, tokens)[0]
    reqs = put_requests(NS, span, tokens, b"abcdef", part=2)
    with pytest.raises(InvalidArgument, match="empty stream"):
        await servicer.PutChunk(_aiter([]), None)
    with pytest.raises(InvalidArgument, match="received 4"):
        await servicer.PutChunk(_aiter(reqs[:2]), None)
    with pytest.raises(InvalidArgument, match="only in the first"):
        await servicer.PutChunk(_aiter([*reqs, reqs[0]]), None)
    reqs[1].data = b"zz"
    with pytest.raises(DataLoss):
        await servicer.PutChunk(_aiter(reqs), None)


def test_malloc_tuning_is_applied_on_glibc() -> None:
    import platform

    from gearkv.store.tuning import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


# -- sizes, CLI help and the start-up log ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("64KB", 65_536),
        ("64kb", 65_536),
        ("64K", 65_536),
        ("512MiB", 512 << 20),
        ("1GiB", 1 << 30),
        ("1.5 GiB", 3 << 29),
        ("2TB", 2 << 40),
        ("10B", 10),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "1PB", "0.5", "1.5", "1 GiBs", "GiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=0, max_value=1 << 50))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


def test_cli_byte_flags_take_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser("gearkv store", {})
    args = parser.parse_args(["--no-auth", "--max-chunk-bytes", "64MiB", "--max-message-bytes", "16MiB"])
    cfg = config_from_args(args, {"GEARKV_DOWNLOAD_PART_BYTES": "256KB"})
    assert (cfg.max_chunk_bytes, cfg.max_message_bytes, cfg.download_part_bytes) == (
        64 << 20,
        16 << 20,
        256 << 10,
    )
    with pytest.raises(ValueError, match="GEARKV_MAX_CHUNK_BYTES must be invalid size 'lots'"):
        config_from_args(parser.parse_args(["--no-auth"]), {"GEARKV_MAX_CHUNK_BYTES": "lots"})
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-chunk-bytes", "1PB"])
    assert "invalid size value" in capsys.readouterr().err


def test_cli_help_names_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser("gearkv store", {})
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and action.help.count("; default ") == 1, action.option_strings
    assert "default 256MiB" in parser.format_help().replace("\n", " ").replace("  ", "")


def test_auth_notice_tells_why() -> None:
    assert auth_notice(StoreConfig(tenants=(TenantConfig("a", hash_token("t")),)), False) is None
    asked = auth_notice(StoreConfig(auth=False, tenants=()), True)
    assert asked is not None and "--no-auth" in asked and "WITHOUT authentication" in asked
    loopback = auth_notice(StoreConfig(auth=False, tenants=()), False)
    assert loopback is not None and "--no-auth" not in loopback and "no tenant tokens" in loopback


def test_redacted_url() -> None:
    assert redacted_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted_url("rediss://:s3cret@host:6380") == "rediss://:***@host:6380"
    assert redacted_url("redis://host:6379/0?password=s3cret&db=1") == "redis://host:6379/0?password=***&db=1"
    assert redacted_url("redis+cluster://127.0.0.1:7000") == "redis+cluster://127.0.0.1:7000"


async def test_unreachable_redis_at_start_up_is_named(caplog: pytest.LogCaptureFixture) -> None:
    from gearkv.store.errors import BackendUnavailable
    from gearkv.store.server import start_store

    class Down(FakeBackend):
        async def ping(self) -> None:
            raise BackendUnavailable("backend unavailable")

    cfg = StoreConfig(redis_url="redis://user:s3cret@10.9.8.7:6399/0", auth=False, tenants=(), port=0)
    with caplog.at_level("INFO", logger="gearkv.store"):
        _, server = await start_store(cfg, backend=Down())
        await server.stop(0)
    assert "unreachable (fake at redis://user:***@10.9.8.7:6399/0)" in caplog.text
    assert "authentication OFF" in caplog.text and "s3cret" not in caplog.text


async def test_health_is_not_serving_until_the_backend_first_answers() -> None:
    """Both the server and KVStore read NOT_SERVING while the first ping hangs (they read SERVING and
    NOT_FOUND for ~3 s after start-up with Redis down)."""
    import asyncio

    import grpc
    from gearkv.store.local import free_port
    from gearkv.store.server import SERVICE_NAME, start_store
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    answer = asyncio.Event()

    class Slow(FakeBackend):
        async def ping(self) -> None:
            await answer.wait()

    port = free_port()
    cfg = StoreConfig(redis_url="redis://127.0.0.1:1/0", auth=False, tenants=(), port=port)
    starting = asyncio.create_task(start_store(cfg, backend=Slow()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        for _ in range(100):
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)  # not listening yet
        assert reply.status == not_serving
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
        assert reply.status == not_serving
        answer.set()
        _, server = await starting
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(0)


async def test_stopping_background_loops_survives_a_lost_cancellation() -> None:
    """A loop whose first cancellation is swallowed (as redis-py's socket timeout can) still stops
    within a second; shutdown used to wait 20 s for it."""
    import asyncio
    import contextlib
    import time

    from gearkv.store.server import _cancel_all

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # taken for a timeout of its own
            await asyncio.sleep(60)
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await _cancel_all([task])
    assert task.cancelled() and time.monotonic() - started < 1.5
