"""Request building, validation, part splitting and stream assembly (pure, no network)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import xxhash
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.wire import encode_put_part
from gearkv.client import ChunkRef, Manifest, Namespace, RetryPolicy, TLSOptions
from gearkv.client._base import (
    PART_BYTES,
    UPLOAD_PART_BYTES,
    ChunkAssembler,
    KVStoreClientBase,
    check_timeout,
    payload_view,
    put_chunk_messages,
    split_parts,
)
from gearkv.client._options import parse_target
from gearkv.client.errors import ChunkCorrupt, InvalidArgument
from gearkv.client.keys import chunk_key
from hypothesis import given, settings
from hypothesis import strategies as st

NS = Namespace(fingerprint="smollm2-135m:3f9a", codec_id="gear4/v1", chunk_size=4)
Base = KVStoreClientBase


class Offline(KVStoreClientBase):
    """The shared base with no channel at all."""

    def _open(self) -> None:
        pass


@given(st.integers(min_value=0, max_value=5 * 1024), st.integers(min_value=1, max_value=1500))
def test_split_parts_covers_data_in_order(size: int, part: int) -> None:
    data = memoryview(bytes(range(256)) * (size // 256 + 1))[:size]
    parts = list(split_parts(data, part))
    assert b"".join(p.tobytes() for p in parts) == data.tobytes()
    assert all(0 < len(p) <= part for p in parts)
    assert len(parts) == -(-size // part)
    assert all(p.obj is data.obj for p in parts)  # views, not copies


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=3 * PART_BYTES + 7))
def test_put_messages_header_first_then_parts(size: int) -> None:
    data = bytes(size)
    header, view = Base._put_chunk_header(NS, "", 0, [1, 2, 3], data, raw_bytes=size * 4, ttl_s=0)
    # What goes on the wire (gearkv.api.wire) is what protobuf itself reads back.
    msgs = [pb.PutChunkRequest.FromString(encode_put_part(m)) for m in put_chunk_messages(header, view)]
    assert msgs[0].HasField("header") and not any(m.HasField("header") for m in msgs[1:])
    assert all(len(m.data) <= PART_BYTES for m in msgs) and all(m.data for m in msgs)
    assert sum(len(m.data) for m in msgs) == size == msgs[0].header.total_bytes
    assert all(m.ByteSize() <= PART_BYTES + 1024 for m in msgs[1:])


def test_put_header_fields() -> None:
    data = b"payload" * 100
    header, _ = Base._put_chunk_header(NS, "", 0, [5, 6, 7, 8], bytearray(data), raw_bytes=4096, ttl_s=60)
    assert header.key == chunk_key(NS, "", 0, [5, 6, 7, 8])
    assert (header.start, header.end, list(header.token_ids)) == (0, 4, [5, 6, 7, 8])
    assert header.digest == xxhash.xxh3_128_digest(data)
    assert (header.total_bytes, header.raw_bytes, header.ttl_s) == (len(data), 4096, 60)
    assert header.namespace.chunk_size == 4 and header.parent_key == ""
    nxt, _ = Base._put_chunk_header(NS, header.key, 4, [9], data, raw_bytes=1, ttl_s=0)
    assert nxt.key == chunk_key(NS, header.key, 4, [9]) and nxt.parent_key == header.key


BAD_PUTS: list[tuple[str, dict[str, Any]]] = [
    ("data length", {"data": b""}),
    ("data must be bytes", {"data": "text"}),
    ("token_ids has 5 entries", {"token_ids": [1, 2, 3, 4, 5]}),
    ("token_ids must not be empty", {"token_ids": []}),
    ("token_ids entries", {"token_ids": [-1]}),
    ("token_ids entries", {"token_ids": [2**32]}),
    ("token_ids entries", {"token_ids": [1.5]}),
    ("start must be a multiple", {"start": 3, "parent_key": "a" * 64}),
    ("start must be an integer", {"start": -4}),
    ("parent_key must be empty exactly", {"start": 4}),
    ("parent_key must be 64", {"parent_key": "XYZ", "start": 4}),
    ("raw_bytes", {"raw_bytes": -1}),
    ("ttl_s", {"ttl_s": 2**32}),
    ("namespace", {"ns": "not-a-namespace"}),
]


@pytest.mark.parametrize(("message", "change"), BAD_PUTS, ids=[m for m, _ in BAD_PUTS])
def test_bad_put_arguments_name_the_field(message: str, change: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "ns": NS,
        "parent_key": "",
        "start": 0,
        "token_ids": [1, 2],
        "data": b"x",
        "raw_bytes": 4,
        "ttl_s": 0,
    }
    args.update(change)
    with pytest.raises(InvalidArgument, match=message):
        Base._put_chunk_header(**args)


def manifest(**kw: Any) -> Manifest:
    fields: dict[str, Any] = {
        "session_id": "chat-1",
        "namespace": NS,
        "token_ids": (1, 2, 3, 4, 5),
        "chunks": (ChunkRef("a" * 64, 0, 4), ChunkRef("b" * 64, 4, 5)),
        "turns": 1,
    }
    fields.update(kw)
    return Manifest(**fields)


def test_commit_request_makes_one_commit_id() -> None:
    req = Base._commit_request(manifest(), 0, None, 0)
    assert uuid.UUID(hex=req.commit_id) and req.expected_version == 0
    assert req.manifest.session_id == "chat-1" and len(req.manifest.chunks) == 2
    assert Base._commit_request(manifest(), 3, "retry-me", 30).commit_id == "retry-me"


BAD_CALLS: list[tuple[str, Callable[[], object]]] = [
    ("manifest.session_id", lambda: Base._commit_request(manifest(session_id="bad id"), 0, None, 0)),
    ("manifest.session_id", lambda: Base._commit_request(manifest(session_id="x" * 129), 0, None, 0)),
    ("expected_version", lambda: Base._commit_request(manifest(), -1, None, 0)),
    ("commit_id", lambda: Base._commit_request(manifest(), 0, "", 0)),
    ("commit_id", lambda: Base._commit_request(manifest(), 0, "c" * 65, 0)),
    (
        "chunks\\[1\\].key",
        lambda: Base._commit_request(
            manifest(chunks=(ChunkRef("a" * 64, 0, 4), ChunkRef("B" * 64, 4, 5))), 0, None, 0
        ),
    ),
    ("manifest must be", lambda: Base._commit_request("m", 0, None, 0)),  # type: ignore[arg-type]
    ("session_id", lambda: Base._get_session_request("")),
    ("session_id", lambda: Base._delete_session_request("a/b")),
    ("key must be 64", lambda: Base._get_chunk_request("a" * 63)),
    ("page_size", lambda: Base._list_request(0, "")),
    ("page_size", lambda: Base._list_request(1001, "")),
    ("token_ids has", lambda: Base._lookup_request(NS, [0] * 1_048_577, None)),
    ("session_id", lambda: Base._lookup_request(NS, [1], "")),
    ("timeout", lambda: check_timeout(0, 1.0)),
    ("timeout", lambda: check_timeout(float("inf"), 1.0)),
    ("token must be", lambda: Offline("127.0.0.1:1", token="has space")),
    ("prefetch", lambda: Offline("127.0.0.1:1", prefetch=0)),
    ("target", lambda: Offline("")),
    ("unsupported scheme", lambda: Offline("http://127.0.0.1:1")),
    ("private_key", lambda: TLSOptions(certificate_chain=b"pem")),
]


@pytest.mark.parametrize(
    ("message", "call"), BAD_CALLS, ids=[f"{i}-{m}" for i, (m, _) in enumerate(BAD_CALLS)]
)
def test_bad_arguments_raise_invalid_argument(message: str, call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgument, match=message):
        call()


def test_lookup_request() -> None:
    req = Base._lookup_request(NS, range(10), "chat-1")
    assert list(req.token_ids) == list(range(10)) and req.session_id == "chat-1"
    assert Base._lookup_request(NS, [], None).session_id == ""


def test_targets_and_metadata() -> None:
    assert parse_target("127.0.0.1:5", None) == ("127.0.0.1:5", None)
    assert parse_target("grpc://h:5", None) == ("h:5", None)
    address, tls = parse_target("grpcs://h:5", None)
    assert address == "h:5" and tls == TLSOptions()
    client = Offline("grpc://127.0.0.1:5", token="t0k3n", timeout=2.5, retry=RetryPolicy.none())
    assert client._call_kwargs(None) == {"timeout": 2.5, "metadata": (("authorization", "Bearer t0k3n"),)}
    assert client._call_kwargs(0.5)["timeout"] == 0.5
    assert "t0k3n" not in repr(client)
    assert Offline("127.0.0.1:5")._call_kwargs(None)["metadata"] == ()
    assert "key" not in repr(TLSOptions(certificate_chain=b"c", private_key=b"secret-key"))
    assert "secret-key" not in repr(TLSOptions(certificate_chain=b"c", private_key=b"secret-key"))


def info_msg(key: str, data: bytes) -> pb.GetChunkResponse:
    digest = xxhash.xxh3_128_digest(data)
    return pb.GetChunkResponse(info=pb.ChunkInfo(key=key, total_bytes=len(data), digest=digest))


KEY = "c" * 64


@pytest.mark.parametrize("verify", [False, True])
def test_assembler_joins_parts(verify: bool) -> None:
    data = bytes(range(256)) * 10
    asm = ChunkAssembler(KEY, verify=verify)
    first = info_msg(KEY, data)
    first.data = data[:1000]
    asm.feed(first)
    asm.feed(pb.GetChunkResponse(data=data[1000:2000]))
    asm.feed(pb.GetChunkResponse(data=data[2000:]))
    assert asm.result() == data


def feed_all(asm: ChunkAssembler, msgs: list[pb.GetChunkResponse]) -> bytes:
    for m in msgs:
        asm.feed(m)
    return asm.result()


BAD_STREAMS: list[tuple[str, list[pb.GetChunkResponse]]] = [
    ("did not start", [pb.GetChunkResponse(data=b"abc")]),
    ("did not start", [info_msg("d" * 64, b"abc")]),
    ("truncated", [info_msg(KEY, b"abcdef"), pb.GetChunkResponse(data=b"abc")]),
    ("truncated", []),
    ("more bytes", [info_msg(KEY, b"abc"), pb.GetChunkResponse(data=b"abcd")]),
    ("info repeated", [info_msg(KEY, b"abc"), info_msg(KEY, b"abc")]),
]


@pytest.mark.parametrize(("message", "msgs"), BAD_STREAMS, ids=[f"{i}" for i in range(len(BAD_STREAMS))])
def test_assembler_rejects_bad_streams(message: str, msgs: list[pb.GetChunkResponse]) -> None:
    with pytest.raises(ChunkCorrupt, match=message):
        feed_all(ChunkAssembler(KEY), msgs)


def test_assembler_verifies_digest_when_asked() -> None:
    first = info_msg(KEY, b"abc")
    first.data = b"abd"
    assert feed_all(ChunkAssembler(KEY, verify=False), [first]) == b"abd"  # length-only check
    with pytest.raises(ChunkCorrupt, match="digest"):
        feed_all(ChunkAssembler(KEY, verify=True), [first])


def test_uploads_use_full_parts_within_the_api_limit() -> None:
    header, view = Base._put_chunk_header(NS, "", 0, [1], bytes(3 * PART_BYTES), raw_bytes=1, ttl_s=0)
    sizes = [len(m.data) for m in put_chunk_messages(header, view)]
    assert sizes == [UPLOAD_PART_BYTES] * (3 * PART_BYTES // UPLOAD_PART_BYTES)
    assert UPLOAD_PART_BYTES <= PART_BYTES


def test_payload_views_are_flat_and_checked() -> None:
    import array

    ints = array.array("I", range(10))
    assert payload_view(memoryview(ints)).nbytes == 40 and payload_view(memoryview(ints)).format == "B"
    with pytest.raises(InvalidArgument, match="contiguous"):
        payload_view(memoryview(b"abcdef")[::2])
    header, _ = Base._put_chunk_header(NS, "", 0, [1], b"abc", raw_bytes=1, ttl_s=0)
    assert len(header.digest) == 16  # XXH3-128, cheap enough to compute inline in both clients
