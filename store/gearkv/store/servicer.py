"""KVStore RPC handlers: validate, translate protobuf to ``Backend`` calls, translate back.

Handlers raise ``StoreError`` subclasses; the interceptor turns them into status codes. Auth, load
shedding, metrics of every call and the never-UNKNOWN guarantee live in ``interceptors.py``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from gearkv.api import wire
from gearkv.api.digest import PayloadHasher
from gearkv.api.limits import PART_BYTES
from gearkv.api.records import SessionSummary
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc
from gearkv.store import validation
from gearkv.store.backend import Backend, ManifestMark
from gearkv.store.chunk_format import CorruptValue, decode_value, encode_header
from gearkv.store.commits import plan_commit
from gearkv.store.config import StoreConfig
from gearkv.store.context import current_tenant
from gearkv.store.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from gearkv.store.fairness import UploadBuffer
from gearkv.store.metrics import StoreMetrics
from gearkv.store.prefix import match_prefix

log = logging.getLogger("gearkv.store")
_MAX_VERSION = 2**53 - 2  # versions travel through Lua numbers (doubles)


def _now_ms() -> int:
    return int(time.time() * 1000)


class KVStoreServicer(pb_grpc.KVStoreServicer):
    """The KVStore service over a ``Backend``."""

    def __init__(self, cfg: StoreConfig, backend: Backend, metrics: StoreMetrics) -> None:
        self._cfg = cfg
        self._backend = backend
        self._metrics = metrics
        self._uploads = UploadBuffer.for_store(cfg)

    async def _check_quota_room(self, tenant: str, key: str, nbytes: int, quota: int) -> None:
        """Refuse an upload the quota cannot take (unless the chunk is stored: it would deduplicate)."""
        used = await self._backend.used_bytes(tenant)
        if used + nbytes <= quota:
            return
        if (
            await self._backend.touch_chunks_nonatomic(
                tenant, [key], self._chunk_ttl_ms(), stop_at_missing=True
            )
        )[0]:
            return
        self._metrics.quota_rejections.labels(tenant=tenant).inc()
        raise ResourceExhausted(
            f"tenant byte quota of {quota} bytes cannot take a {nbytes}-byte chunk ({used} bytes used); "
            "nothing was read"
        )

    def _chunk_ttl_ms(self, ttl_s: int = 0) -> int:
        return validation.ttl_ms(ttl_s, self._cfg.default_chunk_ttl_s, self._cfg.max_chunk_ttl_s)

    def _session_ttl_ms(self, ttl_s: int = 0) -> int:
        return validation.ttl_ms(ttl_s, self._cfg.default_session_ttl_s, self._cfg.max_session_ttl_s)

    async def _load_manifest(self, tenant: str, session_id: str) -> pb.Manifest | None:
        raw = await self._backend.get_session(tenant, session_id, self._session_ttl_ms())
        return None if raw is None else self._decode_manifest(raw)

    def _decode_manifest(self, raw: bytes) -> pb.Manifest:
        try:
            return validation.decode_manifest(raw)
        except DataLoss:
            self._metrics.integrity_failures.labels(where="manifest").inc()
            log.warning("stored manifest failed its integrity check")
            raise

    # -- chunks -------------------------------------------------------------------------------------

    async def PutChunk(
        self,
        request_iterator: AsyncIterator[wire.PutPart | pb.PutChunkRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.PutChunkResponse:
        tenant = current_tenant()
        header: pb.PutChunkHeader | None = None
        total = received = reserved = 0
        # The stored value is the format header followed by the parts (views of the received
        # messages), joined once at the end; the digest is computed as parts arrive (XXH3: ~0.03 ms
        # per MiB), so the payload is copied once and hashed once.
        pieces: list[bytes | bytearray | memoryview] = []
        hasher = PayloadHasher()
        digest = b""
        quota = self._cfg.quota_for(tenant)
        try:
            async for msg in request_iterator:
                req = wire.PutPart.of(msg)
                if header is None:
                    if req.header is None:
                        raise InvalidArgument("the first PutChunkRequest must carry header")
                    header = req.header
                    meta = validation.put_header(header, self._cfg.max_chunk_bytes, tenant)
                    total, digest = meta.stored_bytes, meta.digest
                    if quota:  # refuse at the header what the quota cannot take, before any data
                        await self._check_quota_room(tenant, header.key, total, quota)
                    self._uploads.reserve(tenant, total)
                    reserved = total
                    pieces.append(encode_header(meta))
                elif req.header is not None:
                    raise InvalidArgument("header must appear only in the first PutChunkRequest")
                part = req.data
                if len(part) > PART_BYTES:
                    raise InvalidArgument(
                        f"data part of {len(part)} bytes exceeds the {PART_BYTES}-byte limit"
                    )
                received += len(part)
                if received > total:
                    raise InvalidArgument(f"data exceeds header.total_bytes ({total})")
                hasher.update(part)
                pieces.append(part)
            if header is None:
                raise InvalidArgument("empty stream: the first PutChunkRequest must carry header")
            if received != total:
                raise InvalidArgument(f"received {received} data bytes; header.total_bytes is {total}")
            if hasher.digest() != digest:
                self._metrics.integrity_failures.labels(where="upload").inc()
                raise DataLoss(
                    "payload does not match header.digest (damaged in transit); nothing was stored"
                )
            value = b"".join(pieces)
            pieces.clear()
            dedup = await self._backend.put_chunk(
                tenant,
                header.key,
                value,
                stored=total,
                raw=header.raw_bytes,
                ttl_ms=self._chunk_ttl_ms(header.ttl_s),
                quota=quota,
            )
            del value
        finally:
            pieces.clear()
            if reserved:
                self._uploads.release(tenant, reserved)
        if dedup:
            self._metrics.chunks_deduplicated.inc()
        else:
            self._metrics.chunks_written.inc()
            self._metrics.stored_bytes.inc(total)
            self._metrics.raw_bytes.inc(header.raw_bytes)
        return pb.PutChunkResponse(key=header.key, deduplicated=dedup, stored_bytes=total)

    async def PutSmallChunk(
        self, request: wire.PutPart | pb.PutChunkRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutChunkResponse:
        """PutChunk in one message (the SDK's path for chunks of at most 1 MiB)."""
        req = wire.PutPart.of(request)
        if req.header is not None and req.header.total_bytes > PART_BYTES:
            raise InvalidArgument(
                f"header.total_bytes must be <= {PART_BYTES} for PutSmallChunk (use PutChunk to stream)"
            )

        async def one() -> AsyncIterator[wire.PutPart]:
            yield req

        return await self.PutChunk(one(), context)

    async def _load_chunk(self, key: str) -> tuple[pb.ChunkInfo, memoryview]:
        """The chunk's info and verified payload (a view of the Redis value); a corrupt one is discarded."""
        tenant = current_tenant()
        key = validation.key(key, "key")
        value = await self._backend.get_chunk(tenant, key, self._chunk_ttl_ms())
        if value is None:
            raise NotFound("chunk not found (never written, expired or evicted)")
        try:
            meta, payload = decode_value(value, tenant, key)
        except CorruptValue as exc:
            self._metrics.integrity_failures.labels(where="storage").inc()
            log.warning("stored chunk failed its integrity check (%s); discarding it", exc)
            await self._backend.discard_chunk(tenant, key)
            raise DataLoss("stored chunk failed its integrity check; it was discarded") from None
        ns = meta.namespace
        info = pb.ChunkInfo(
            key=key,
            total_bytes=meta.stored_bytes,
            raw_bytes=meta.raw_bytes,
            digest=meta.digest,
            namespace=pb.Namespace(
                fingerprint=ns.fingerprint, codec_id=ns.codec_id, chunk_size=ns.chunk_size
            ),
            start=meta.start,
            end=meta.end,
        )
        return info, payload

    async def GetChunk(  # type: ignore[override]  # yields wire.GetPart, serialized by server.add_kvstore
        self, request: pb.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wire.GetPart]:
        """Stream the verified payload as views of the Redis value (``wire`` copies each part once)."""
        info, payload = await self._load_chunk(request.key)
        self._metrics.bytes_served.inc(len(payload))
        part = self._cfg.download_part_bytes
        yield wire.GetPart(info, payload[:part])
        for lo in range(part, len(payload), part):
            yield wire.GetPart(None, payload[lo : lo + part])

    async def GetSmallChunk(  # type: ignore[override]  # returns wire.GetPart (see GetChunk)
        self, request: pb.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> wire.GetPart:
        """GetChunk in one message; FAILED_PRECONDITION for a chunk over 1 MiB (the caller streams it)."""
        info, payload = await self._load_chunk(request.key)
        if len(payload) > PART_BYTES:
            raise FailedPrecondition(
                f"chunk is {len(payload)} bytes; GetSmallChunk serves up to {PART_BYTES} (use GetChunk)"
            )
        self._metrics.bytes_served.inc(len(payload))
        return wire.GetPart(info, payload)

    # -- lookup -------------------------------------------------------------------------------------

    async def LookupPrefix(
        self, request: pb.LookupPrefixRequest, context: grpc.aio.ServicerContext
    ) -> pb.LookupPrefixResponse:
        tenant = current_tenant()
        ns = validation.namespace(request.namespace, request.HasField("namespace"))
        validation.token_count(len(request.token_ids), "token_ids")
        if request.session_id:
            validation.session_id(request.session_id)
        tokens = request.token_ids  # not list()ed: 30-60 ms for a million ids, on the event loop
        manifest = None
        if request.session_id:
            manifest = await self._load_manifest(tenant, request.session_id)
        found = await match_prefix(self._backend, tenant, ns, tokens, manifest, self._chunk_ttl_ms())
        matched = found.matched
        outcome = "hit" if tokens and matched == len(tokens) else ("partial" if matched else "miss")
        self._metrics.lookups.labels(outcome=outcome, reason=found.reason or "none").inc()
        return pb.LookupPrefixResponse(
            chunks=found.chunks,
            matched_tokens=matched,
            session_version=manifest.version if manifest is not None else 0,
            reason=found.reason,
        )

    # -- sessions -----------------------------------------------------------------------------------

    async def CommitTurn(
        self, request: pb.CommitTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitTurnResponse:
        tenant = current_tenant()
        if not request.HasField("manifest"):
            raise InvalidArgument("manifest is required")
        m = request.manifest
        validation.manifest(m)
        commit_id = validation.commit_id(request.commit_id)
        holder = validation.optional_id(request.holder, "holder")
        lease_id = validation.optional_id(request.lease_id, "lease_id")
        expected = request.expected_version
        if expected > _MAX_VERSION:
            raise InvalidArgument(f"expected_version must be <= {_MAX_VERSION}")
        keys = [c.key for c in m.chunks]
        now = _now_ms()
        head = await self._backend.session_head(tenant, m.session_id) if expected else None
        plan = plan_commit(head, expected, keys, now, self._cfg.default_chunk_ttl_s * 500)
        found = await self._backend.touch_chunks_nonatomic(
            tenant, keys[plan.verify_from :], self._chunk_ttl_ms(), stop_at_missing=True
        )
        if False in found:
            i = plan.verify_from + found.index(False)
            raise FailedPrecondition(f"manifest.chunks[{i}] (key {keys[i]}) is not stored; upload it first")
        created = plan.created_ms
        if created is None:  # a session committed before marks: its manifest has the creation time
            current = await self._load_manifest(tenant, m.session_id)
            created = current.created_ms if current is not None and current.version == expected else now
        new = pb.Manifest()
        new.CopyFrom(m)
        new.version = expected + 1
        new.created_ms = created
        new.updated_ms = now
        new.raw_bytes = sum(c.raw_bytes for c in m.chunks)
        new.stored_bytes = sum(c.stored_bytes for c in m.chunks)
        summary = SessionSummary(
            session_id=m.session_id,
            version=new.version,
            turns=m.turns,
            tokens=len(m.token_ids),
            raw_bytes=new.raw_bytes,
            stored_bytes=new.stored_bytes,
            updated_ms=now,
        )
        outcome = await self._backend.commit_session(
            tenant,
            m.session_id,
            expected_version=expected,
            commit_id=commit_id,
            manifest=validation.encode_manifest(new),
            summary=summary,
            ttl_ms=self._session_ttl_ms(request.ttl_s),
            mark=ManifestMark.of(keys, created, plan.verified_ms),
            base=plan.base,
            holder=holder,
            lease_id=lease_id,
            quota=self._cfg.quota_for(tenant),
            digest=_request_digest(m),
        )
        return pb.CommitTurnResponse(version=outcome.version)

    async def BeginTurn(
        self, request: pb.BeginTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.BeginTurnResponse:
        tenant = current_tenant()
        session_id = validation.session_id(request.session_id)
        holder = validation.commit_id(request.holder, "holder")
        lease_id = validation.commit_id(request.lease_id, "lease_id")
        lease_ms = validation.lease_ms(request.lease_ms)
        if request.known_version > _MAX_VERSION:
            raise InvalidArgument(f"known_version must be <= {_MAX_VERSION}")
        start = await self._backend.begin_turn(
            tenant,
            session_id,
            holder=holder,
            lease_id=lease_id,
            lease_ms=lease_ms,
            known_version=request.known_version,
            ttl_ms=self._session_ttl_ms(),
        )
        response = pb.BeginTurnResponse(
            version=start.version,
            abandoned_turn=start.abandoned,
            abandoned_holder=start.abandoned_holder,
        )
        if start.manifest is not None:
            response.manifest.CopyFrom(self._decode_manifest(start.manifest))
        return response

    async def EndTurn(
        self, request: pb.EndTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.EndTurnResponse:
        tenant = current_tenant()
        session_id = validation.session_id(request.session_id)
        lease_id = validation.commit_id(request.lease_id, "lease_id")
        await self._backend.end_turn(tenant, session_id, lease_id)
        return pb.EndTurnResponse()

    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSessionResponse:
        tenant = current_tenant()
        manifest = await self._load_manifest(tenant, validation.session_id(request.session_id))
        if manifest is None:
            raise NotFound("session not found")
        return pb.GetSessionResponse(manifest=manifest)

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        tenant = current_tenant()
        limit = validation.page_size(request.page_size)
        if request.page_token:
            validation.session_id(request.page_token, "page_token")
        sessions, token = await self._backend.list_sessions(tenant, request.page_token, limit)
        return pb.ListSessionsResponse(
            sessions=[
                pb.SessionSummary(
                    session_id=s.session_id,
                    version=s.version,
                    turns=s.turns,
                    tokens=s.tokens,
                    raw_bytes=s.raw_bytes,
                    stored_bytes=s.stored_bytes,
                    updated_ms=s.updated_ms,
                )
                for s in sessions
            ],
            next_page_token=token,
        )

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSessionResponse:
        tenant = current_tenant()
        if not await self._backend.delete_session(tenant, validation.session_id(request.session_id)):
            raise NotFound("session not found")
        return pb.DeleteSessionResponse()

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        tenant = current_tenant()
        usage = await self._backend.usage(tenant)
        return pb.GetStatsResponse(
            tenant=tenant,
            sessions=usage.sessions,
            chunks=usage.chunks,
            raw_bytes=usage.raw_bytes,
            stored_bytes=usage.stored_bytes,
            manifest_bytes=usage.manifest_bytes,
            quota_bytes=self._cfg.quota_for(tenant),
            backend_used_memory_bytes=await self._backend.used_memory() if len(self._cfg.tenants) <= 1 else 0,
            backend=self._backend.kind,
        )


def _request_digest(m: pb.Manifest) -> str:
    """What a commit id stands for: a retry with the same manifest replays, other content is refused."""
    return hashlib.blake2b(m.SerializeToString(deterministic=True), digest_size=16).hexdigest()
