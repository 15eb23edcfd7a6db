"""The one place where generated v1 protobuf messages and the SDK's dataclasses meet (pure)."""

from __future__ import annotations

from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.client._models import (
    ChatMessage,
    ChunkRef,
    Manifest,
    Namespace,
    PrefixMatch,
    PutChunkResult,
    SessionSummary,
    StoreStats,
    TurnStart,
)


def namespace_to_pb(ns: Namespace) -> pb.Namespace:
    return pb.Namespace(fingerprint=ns.fingerprint, codec_id=ns.codec_id, chunk_size=ns.chunk_size)


def namespace_from_pb(msg: pb.Namespace) -> Namespace:
    return Namespace(fingerprint=msg.fingerprint, codec_id=msg.codec_id, chunk_size=msg.chunk_size)


def chunk_ref_to_pb(ref: ChunkRef) -> pb.ChunkRef:
    return pb.ChunkRef(
        key=ref.key, start=ref.start, end=ref.end, stored_bytes=ref.stored_bytes, raw_bytes=ref.raw_bytes
    )


def chunk_ref_from_pb(msg: pb.ChunkRef) -> ChunkRef:
    return ChunkRef(
        key=msg.key, start=msg.start, end=msg.end, stored_bytes=msg.stored_bytes, raw_bytes=msg.raw_bytes
    )


def manifest_to_pb(m: Manifest) -> pb.Manifest:
    return pb.Manifest(
        session_id=m.session_id,
        namespace=namespace_to_pb(m.namespace),
        token_ids=m.token_ids,
        chunks=[chunk_ref_to_pb(c) for c in m.chunks],
        messages=[pb.ChatMessage(role=x.role, content=x.content) for x in m.messages],
        turns=m.turns,
        version=m.version,
        created_ms=m.created_ms,
        updated_ms=m.updated_ms,
        raw_bytes=m.raw_bytes,
        stored_bytes=m.stored_bytes,
        attributes=dict(m.attributes),
    )


def manifest_from_pb(msg: pb.Manifest) -> Manifest:
    return Manifest(
        session_id=msg.session_id,
        namespace=namespace_from_pb(msg.namespace),
        token_ids=tuple(msg.token_ids),
        chunks=tuple(chunk_ref_from_pb(c) for c in msg.chunks),
        messages=tuple(ChatMessage(role=x.role, content=x.content) for x in msg.messages),
        turns=msg.turns,
        version=msg.version,
        created_ms=msg.created_ms,
        updated_ms=msg.updated_ms,
        raw_bytes=msg.raw_bytes,
        stored_bytes=msg.stored_bytes,
        attributes=dict(msg.attributes),
    )


def prefix_match_from_pb(msg: pb.LookupPrefixResponse) -> PrefixMatch:
    return PrefixMatch(
        chunks=tuple(chunk_ref_from_pb(c) for c in msg.chunks),
        matched_tokens=msg.matched_tokens,
        session_version=msg.session_version,
        reason=msg.reason,
    )


def turn_start_from_pb(msg: pb.BeginTurnResponse) -> TurnStart:
    return TurnStart(
        version=msg.version,
        manifest=manifest_from_pb(msg.manifest) if msg.HasField("manifest") else None,
        abandoned_turn=msg.abandoned_turn,
        abandoned_holder=msg.abandoned_holder,
    )


def put_result_from_pb(msg: pb.PutChunkResponse) -> PutChunkResult:
    return PutChunkResult(key=msg.key, deduplicated=msg.deduplicated, stored_bytes=msg.stored_bytes)


def session_summary_from_pb(msg: pb.SessionSummary) -> SessionSummary:
    return SessionSummary(
        session_id=msg.session_id,
        version=msg.version,
        turns=msg.turns,
        tokens=msg.tokens,
        raw_bytes=msg.raw_bytes,
        stored_bytes=msg.stored_bytes,
        updated_ms=msg.updated_ms,
    )


def stats_from_pb(msg: pb.GetStatsResponse) -> StoreStats:
    return StoreStats(
        tenant=msg.tenant,
        sessions=msg.sessions,
        chunks=msg.chunks,
        raw_bytes=msg.raw_bytes,
        stored_bytes=msg.stored_bytes,
        quota_bytes=msg.quota_bytes,
        backend_used_memory_bytes=msg.backend_used_memory_bytes,
        backend=msg.backend,
        manifest_bytes=msg.manifest_bytes,
    )
