"""AsyncKVStoreClient: the asyncio twin of KVStoreClient (grpc.aio channel + thin coroutines)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any, overload

import grpc
from gearkv.api import wire
from gearkv.api.limits import PART_BYTES
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.client._base import (
    BytesLike,
    KVStoreClientBase,
    check_key,
    deprecated,
    map_rpc_errors,
    put_chunk_messages,
)
from gearkv.client._models import (
    Manifest,
    Namespace,
    PrefixMatch,
    PutChunkResult,
    SessionSummary,
    StoreStats,
    TurnStart,
)
from gearkv.client._retry import acall_with_retry
from gearkv.client.errors import (
    ChunkNotFound,
    KVStoreError,
    NotFound,
    SessionNotFound,
    TurnInProgress,
    VersionConflict,
)


class AsyncKVStoreClient(KVStoreClientBase):
    """Asyncio client of the GearKV store; same options, methods and errors as KVStoreClient.

    The grpc.aio channel is opened on first use, inside the running event loop; use one client per
    event loop. ``AsyncKVStoreClient.from_env()`` reads ``GEARKV_STORE``, ``GEARKV_TOKEN`` and
    ``GEARKV_STORE_TIMEOUT_S``.

    Example::

        async with AsyncKVStoreClient("127.0.0.1:50051", token="t0k3n") as client:
            match = await client.lookup_prefix(ns, token_ids, session_id="chat-42")
            blobs = [b async for b in client.get_chunks(c.key for c in match.chunks)]
    """

    _channel: grpc.aio.Channel | None = None

    def _open(self) -> None:
        self._channel = None

    def _open_channel(self) -> grpc.aio.Channel:
        self._check_open()
        if self._channel is None:
            options = self._channel_options()
            if self._tls is None:
                self._channel = grpc.aio.insecure_channel(self._address, options=options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._address, self._tls.credentials(), options=options
                )
            self._astub = wire.kvstore_stub(self._channel)
        return self._channel

    def _stub(self) -> Any:
        self._open_channel()
        return self._astub

    async def close(self) -> None:
        """Close the channel; later calls raise ClientClosed. Closing twice is harmless."""
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def ping(self, *, timeout: float | None = None) -> bool:
        """True when the store answers its health check as SERVING (see KVStoreClient.ping)."""
        from grpc_health.v1 import health_pb2_grpc

        channel = self._open_channel()
        with map_rpc_errors():
            response = await health_pb2_grpc.HealthStub(channel).Check(
                self._health_request(), **self._call_kwargs(timeout)
            )
        return self._parse_health(response)

    async def __aenter__(self) -> AsyncKVStoreClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- chunks ---------------------------------------------------------------------------------

    @overload
    async def put_chunk(
        self,
        ns: Namespace,
        parent_key: str,
        token_ids: Sequence[int],
        data: BytesLike,
        *,
        start: int,
        raw_bytes: int,
        ttl_s: int = 0,
        timeout: float | None = None,
    ) -> PutChunkResult: ...

    @overload
    @deprecated(  # a literal: type checkers read it
        "put_chunk(ns, parent_key, start, token_ids, data, ...) is deprecated: "
        "call put_chunk(ns, parent_key, token_ids, data, start=..., raw_bytes=..., ttl_s=...)"
    )
    async def put_chunk(
        self,
        ns: Namespace,
        parent_key: str,
        start: int,
        /,
        token_ids: Sequence[int],
        data: BytesLike,
        raw_bytes: int = ...,
        ttl_s: int = ...,
        *,
        timeout: float | None = None,
    ) -> PutChunkResult: ...

    async def put_chunk(
        self,
        ns: Namespace,
        parent_key: str,
        *args: Any,
        start: int | None = None,
        token_ids: Sequence[int] | None = None,
        data: BytesLike | None = None,
        raw_bytes: int | None = None,
        ttl_s: int | None = None,
        timeout: float | None = None,
    ) -> PutChunkResult:
        """Upload one chunk (one message up to 1 MiB, else streamed in parts); idempotent, so retried.

        ``start``, ``raw_bytes`` and ``ttl_s`` are keywords (see KVStoreClient.put_chunk)."""
        start, token_ids, data, raw_bytes, ttl_s = self._put_args(
            args, start, token_ids, data, raw_bytes, ttl_s
        )
        header, view = self._put_chunk_header(ns, parent_key, start, token_ids, data, raw_bytes, ttl_s)
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> PutChunkResult:
            kwargs = self._attempt_kwargs(deadline)
            with map_rpc_errors(deadline=deadline):
                if len(view) <= PART_BYTES:
                    response = await self._stub().PutSmallChunk(wire.PutPart(header, view), **kwargs)
                else:
                    response = await self._stub().PutChunk(put_chunk_messages(header, view), **kwargs)
            return self.parse_put(response)

        return await acall_with_retry(self._retry, attempt, deadline=deadline)

    async def get_chunk(self, key: str, *, timeout: float | None = None) -> bytes:
        """Download one chunk's bytes. Raises ChunkNotFound (missing/expired) or ChunkCorrupt."""
        request = self._get_chunk_request(key)
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> bytes:
            kwargs = self._attempt_kwargs(deadline)
            if self._use_small_get():
                try:
                    with map_rpc_errors(ChunkNotFound):
                        part = await self._stub().GetSmallChunk(request, **kwargs)
                    return self._small_chunk(key, part)
                except KVStoreError as err:
                    if not self._small_get_refused(err):
                        raise
            assembler = self._assembler(key)
            with map_rpc_errors(ChunkNotFound):
                async for msg in self._stub().GetChunk(request, **kwargs):
                    assembler.feed(msg)
            return self._streamed(assembler.result())

        return await acall_with_retry(self._retry, attempt, deadline=deadline)

    async def get_chunks(self, keys: Iterable[str], *, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Download chunks concurrently (at most ``prefetch`` at a time) and yield them in order.

        Stops with ChunkNotFound/ChunkCorrupt at the first chunk that cannot be served; downloads
        still in flight are cancelled.
        """
        pending = iter([check_key(k) for k in keys])
        running: deque[asyncio.Task[bytes]] = deque()

        def start_next() -> None:
            for key in pending:
                running.append(asyncio.ensure_future(self.get_chunk(key, timeout=timeout)))
                return

        try:
            for _ in range(self._prefetch):
                start_next()
            while running:
                data = await running[0]
                running.popleft()
                start_next()
                yield data
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    # ---- prefix, commit, sessions ---------------------------------------------------------------

    async def lookup_prefix(
        self,
        ns: Namespace,
        token_ids: Sequence[int],
        session_id: str | None = None,
        *,
        timeout: float | None = None,
    ) -> PrefixMatch:
        """Longest stored prefix of ``token_ids`` (the session's manifest first, then the chain)."""
        request = self._lookup_request(ns, token_ids, session_id)
        return self.parse_lookup(await self._unary("LookupPrefix", request, timeout))

    async def commit_turn(
        self,
        manifest: Manifest,
        expected_version: int,
        commit_id: str | None = None,
        ttl_s: int = 0,
        *,
        holder: str = "",
        lease_id: str = "",
        timeout: float | None = None,
    ) -> int:
        """Compare-and-set the session's manifest; returns the new version (see KVStoreClient)."""
        request = self._commit_request(manifest, expected_version, commit_id, ttl_s, holder, lease_id)
        response: pb.CommitTurnResponse = await self._unary("CommitTurn", request, timeout)
        return response.version

    async def begin_turn(
        self,
        session_id: str,
        *,
        holder: str,
        lease_id: str,
        lease_ms: int = 0,
        known_version: int = 0,
        timeout: float | None = None,
    ) -> TurnStart:
        """Take (or renew) the session's turn lease (see KVStoreClient.begin_turn)."""
        request = self._begin_turn_request(session_id, holder, lease_id, lease_ms, known_version)
        try:
            response = await self._unary("BeginTurn", request, timeout)
        except VersionConflict as exc:
            raise TurnInProgress(exc.details, code=exc.code) from exc
        return self.parse_turn_start(response)

    async def end_turn(self, session_id: str, lease_id: str, *, timeout: float | None = None) -> None:
        """Give a turn lease back without a commit (see KVStoreClient.end_turn)."""
        await self._unary("EndTurn", self._end_turn_request(session_id, lease_id), timeout)

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> Manifest:
        """The session's manifest (refreshes its TTL). Raises SessionNotFound."""
        request = self._get_session_request(session_id)
        response: pb.GetSessionResponse = await self._unary("GetSession", request, timeout, SessionNotFound)
        return self.parse_manifest(response.manifest)

    async def list_sessions(
        self, page_size: int = 100, *, timeout: float | None = None
    ) -> AsyncIterator[SessionSummary]:
        """All of the tenant's sessions ordered by id; pages are fetched as the iterator advances."""
        request = self._list_request(page_size, "")
        while True:
            page: pb.ListSessionsResponse = await self._unary("ListSessions", request, timeout)
            for summary in page.sessions:
                yield self.parse_summary(summary)
            if not page.next_page_token:
                return
            request = self._list_request(page_size, page.next_page_token)

    async def delete_session(self, session_id: str, *, timeout: float | None = None) -> None:
        """Delete the session's manifest. Raises SessionNotFound (unless a retry hit an earlier delete)."""
        request = self._delete_session_request(session_id)
        kwargs = self._call_kwargs(timeout)

        async def attempt(n: int) -> None:
            try:
                with map_rpc_errors(SessionNotFound):
                    await self._stub().DeleteSession(request, **kwargs)
            except SessionNotFound:
                if n == 0:
                    raise  # on a retry, NOT_FOUND means our lost first attempt did delete it

        await acall_with_retry(self._retry, attempt)

    async def stats(self, *, timeout: float | None = None) -> StoreStats:
        """Usage figures of the caller's tenant and the backend."""
        return self.parse_stats(await self._unary("GetStats", pb.GetStatsRequest(), timeout))

    async def _unary(
        self, method: str, request: Any, timeout: float | None, not_found: type[NotFound] = NotFound
    ) -> Any:
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> Any:
            with map_rpc_errors(not_found):
                return await getattr(self._stub(), method)(request, **self._attempt_kwargs(deadline))

        return await acall_with_retry(self._retry, attempt, deadline=deadline)
