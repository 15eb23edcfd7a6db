"""KVStoreClient: the blocking client (channel lifecycle + thin methods over ``_base``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from gearkv.client._retry import call_with_retry
from gearkv.client.errors import (
    ChunkNotFound,
    KVStoreError,
    NotFound,
    SessionNotFound,
    TurnInProgress,
    VersionConflict,
)


@dataclass(frozen=True)
class _Started:
    """A download already in flight: a GetSmallChunk future (``small``) or a GetChunk stream."""

    small: bool
    call: Any


class KVStoreClient(KVStoreClientBase):
    """Blocking client of the GearKV store.

    Every call has a deadline (``timeout`` seconds, overridable per call) and idempotent calls are
    retried per ``retry`` with jittered backoff. Errors are :mod:`gearkv.client.errors` exceptions.

    Example::

        with KVStoreClient("127.0.0.1:50051", token="t0k3n") as client:
            put = client.put_chunk(ns, "", token_ids[:256], blob, start=0, raw_bytes=raw)
            assert client.get_chunk(put.key) == blob

    ``KVStoreClient.from_env()`` reads the target, token and timeout from ``GEARKV_STORE``,
    ``GEARKV_TOKEN`` and ``GEARKV_STORE_TIMEOUT_S``.

    Args:
        target: ``host:port``, ``grpc://host:port``, ``grpcs://host:port`` or a gRPC target:
            ``dns:///host:port`` (calls spread round robin over every address it resolves to),
            ``unix:/path``, ``unix:///abs/path``, ``ipv4:a:port,b:port``, ``ipv6:[::1]:port``.
        token: the tenant's bearer token.
        timeout: default deadline of a call in seconds, retries and backoff included (for
            ``get_chunks``: of each chunk's download).
        tls: TLS / mutual TLS options (implied with system roots by ``grpcs://``).
        retry: retry policy for idempotent calls (default: 3 attempts on UNAVAILABLE/DEADLINE).
        verify_digest: recompute each pulled chunk's XXH3-128 digest (default; ~0.03 ms per MiB).
        prefetch: how many chunk downloads ``get_chunks`` keeps in flight.
        channel_options: extra gRPC channel arguments ``(name, value)``, applied after the SDK's
            own (same name: yours wins), e.g. ``[("grpc.lb_policy_name", "pick_first")]``.
    """

    def _open(self) -> None:
        options = self._channel_options()
        if self._tls is None:
            self._channel = grpc.insecure_channel(self._address, options=options)
        else:
            self._channel = grpc.secure_channel(self._address, self._tls.credentials(), options=options)
        self._open_stub = wire.kvstore_stub(self._channel)

    @property
    def _stub(self) -> Any:
        self._check_open()
        return self._open_stub

    def close(self) -> None:
        """Close the channel; later calls raise ClientClosed. Closing twice is harmless."""
        self._closed = True
        self._channel.close()

    def ping(self, *, timeout: float | None = None) -> bool:
        """True when the store answers its gRPC health check as SERVING.

        Raises KVStoreUnavailable when it cannot be reached or reports NOT_SERVING (e.g. its Redis
        is down), KVStoreTimeout when it does not answer in time. Not retried: a probe.
        """
        from grpc_health.v1 import health_pb2_grpc

        self._check_open()
        with map_rpc_errors():
            response = health_pb2_grpc.HealthStub(self._channel).Check(
                self._health_request(), **self._call_kwargs(timeout)
            )
        return self._parse_health(response)

    def __enter__(self) -> KVStoreClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- chunks ---------------------------------------------------------------------------------

    @overload
    def put_chunk(
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
    def put_chunk(
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

    def put_chunk(
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

        The key is ``keys.chunk_key(ns, parent_key, start, token_ids)``; the result carries it.
        ``start`` (required): the chunk's first token position, a multiple of ``ns.chunk_size``;
        ``raw_bytes`` (required): the same KV's uncompressed 16-bit size; ``ttl_s``: 0 = the store's
        default. All three are keywords. The old form ``put_chunk(ns, parent_key, start, token_ids,
        data, raw_bytes, ttl_s)`` still works for one release, with a DeprecationWarning.
        """
        start, token_ids, data, raw_bytes, ttl_s = self._put_args(
            args, start, token_ids, data, raw_bytes, ttl_s
        )
        header, view = self._put_chunk_header(ns, parent_key, start, token_ids, data, raw_bytes, ttl_s)
        deadline = self._deadline(timeout)

        def attempt(_: int) -> PutChunkResult:
            kwargs = self._attempt_kwargs(deadline)
            with map_rpc_errors(deadline=deadline):
                if len(view) <= PART_BYTES:
                    return self.parse_put(self._stub.PutSmallChunk(wire.PutPart(header, view), **kwargs))
                return self.parse_put(self._stub.PutChunk(put_chunk_messages(header, view), **kwargs))

        return call_with_retry(self._retry, attempt, deadline=deadline)

    def get_chunk(self, key: str, *, timeout: float | None = None) -> bytes:
        """Download one chunk's bytes. Raises ChunkNotFound (missing/expired) or ChunkCorrupt."""
        return self._get_chunk(key, timeout, None)

    def get_chunks(self, keys: Iterable[str], *, timeout: float | None = None) -> Iterator[bytes]:
        """Download chunks in order, keeping ``prefetch`` calls in flight (pipelined).

        Stops with ChunkNotFound/ChunkCorrupt at the first chunk that cannot be served.
        """
        keys = [check_key(k) for k in keys]
        kwargs = self._call_kwargs(timeout)
        started: deque[tuple[str, _Started]] = deque()
        pending = iter(keys)

        def start_next() -> None:
            for key in pending:
                request = pb.GetChunkRequest(key=key)
                if self._use_small_get():
                    call = _Started(True, self._stub.GetSmallChunk.future(request, **kwargs))
                else:
                    call = _Started(False, self._stub.GetChunk(request, **kwargs))
                started.append((key, call))
                return

        try:
            for _ in range(self._prefetch):
                start_next()
            while started:
                key, call = started.popleft()
                start_next()
                yield self._get_chunk(key, timeout, call)
        finally:
            for _, call in started:
                call.call.cancel()

    def _get_chunk(self, key: str, timeout: float | None, first_call: _Started | None) -> bytes:
        request = self._get_chunk_request(key)
        deadline = self._deadline(timeout)

        def attempt(n: int) -> bytes:
            kwargs = self._attempt_kwargs(deadline)
            started = first_call if n == 0 else None
            if started is None and self._use_small_get():
                started = _Started(True, self._stub.GetSmallChunk.future(request, **kwargs))
            if started is not None and started.small:
                try:
                    with map_rpc_errors(ChunkNotFound):
                        part = started.call.result()
                    return self._small_chunk(key, part)
                except KVStoreError as err:
                    if not self._small_get_refused(err):
                        raise
                started = None
            assembler = self._assembler(key)
            with map_rpc_errors(ChunkNotFound):
                call = started.call if started is not None else self._stub.GetChunk(request, **kwargs)
                for msg in call:
                    assembler.feed(msg)
            return self._streamed(assembler.result())

        return call_with_retry(self._retry, attempt, deadline=deadline)

    # ---- prefix, commit, sessions ---------------------------------------------------------------

    def lookup_prefix(
        self,
        ns: Namespace,
        token_ids: Sequence[int],
        session_id: str | None = None,
        *,
        timeout: float | None = None,
    ) -> PrefixMatch:
        """Longest stored prefix of ``token_ids`` (the session's manifest first, then the chain)."""
        request = self._lookup_request(ns, token_ids, session_id)
        return self.parse_lookup(self._unary(self._stub.LookupPrefix, request, timeout))

    def commit_turn(
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
        """Compare-and-set the session's manifest; returns the new version.

        Raises VersionConflict (someone else committed) or PreconditionFailed (a chunk is missing).
        Retries reuse one ``commit_id`` (a fresh uuid4 when not given), so they are harmless. With
        ``holder`` the commit is refused while another holder's turn lease is live; ``lease_id`` (this
        turn's lease, see :meth:`begin_turn`) is given back by the commit.
        """
        request = self._commit_request(manifest, expected_version, commit_id, ttl_s, holder, lease_id)
        response: pb.CommitTurnResponse = self._unary(self._stub.CommitTurn, request, timeout)
        return response.version

    def begin_turn(
        self,
        session_id: str,
        *,
        holder: str,
        lease_id: str,
        lease_ms: int = 0,
        known_version: int = 0,
        timeout: float | None = None,
    ) -> TurnStart:
        """Take (or renew) the session's turn lease and read its version, and its manifest if that
        is not ``known_version``. Raises TurnInProgress while another holder's lease is live."""
        request = self._begin_turn_request(session_id, holder, lease_id, lease_ms, known_version)
        try:
            response = self._unary(self._stub.BeginTurn, request, timeout)
        except VersionConflict as exc:
            raise TurnInProgress(exc.details, code=exc.code) from exc
        return self.parse_turn_start(response)

    def end_turn(self, session_id: str, lease_id: str, *, timeout: float | None = None) -> None:
        """Give a turn lease back without a commit (a no-op if it is no longer the session's)."""
        self._unary(self._stub.EndTurn, self._end_turn_request(session_id, lease_id), timeout)

    def get_session(self, session_id: str, *, timeout: float | None = None) -> Manifest:
        """The session's manifest (refreshes its TTL). Raises SessionNotFound."""
        request = self._get_session_request(session_id)
        response: pb.GetSessionResponse = self._unary(
            self._stub.GetSession, request, timeout, SessionNotFound
        )
        return self.parse_manifest(response.manifest)

    def list_sessions(
        self, page_size: int = 100, *, timeout: float | None = None
    ) -> Iterator[SessionSummary]:
        """All of the tenant's sessions ordered by id; pages are fetched as the iterator advances."""
        request = self._list_request(page_size, "")
        while True:
            page: pb.ListSessionsResponse = self._unary(self._stub.ListSessions, request, timeout)
            yield from map(self.parse_summary, page.sessions)
            if not page.next_page_token:
                return
            request = self._list_request(page_size, page.next_page_token)

    def delete_session(self, session_id: str, *, timeout: float | None = None) -> None:
        """Delete the session's manifest. Raises SessionNotFound (unless a retry hit an earlier delete)."""
        request = self._delete_session_request(session_id)
        kwargs = self._call_kwargs(timeout)

        def attempt(n: int) -> None:
            try:
                with map_rpc_errors(SessionNotFound):
                    self._stub.DeleteSession(request, **kwargs)
            except SessionNotFound:
                if n == 0:
                    raise  # on a retry, NOT_FOUND means our lost first attempt did delete it

        call_with_retry(self._retry, attempt)

    def stats(self, *, timeout: float | None = None) -> StoreStats:
        """Usage figures of the caller's tenant and the backend."""
        return self.parse_stats(self._unary(self._stub.GetStats, pb.GetStatsRequest(), timeout))

    def _unary(
        self, method: Any, request: Any, timeout: float | None, not_found: type[NotFound] = NotFound
    ) -> Any:
        deadline = self._deadline(timeout)

        def attempt(_: int) -> Any:
            with map_rpc_errors(not_found):
                return method(request, **self._attempt_kwargs(deadline))

        return call_with_retry(self._retry, attempt, deadline=deadline)
