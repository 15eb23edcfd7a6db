"""A table of bad inputs for every RPC: each gets its own status (never UNKNOWN) naming the field."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import xxhash
from gearkv.api.keys import Namespace, chain, chunk_key
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.kv import manifest, ns_proto, push_session, put_requests, stub_for
from support.store import StoreHandle

pytestmark = pytest.mark.integration
NS = Namespace("fp-1", "gear4/v1", 8)
TOKENS = list(range(20))
SPANS = chain(NS, TOKENS)
IA = grpc.StatusCode.INVALID_ARGUMENT
PAYLOAD = b"p" * 100


def _put(**header_changes: Any) -> list[pb.PutChunkRequest]:
    """Valid PutChunk requests for chunk 1, with header fields changed."""
    reqs = put_requests(NS, SPANS[1], TOKENS, PAYLOAD)
    for name, value in header_changes.items():
        if name == "namespace":
            reqs[0].header.namespace.CopyFrom(value)
        elif name == "token_ids":
            del reqs[0].header.token_ids[:]
            reqs[0].header.token_ids.extend(value)
        else:
            setattr(reqs[0].header, name, value)
    return reqs


def _ns(**changes: Any) -> pb.Namespace:
    ns = ns_proto(NS)
    for name, value in changes.items():
        setattr(ns, name, value)
    return ns


def _manifest(**changes: Any) -> pb.Manifest:
    m = manifest("sess", NS, TOKENS, SPANS)
    for name, value in changes.items():
        if name == "chunks":
            del m.chunks[:]
            m.chunks.extend(value)
        elif name == "attributes":
            m.attributes.update(value)
        elif name == "messages":
            del m.messages[:]
            m.messages.extend(value)
        elif name == "namespace":
            m.namespace.CopyFrom(value)
        elif name == "token_ids":
            del m.token_ids[:]
            m.token_ids.extend(value)
        else:
            setattr(m, name, value)
    return m


def _refs(*ranges: tuple[int, int], keys: list[str] | None = None) -> list[pb.ChunkRef]:
    keys = keys or [s.key for s in SPANS]
    return [pb.ChunkRef(key=k, start=a, end=b) for k, (a, b) in zip(keys, ranges, strict=False)]


Call = Callable[[pb_grpc.KVStoreStub, Any], Any]


def put(reqs: list[pb.PutChunkRequest]) -> Call:
    return lambda stub, md: stub.PutChunk(iter(reqs), metadata=md, timeout=10)


def get(key: str) -> Call:
    return lambda stub, md: list(stub.GetChunk(pb.GetChunkRequest(key=key), metadata=md, timeout=10))


def lookup(**fields: Any) -> Call:
    fields.setdefault("namespace", ns_proto(NS))
    return lambda stub, md: stub.LookupPrefix(pb.LookupPrefixRequest(**fields), metadata=md, timeout=10)


def commit_call(m: pb.Manifest | None, expected: int = 0, commit_id: str = "c1") -> Call:
    req = pb.CommitTurnRequest(expected_version=expected, commit_id=commit_id)
    if m is not None:
        req.manifest.CopyFrom(m)
    return lambda stub, md: stub.CommitTurn(req, metadata=md, timeout=10)


def simple(method: str, request: Any) -> Call:
    return lambda stub, md: getattr(stub, method)(request, metadata=md, timeout=10)


too_big_part = put_requests(NS, SPANS[1], TOKENS, b"x" * ((1 << 20) + 1), part=(1 << 20) + 1)
short_stream = put_requests(NS, SPANS[1], TOKENS, PAYLOAD)
short_stream[0].header.total_bytes = 200
long_stream = put_requests(NS, SPANS[1], TOKENS, PAYLOAD)
long_stream[0].header.total_bytes = 50
two_headers = [*put_requests(NS, SPANS[1], TOKENS, PAYLOAD), put_requests(NS, SPANS[1], TOKENS, PAYLOAD)[0]]
no_header = [pb.PutChunkRequest(data=b"abc")]

_k0 = chunk_key(NS, "", 0, TOKENS[0:4])
SHORT_KEYS = [_k0, chunk_key(NS, _k0, 4, TOKENS[4:8])]

CASES: list[tuple[str, Call, grpc.StatusCode, str]] = [
    # PutChunk
    ("put-empty-stream", put([]), IA, "empty stream"),
    ("put-no-header", put(no_header), IA, "header"),
    ("put-two-headers", put(two_headers), IA, "header"),
    ("put-key-not-hex", put(_put(key="z" * 64)), IA, "header.key"),
    ("put-key-upper", put(_put(key=SPANS[1].key.upper())), IA, "header.key"),
    ("put-key-short", put(_put(key="ab")), IA, "header.key"),
    ("put-key-mismatch", put(_put(key="0" * 64)), IA, "header.key does not match"),
    ("put-parent-bad", put(_put(parent_key="xyz")), IA, "header.parent_key"),
    ("put-parent-missing", put(_put(parent_key="")), IA, "header.parent_key"),
    (
        "put-no-namespace",
        put([pb.PutChunkRequest(header=pb.PutChunkHeader(key=SPANS[0].key))]),
        IA,
        "namespace",
    ),
    ("put-fp-empty", put(_put(namespace=_ns(fingerprint=""))), IA, "header.namespace.fingerprint"),
    ("put-fp-long", put(_put(namespace=_ns(fingerprint="f" * 129))), IA, "header.namespace.fingerprint"),
    ("put-fp-charset", put(_put(namespace=_ns(fingerprint="a b"))), IA, "header.namespace.fingerprint"),
    ("put-codec-space", put(_put(namespace=_ns(codec_id="gear 4"))), IA, "header.namespace.codec_id"),
    ("put-chunk-size-0", put(_put(namespace=_ns(chunk_size=0))), IA, "chunk_size"),
    ("put-chunk-size-huge", put(_put(namespace=_ns(chunk_size=65537))), IA, "chunk_size"),
    ("put-start-unaligned", put(_put(start=3)), IA, "header.start"),
    ("put-end-before-start", put(_put(end=8)), IA, "header.end"),
    ("put-end-too-far", put(_put(end=17)), IA, "header.end"),
    ("put-token-count", put(_put(token_ids=[1, 2])), IA, "header.token_ids"),
    ("put-total-zero", put(_put(total_bytes=0)), IA, "header.total_bytes"),
    ("put-total-huge", put(_put(total_bytes=2**40)), IA, "header.total_bytes"),
    ("put-raw-huge", put(_put(raw_bytes=2**64 - 1)), IA, "header.raw_bytes"),
    ("put-digest-short", put(_put(digest=b"123")), IA, "header.digest"),
    (
        "put-digest-mismatch",
        put(_put(digest=xxhash.xxh3_128_digest(b"other"))),
        grpc.StatusCode.DATA_LOSS,
        "digest",
    ),
    ("put-truncated", put(short_stream), IA, "total_bytes"),
    ("put-overlong", put(long_stream), IA, "total_bytes"),
    ("put-part-too-big", put(too_big_part), IA, "1048576"),
    # GetChunk
    ("get-empty-key", get(""), IA, "key"),
    ("get-bad-key", get("../../etc/passwd"), IA, "key"),
    ("get-unknown", get("ab" * 32), grpc.StatusCode.NOT_FOUND, "chunk"),
    # LookupPrefix
    (
        "lookup-no-namespace",
        lambda s, md: s.LookupPrefix(pb.LookupPrefixRequest(token_ids=[1]), metadata=md),
        IA,
        "namespace",
    ),
    ("lookup-bad-namespace", lookup(namespace=_ns(codec_id="")), IA, "namespace.codec_id"),
    ("lookup-too-many-tokens", lookup(token_ids=[1] * 1_048_577), IA, "token_ids"),
    ("lookup-bad-session", lookup(token_ids=[1], session_id="a/b"), IA, "session_id"),
    ("lookup-long-session", lookup(token_ids=[1], session_id="s" * 129), IA, "session_id"),
    # CommitTurn
    ("commit-no-manifest", commit_call(None), IA, "manifest"),
    ("commit-bad-session", commit_call(_manifest(session_id="")), IA, "manifest.session_id"),
    ("commit-session-charset", commit_call(_manifest(session_id="a b")), IA, "manifest.session_id"),
    ("commit-no-namespace", commit_call(pb.Manifest(session_id="s")), IA, "manifest.namespace"),
    ("commit-empty-commit-id", commit_call(_manifest(), commit_id=""), IA, "commit_id"),
    ("commit-long-commit-id", commit_call(_manifest(), commit_id="c" * 65), IA, "commit_id"),
    ("commit-huge-version", commit_call(_manifest(), expected=2**60), IA, "expected_version"),
    (
        "commit-huge-sizes",
        commit_call(_manifest(chunks=[pb.ChunkRef(key=SPANS[0].key, start=0, end=8, stored_bytes=2**63)])),
        IA,
        "manifest.chunks[0].raw_bytes and .stored_bytes",
    ),
    (
        "commit-key-mismatch",
        commit_call(_manifest(chunks=_refs((0, 8), keys=["0" * 64]))),
        IA,
        "manifest.chunks[0].key",
    ),
    ("commit-gap", commit_call(_manifest(chunks=_refs((0, 8), (9, 16)))), IA, "manifest.chunks[1].start"),
    (
        "commit-short-middle",
        commit_call(_manifest(chunks=_refs((0, 4), (4, 8), keys=SHORT_KEYS))),
        IA,
        "manifest.chunks[1]: only the last",
    ),
    ("commit-beyond-tokens", commit_call(_manifest(token_ids=[0, 1, 2])), IA, "manifest.chunks[0].end"),
    (
        "commit-too-many-attrs",
        commit_call(_manifest(attributes={f"k{i}": "v" for i in range(65)})),
        IA,
        "manifest.attributes",
    ),
    (
        "commit-empty-role",
        commit_call(_manifest(messages=[pb.ChatMessage(role="", content="x")])),
        IA,
        "manifest.messages[0].role",
    ),
    (
        "commit-missing-chunk",
        commit_call(_manifest()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "manifest.chunks[0]",
    ),
    # Sessions and stats
    ("get-session-empty", simple("GetSession", pb.GetSessionRequest()), IA, "session_id"),
    ("get-session-charset", simple("GetSession", pb.GetSessionRequest(session_id="x y")), IA, "session_id"),
    ("get-session-newline", simple("GetSession", pb.GetSessionRequest(session_id="x\n")), IA, "session_id"),
    ("get-key-newline", get("ab" * 32 + "\n"), IA, "key"),
    ("lookup-fp-newline", lookup(namespace=_ns(fingerprint="fp\n")), IA, "namespace.fingerprint"),
    (
        "get-session-unknown",
        simple("GetSession", pb.GetSessionRequest(session_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "session",
    ),
    ("list-page-size", simple("ListSessions", pb.ListSessionsRequest(page_size=1001)), IA, "page_size"),
    ("list-page-token", simple("ListSessions", pb.ListSessionsRequest(page_token="{x}")), IA, "page_token"),
    ("delete-empty", simple("DeleteSession", pb.DeleteSessionRequest()), IA, "session_id"),
    (
        "delete-unknown",
        simple("DeleteSession", pb.DeleteSessionRequest(session_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "session",
    ),
]


@pytest.fixture(scope="module")
def module_store() -> Iterator[StoreHandle]:
    from support.redis_procs import start_redis
    from support.store import start_store_thread, store_config

    redis = start_redis()
    cfg, tokens = store_config(redis.url)
    handle = start_store_thread(cfg, tokens)
    yield handle
    handle.stop()
    redis.cleanup()


@pytest.fixture(scope="module")
def stub(module_store: StoreHandle) -> Iterator[pb_grpc.KVStoreStub]:
    channel, stub = stub_for(module_store.address)
    yield stub
    channel.close()


@pytest.mark.parametrize(("call", "code", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    module_store: StoreHandle, stub: pb_grpc.KVStoreStub, call: Call, code: grpc.StatusCode, needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(stub, module_store.metadata())
    assert err.value.code() == code, err.value.details()
    assert needle in (err.value.details() or ""), err.value.details()
    assert "Traceback" not in (err.value.details() or "")


@pytest.mark.parametrize(
    "call",
    [
        put(_put()),
        get(SPANS[0].key),
        lookup(token_ids=[1]),
        commit_call(_manifest()),
        simple("GetSession", pb.GetSessionRequest(session_id="s")),
        simple("ListSessions", pb.ListSessionsRequest()),
        simple("DeleteSession", pb.DeleteSessionRequest(session_id="s")),
        simple("GetStats", pb.GetStatsRequest()),
    ],
    ids=["put", "get", "lookup", "commit", "get-session", "list", "delete", "stats"],
)
@pytest.mark.parametrize(
    "md",
    [(), (("authorization", "Bearer wrong"),), (("authorization", "Basic abc"),), (("authorization", ""),)],
    ids=["none", "wrong", "basic", "empty"],
)
def test_every_rpc_requires_a_valid_token(
    module_store: StoreHandle, stub: pb_grpc.KVStoreStub, call: Call, md: Any
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(stub, md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong" not in (err.value.details() or "")  # the presented token is never echoed


def test_valid_edge_values_are_accepted(module_store: StoreHandle, stub: pb_grpc.KVStoreStub) -> None:
    md = module_store.metadata()
    edge = Namespace("f" * 128, "~" * 128, 65536)
    tokens = [2**32 - 1, 0]
    spans = push_session(stub, md, edge, tokens, size=1)
    m = manifest("s" * 128, edge, tokens, spans)
    m.attributes.update({f"k{i}": "v" for i in range(64)})
    reply = stub.CommitTurn(pb.CommitTurnRequest(manifest=m, commit_id="~" * 64), metadata=md)
    assert reply.version == 1
    assert stub.ListSessions(pb.ListSessionsRequest(page_size=1000), metadata=md).sessions


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.text(max_size=80),
    session=st.text(max_size=140),
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=50),
    chunk_size=st.integers(0, 70000),
    fp=st.text(max_size=10),
)
def test_fuzzed_requests_never_unknown(
    module_store: StoreHandle,
    stub: pb_grpc.KVStoreStub,
    key: str,
    session: str,
    tokens: list[int],
    chunk_size: int,
    fp: str,
) -> None:
    md = module_store.metadata()
    ns = pb.Namespace(fingerprint=fp, codec_id="c", chunk_size=chunk_size)
    calls = [
        lambda: list(stub.GetChunk(pb.GetChunkRequest(key=key), metadata=md, timeout=10)),
        lambda: stub.LookupPrefix(
            pb.LookupPrefixRequest(namespace=ns, token_ids=tokens, session_id=session),
            metadata=md,
            timeout=10,
        ),
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=session), metadata=md, timeout=10),
        lambda: stub.ListSessions(pb.ListSessionsRequest(page_token=session), metadata=md, timeout=10),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as err:
            assert err.code() in {IA, grpc.StatusCode.NOT_FOUND}, (err.code(), err.details())


GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"  # an overlong varint: decodes as nothing
RPCS = {
    "PutChunk": "stream_unary",
    "PutSmallChunk": "unary_unary",
    "GetChunk": "unary_stream",
    "GetSmallChunk": "unary_unary",
    "LookupPrefix": "unary_unary",
    "CommitTurn": "unary_unary",
    "GetSession": "unary_unary",
    "ListSessions": "unary_unary",
    "DeleteSession": "unary_unary",
    "GetStats": "unary_unary",
}


@pytest.mark.parametrize(("method", "kind"), sorted(RPCS.items()))
def test_malformed_request_bytes_are_invalid_argument(
    module_store: StoreHandle, method: str, kind: str
) -> None:
    """Bytes that are no protobuf message get INVALID_ARGUMENT naming the RPC, not grpc's UNKNOWN."""
    with grpc.insecure_channel(module_store.address) as channel:
        call = getattr(channel, kind)(f"/gearkv.api.v1.KVStore/{method}")
        request: Any = iter([GARBAGE]) if kind.startswith("stream") else GARBAGE
        with pytest.raises(grpc.RpcError) as err:
            reply = call(request, metadata=module_store.metadata(), timeout=10)
            if kind == "unary_stream":
                list(reply)
    assert err.value.code() == IA, (err.value.code(), err.value.details())
    assert method in (err.value.details() or "") and "Traceback" not in (err.value.details() or "")
