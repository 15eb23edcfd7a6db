"""Raw-gRPC helpers for store tests (no SDK): build and send chunks and manifests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence

import grpc
from gearkv.api.digest import payload_digest
from gearkv.api.keys import ChunkSpan, Namespace, chain
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc

PART = 1 << 20
Metadata = Sequence[tuple[str, str]]


def ns_proto(ns: Namespace) -> pb.Namespace:
    return pb.Namespace(fingerprint=ns.fingerprint, codec_id=ns.codec_id, chunk_size=ns.chunk_size)


def payload_for(span: ChunkSpan, size: int, salt: bytes = b"") -> bytes:
    """Deterministic pseudo-random bytes for a chunk (so a read-back can be checked bit-exactly)."""
    return hashlib.shake_256(span.key.encode() + b"/" + salt).digest(size)


def random_payload(size: int) -> bytes:
    return os.urandom(size)


def put_requests(
    ns: Namespace,
    span: ChunkSpan,
    token_ids: Sequence[int],
    payload: bytes,
    *,
    raw_bytes: int | None = None,
    ttl_s: int = 0,
    part: int = PART,
    digest: bytes | None = None,
) -> list[pb.PutChunkRequest]:
    header = pb.PutChunkHeader(
        key=span.key,
        parent_key=span.parent_key,
        namespace=ns_proto(ns),
        start=span.start,
        end=span.end,
        token_ids=list(token_ids[span.start : span.end]),
        total_bytes=len(payload),
        raw_bytes=len(payload) * 4 if raw_bytes is None else raw_bytes,
        digest=payload_digest(payload) if digest is None else digest,
        ttl_s=ttl_s,
    )
    parts = [payload[i : i + part] for i in range(0, len(payload), part)] or [b""]
    return [pb.PutChunkRequest(header=header, data=parts[0])] + [
        pb.PutChunkRequest(data=p) for p in parts[1:]
    ]


def put_chunk(
    stub: pb_grpc.KVStoreStub,
    md: Metadata,
    ns: Namespace,
    span: ChunkSpan,
    token_ids: Sequence[int],
    payload: bytes,
    **kwargs: object,
) -> pb.PutChunkResponse:
    reqs = put_requests(ns, span, token_ids, payload, **kwargs)  # type: ignore[arg-type]
    reply: pb.PutChunkResponse = stub.PutChunk(iter(reqs), metadata=md, timeout=30)
    return reply


def get_chunk(stub: pb_grpc.KVStoreStub, md: Metadata, key: str) -> tuple[pb.ChunkInfo, bytes]:
    info = None
    data = bytearray()
    for msg in stub.GetChunk(pb.GetChunkRequest(key=key), metadata=md, timeout=30):
        if msg.HasField("info"):
            info = msg.info
        assert len(msg.data) <= PART
        data += msg.data
    assert info is not None
    return info, bytes(data)


def push_session(
    stub: pb_grpc.KVStoreStub,
    md: Metadata,
    ns: Namespace,
    token_ids: Sequence[int],
    *,
    size: int = 1000,
    ttl_s: int = 0,
) -> list[ChunkSpan]:
    """Put every chunk (full ones and the tail) covering ``token_ids``; returns the spans."""
    spans = chain(ns, token_ids)
    for span in spans:
        put_chunk(stub, md, ns, span, token_ids, payload_for(span, size), ttl_s=ttl_s)
    return spans


def manifest(
    session_id: str, ns: Namespace, token_ids: Sequence[int], spans: Sequence[ChunkSpan], *, turns: int = 1
) -> pb.Manifest:
    return pb.Manifest(
        session_id=session_id,
        namespace=ns_proto(ns),
        token_ids=list(token_ids),
        chunks=[
            pb.ChunkRef(key=s.key, start=s.start, end=s.end, stored_bytes=1000, raw_bytes=4000) for s in spans
        ],
        messages=[pb.ChatMessage(role="user", content="hi")],
        turns=turns,
    )


def commit(
    stub: pb_grpc.KVStoreStub,
    md: Metadata,
    m: pb.Manifest,
    expected_version: int,
    commit_id: str,
    ttl_s: int = 0,
) -> int:
    reply = stub.CommitTurn(
        pb.CommitTurnRequest(manifest=m, expected_version=expected_version, commit_id=commit_id, ttl_s=ttl_s),
        metadata=md,
        timeout=30,
    )
    return int(reply.version)


def code_of(fn: object, *args: object, **kwargs: object) -> grpc.StatusCode:
    """Call ``fn`` and return the status code it failed with (OK when it succeeded)."""
    try:
        result = fn(*args, **kwargs)  # type: ignore[operator]
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def stub_for(address: str) -> tuple[grpc.Channel, pb_grpc.KVStoreStub]:
    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)],
    )
    return channel, pb_grpc.KVStoreStub(channel)
