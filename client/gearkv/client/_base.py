"""Everything the sync and async clients share that does no I/O.

Request building and validation, multi-part stream generators, response parsing and the one
translation of ``grpc.RpcError`` into the SDK's exception tree (:func:`map_rpc_errors`). The clients in
``_sync`` and ``_async`` add only channel lifecycle and thin methods that call the one generated stub.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

import grpc
from gearkv.api import limits
from gearkv.api.digest import payload_digest
from gearkv.api.errors import raising_as
from gearkv.api.keys import chunk_key
from gearkv.api.limits import MAX_CHUNK_BYTES, MAX_PAGE_SIZE, MAX_TOKENS, MAX_U32, MAX_U64, PART_BYTES
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.wire import GetPart, PutPart
from gearkv.client import _convert
from gearkv.client._models import Manifest, Namespace
from gearkv.client._options import (
    BALANCED_SCHEMES,
    CHANNEL_OPTIONS,
    ROUND_ROBIN,
    ChannelOption,
    TLSOptions,
    parse_target,
)
from gearkv.client._retry import RetryPolicy
from gearkv.client.errors import (
    ChunkCorrupt,
    ChunkNotFound,
    ClientClosed,
    DataCorrupt,
    InvalidArgument,
    KVStoreError,
    KVStoreInternalError,
    KVStoreOverloaded,
    KVStoreTimeout,
    KVStoreUnavailable,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    QuotaExceeded,
    SessionCorrupt,
    SessionNotFound,
    Unauthenticated,
    VersionConflict,
)

# The API's limits (PART_BYTES: one stream part) live in gearkv.api.limits. What the SDK sends: against
# a trivial grpc.aio server 256 KiB parts cost less CPU per MiB than 1 MiB parts, but against the real
# store (per-part checks, hashing, buffer appends) the total CPU per MiB of client + store came out the
# same, so uploads use the API's maximum: fewest messages.
UPLOAD_PART_BYTES = PART_BYTES
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KVStore"].full_name  # what ping() health-checks
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_PREFETCH = 4

# The environment that from_env() reads: the same names as `gearkv worker`'s --store, --token and
# --store-timeout flags.
ENV_STORE = "GEARKV_STORE"
ENV_TOKEN = "GEARKV_TOKEN"
ENV_TIMEOUT = "GEARKV_STORE_TIMEOUT_S"

BytesLike = bytes | bytearray | memoryview

if TYPE_CHECKING:
    from typing_extensions import deprecated as deprecated
else:

    def deprecated(_message: str) -> Any:  # marks an overload for type checkers only (PEP 702)
        return lambda fn: fn


PUT_CHUNK_POSITIONAL_START = (
    "put_chunk(ns, parent_key, start, token_ids, data, ...) is deprecated: "
    "call put_chunk(ns, parent_key, token_ids, data, start=..., raw_bytes=..., ttl_s=...)"
)

# --------------------------------------------------------------------------------------------------
# Error translation: the only place grpc.RpcError becomes a GearKV exception.

_STATUS_ERRORS: dict[grpc.StatusCode, type[KVStoreError]] = {
    grpc.StatusCode.CANCELLED: KVStoreUnavailable,
    grpc.StatusCode.UNKNOWN: KVStoreInternalError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: KVStoreTimeout,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: VersionConflict,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: KVStoreOverloaded,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailed,
    grpc.StatusCode.ABORTED: VersionConflict,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNIMPLEMENTED: KVStoreInternalError,
    grpc.StatusCode.INTERNAL: KVStoreInternalError,
    grpc.StatusCode.UNAVAILABLE: KVStoreUnavailable,
    grpc.StatusCode.DATA_LOSS: DataCorrupt,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


_CORRUPT: dict[type[NotFound], type[DataCorrupt]] = {
    ChunkNotFound: ChunkCorrupt,
    SessionNotFound: SessionCorrupt,
}


def error_for_status(
    code: grpc.StatusCode | None, details: str, not_found: type[NotFound] = NotFound
) -> KVStoreError:
    """The SDK exception for a gRPC status (pure; ``not_found`` names what the call looked up).

    RESOURCE_EXHAUSTED means either load shedding (retried) or a tenant quota (not retried); the
    store's message names the quota in the second case.
    """
    details = details or "(no details)"
    if code is None:
        return KVStoreInternalError(details, code=None)
    cls = _STATUS_ERRORS.get(code, KVStoreInternalError)
    if cls is NotFound:
        cls = not_found
    elif cls is DataCorrupt:  # damaged data of the kind the call looked up
        cls = _CORRUPT.get(not_found, DataCorrupt)
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in details.lower():
        cls = QuotaExceeded
    return cls(details, code=code.name)


@contextmanager
def map_rpc_errors(not_found: type[NotFound] = NotFound, deadline: float | None = None) -> Iterator[None]:
    """Translate ``grpc.RpcError`` (sync and aio alike) raised inside the block, ``raise ... from``.

    ``deadline`` (``time.monotonic()``): when a streaming upload's deadline expires while grpc.aio is
    writing a message, grpc reports INTERNAL ("Failed execute_batch") instead of DEADLINE_EXCEEDED;
    any INTERNAL/UNKNOWN/CANCELLED after the deadline is reported as the timeout it is.
    """
    try:
        yield
    except grpc.RpcError as err:
        code = err.code() if callable(getattr(err, "code", None)) else None
        details = err.details() if callable(getattr(err, "details", None)) else None
        if deadline is not None and code in _LATE_CODES and time.monotonic() >= deadline:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            details = "deadline exceeded while sending the request"
        raise error_for_status(code, details or "", not_found) from err


_LATE_CODES = (None, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)


# --------------------------------------------------------------------------------------------------
# Validation: the contract's checks (gearkv.api.limits), raising the SDK's InvalidArgument.

check_key = raising_as(InvalidArgument, limits.check_key)
check_session_id = raising_as(InvalidArgument, limits.check_session_id)
check_id = raising_as(InvalidArgument, limits.check_id)  # a commit id, lease id or lease holder
check_uint = raising_as(InvalidArgument, limits.check_uint)
check_token_ids = raising_as(InvalidArgument, limits.check_token_ids)
check_lease_ms = raising_as(InvalidArgument, limits.check_lease_ms)


def check_channel_options(options: Sequence[ChannelOption]) -> tuple[ChannelOption, ...]:
    """Extra gRPC channel arguments: ``(name, value)`` pairs, name a str, value an int or str."""
    out = []
    for option in options:
        if (
            not isinstance(option, tuple | list)
            or len(option) != 2
            or not isinstance(option[0], str)
            or isinstance(option[1], bool)
            or not isinstance(option[1], int | str)
        ):
            raise InvalidArgument(
                "channel_options must be (name, value) pairs: a str name, an int or str value"
            )
        out.append((option[0], option[1]))
    return tuple(out)


def check_timeout(timeout: float | None, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise InvalidArgument("timeout must be a positive, finite number of seconds")
    return float(timeout)


def payload_view(data: BytesLike) -> memoryview:
    """A flat byte view of a chunk payload (no copy), checked against the API's size limits."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument("data must be bytes, bytearray or memoryview")
    view = memoryview(data)
    if not view.c_contiguous:
        raise InvalidArgument("data must be a contiguous buffer")
    view = view.cast("B")
    check_uint(len(view), "data length", MAX_CHUNK_BYTES, low=1)
    return view


# --------------------------------------------------------------------------------------------------
# Multi-part streams: pure generators and an assembler shared by both clients.


def split_parts(data: memoryview, part_bytes: int = PART_BYTES) -> Iterator[memoryview]:
    """Zero-copy views of ``data`` in order, each at most ``part_bytes`` long (none when empty)."""
    for offset in range(0, len(data), part_bytes):
        yield data[offset : offset + part_bytes]


def put_chunk_messages(
    header: pb.PutChunkHeader, data: memoryview, part_bytes: int = UPLOAD_PART_BYTES
) -> Iterator[PutPart]:
    """The request stream of one upload: header with the first part, then the remaining parts.

    Parts are views of the caller's buffer; ``gearkv.api.wire`` copies each once onto the wire.
    """
    parts = split_parts(data, part_bytes)
    yield PutPart(header, next(parts, memoryview(b"")))
    for part in parts:
        yield PutPart(None, part)


class ChunkAssembler:
    """Collects a GetChunk response stream into the chunk's bytes, checking what the server promised.

    The first message must carry ``info`` for the requested key; the parts must add up to
    ``info.total_bytes``; with ``verify`` (the default) the XXH3-128 digest is recomputed, so a chunk
    damaged anywhere between Redis and the caller is refused (~0.03 ms per MiB).
    """

    def __init__(self, key: str, *, verify: bool = True) -> None:
        self._key = key
        self._verify = verify
        self._info: pb.ChunkInfo | None = None
        self._parts: list[bytes | bytearray | memoryview] = []
        self._received = 0

    def feed(self, msg: GetPart | pb.GetChunkResponse) -> None:
        part = GetPart.of(msg)
        if self._info is None:
            if part.info is None or part.info.key != self._key:
                raise ChunkCorrupt(f"chunk {self._key[:16]}: stream did not start with its info")
            self._info = part.info
        elif part.info is not None:
            raise ChunkCorrupt(f"chunk {self._key[:16]}: info repeated mid-stream")
        if len(part.data):
            self._received += len(part.data)
            if self._received > self._info.total_bytes:
                raise ChunkCorrupt(f"chunk {self._key[:16]}: more bytes than info.total_bytes")
            self._parts.append(part.data)

    def result(self) -> bytes:
        """The chunk as one ``bytes`` (the parts are copied into it once)."""
        info = self._info
        if info is None or self._received != info.total_bytes:
            raise ChunkCorrupt(f"chunk {self._key[:16]}: stream ended early (truncated)")
        data = b"".join(self._parts)
        if self._verify and payload_digest(data) != info.digest:
            raise ChunkCorrupt(f"chunk {self._key[:16]}: digest mismatch after transfer")
        return data


# --------------------------------------------------------------------------------------------------


class KVStoreClientBase:
    """Options and no-I/O request/response logic shared by :class:`KVStoreClient` and its async twin."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: TLSOptions | None = None,
        retry: RetryPolicy | None = None,
        verify_digest: bool = True,
        prefetch: int = DEFAULT_PREFETCH,
        channel_options: Sequence[ChannelOption] = (),
    ) -> None:
        self._closed = False
        self._address, self._tls = parse_target(target, tls)
        self._extra_options = check_channel_options(channel_options)
        if token is not None and (not token or not all(0x21 <= ord(c) <= 0x7E for c in token)):
            raise InvalidArgument("token must be non-empty printable ASCII without spaces")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token is not None else ()
        )
        self._timeout = check_timeout(timeout, DEFAULT_TIMEOUT_S)
        self._retry = retry if retry is not None else RetryPolicy()
        self._verify = verify_digest
        self._prefetch = check_uint(prefetch, "prefetch", 64, low=1)
        # Downloads try GetSmallChunk (one message) until a chunk turns out bigger than 1 MiB, then
        # stream until a streamed chunk is small again; a store without it turns it off for good.
        self._small_gets = True
        self._small_gets_supported = True
        self._open()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Self:
        """A client configured by the environment (``os.environ`` unless ``environ`` is given).

        ``GEARKV_STORE`` (required): the target; ``GEARKV_TOKEN``: the bearer token;
        ``GEARKV_STORE_TIMEOUT_S``: the default deadline in seconds; the same variables as
        ``gearkv worker``. Keyword arguments (``tls=``, ``retry=``, ``channel_options=``, ...) are
        passed on and win over the environment. Raises InvalidArgument naming a missing or bad one.
        """
        env = os.environ if environ is None else environ
        if "target" not in kwargs:
            if not env.get(ENV_STORE):
                raise InvalidArgument(f"{ENV_STORE} is not set (the store's target, e.g. 127.0.0.1:50051)")
            kwargs["target"] = env[ENV_STORE]
        if "token" not in kwargs and env.get(ENV_TOKEN):
            kwargs["token"] = env[ENV_TOKEN]
        if "timeout" not in kwargs and env.get(ENV_TIMEOUT):
            try:
                kwargs["timeout"] = check_timeout(float(env[ENV_TIMEOUT]), DEFAULT_TIMEOUT_S)
            except (ValueError, InvalidArgument) as err:
                raise InvalidArgument(f"{ENV_TIMEOUT} must be a positive number of seconds") from err
        target = kwargs.pop("target")
        return cls(target, **kwargs)

    def _open(self) -> None:
        """Create the channel and stub (the sync client at once, the async one on first use)."""

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"{type(self).__name__} for {self._address} is closed")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (every call then raises ClientClosed)."""
        return self._closed

    def __repr__(self) -> str:  # the token never appears
        return f"{type(self).__name__}({self._address!r}, tls={self._tls is not None})"

    @property
    def target(self) -> str:
        return self._address

    def _channel_options(self) -> list[ChannelOption]:
        """The SDK's options, then TLS's, then the caller's; a later option replaces an earlier one
        of the same name (so ``channel_options`` can override the SDK's, e.g. the lb policy)."""
        tls = self._tls.channel_options() if self._tls else ()
        balanced = (ROUND_ROBIN,) if self._address.startswith(BALANCED_SCHEMES) else ()
        merged = dict([*CHANNEL_OPTIONS, *balanced, *tls, *self._extra_options])
        return list(merged.items())

    def _call_kwargs(self, timeout: float | None) -> dict[str, object]:
        return {"timeout": check_timeout(timeout, self._timeout), "metadata": self._metadata}

    def _deadline(self, timeout: float | None) -> float:
        """When a call of ``timeout`` seconds (retries included) must be over (``time.monotonic()``)."""
        return time.monotonic() + check_timeout(timeout, self._timeout)

    def _attempt_kwargs(self, deadline: float) -> dict[str, object]:
        """Call options of one attempt: what is left of the whole call's time."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise KVStoreTimeout("the call's timeout passed before this attempt", code="DEADLINE_EXCEEDED")
        return {"timeout": left, "metadata": self._metadata}

    # ---- requests ------------------------------------------------------------------------------

    @staticmethod
    def _put_args(
        args: tuple[Any, ...],
        start: int | None,
        token_ids: Sequence[int] | None,
        data: BytesLike | None,
        raw_bytes: int | None,
        ttl_s: int | None,
    ) -> tuple[int, Sequence[int], BytesLike, int, int]:
        """``start, token_ids, data, raw_bytes, ttl_s`` of a put_chunk call (positional ``args`` after
        ``parent_key``, then the keywords; ``None`` = not given).

        The form is ``put_chunk(ns, parent_key, token_ids, data, *, start, raw_bytes, ttl_s=0)``. An
        integer third argument is the old form ``put_chunk(ns, parent, start, ids, data, raw, ttl)``
        (``raw``/``ttl`` positional or keywords), deprecated and kept for one release.
        """
        values: dict[str, Any] = {
            "start": start,
            "token_ids": token_ids,
            "data": data,
            "raw_bytes": raw_bytes,
            "ttl_s": ttl_s,
        }
        legacy = bool(args) and isinstance(args[0], numbers.Integral)
        positional = ("start", "token_ids", "data", "raw_bytes", "ttl_s") if legacy else ("token_ids", "data")
        if len(args) > len(positional):
            raise TypeError(
                f"put_chunk() takes at most {len(positional) + 2} positional arguments after self "
                f"({len(args) + 2} given): start=, raw_bytes= and ttl_s= are keywords"
            )
        for name, value in zip(positional, args, strict=False):
            if values[name] is not None:
                raise TypeError(f"put_chunk() got multiple values for argument '{name}'")
            values[name] = value
        if legacy:
            warnings.warn(
                f"{PUT_CHUNK_POSITIONAL_START} (the old form goes in the next release)",
                DeprecationWarning,
                stacklevel=3,
            )
        for name in ("start", "token_ids", "data", "raw_bytes"):
            if values[name] is None:
                raise TypeError(f"put_chunk() missing required argument: '{name}'")
        return (
            values["start"],
            values["token_ids"],
            values["data"],
            values["raw_bytes"],
            0 if values["ttl_s"] is None else values["ttl_s"],
        )

    @staticmethod
    def _health_request() -> Any:
        from grpc_health.v1 import health_pb2

        return health_pb2.HealthCheckRequest(service=SERVICE_NAME)

    def _parse_health(self, response: Any) -> bool:
        from grpc_health.v1 import health_pb2

        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            raise KVStoreUnavailable(f"store {self._address} reports {status}", code=None)
        return True

    @staticmethod
    def _put_chunk_header(
        ns: Namespace,
        parent_key: str,
        start: int,
        token_ids: Sequence[int],
        data: BytesLike,
        raw_bytes: int,
        ttl_s: int,
    ) -> tuple[pb.PutChunkHeader, memoryview]:
        """Validate an upload and build its header (with the payload's XXH3-128 digest)."""
        if not isinstance(ns, Namespace):
            raise InvalidArgument("namespace must be a gearkv.client.Namespace")
        view = payload_view(data)
        ids = check_token_ids(token_ids, "token_ids", ns.chunk_size)
        check_uint(start, "start", MAX_U32)
        if start % ns.chunk_size:
            raise InvalidArgument(f"start must be a multiple of namespace.chunk_size ({ns.chunk_size})")
        check_uint(start + len(ids), "start + len(token_ids)", MAX_U32)
        check_uint(raw_bytes, "raw_bytes", MAX_U64)
        check_uint(ttl_s, "ttl_s", MAX_U32)
        try:
            key = chunk_key(ns, parent_key, start, ids)
        except (ValueError, TypeError) as err:
            raise InvalidArgument(str(err)) from err
        header = pb.PutChunkHeader(
            key=key,
            parent_key=parent_key,
            namespace=_convert.namespace_to_pb(ns),
            start=start,
            end=start + len(ids),
            token_ids=ids,
            total_bytes=len(view),
            raw_bytes=raw_bytes,
            digest=payload_digest(view),
            ttl_s=ttl_s,
        )
        return header, view

    @staticmethod
    def _get_chunk_request(key: str) -> pb.GetChunkRequest:
        return pb.GetChunkRequest(key=check_key(key))

    @staticmethod
    def _lookup_request(
        ns: Namespace, token_ids: Sequence[int], session_id: str | None
    ) -> pb.LookupPrefixRequest:
        if not isinstance(ns, Namespace):
            raise InvalidArgument("namespace must be a gearkv.client.Namespace")
        ids = check_token_ids(token_ids, "token_ids", MAX_TOKENS)
        sid = check_session_id(session_id) if session_id is not None else ""
        return pb.LookupPrefixRequest(namespace=_convert.namespace_to_pb(ns), token_ids=ids, session_id=sid)

    @staticmethod
    def _begin_turn_request(
        session_id: str, holder: str, lease_id: str, lease_ms: int, known_version: int
    ) -> pb.BeginTurnRequest:
        return pb.BeginTurnRequest(
            session_id=check_session_id(session_id),
            holder=check_id(holder, "holder"),
            lease_id=check_id(lease_id, "lease_id"),
            lease_ms=check_lease_ms(lease_ms),
            known_version=check_uint(known_version, "known_version", MAX_U64),
        )

    @staticmethod
    def _end_turn_request(session_id: str, lease_id: str) -> pb.EndTurnRequest:
        return pb.EndTurnRequest(
            session_id=check_session_id(session_id), lease_id=check_id(lease_id, "lease_id")
        )

    @staticmethod
    def _commit_request(
        manifest: Manifest,
        expected_version: int,
        commit_id: str | None,
        ttl_s: int,
        holder: str = "",
        lease_id: str = "",
    ) -> pb.CommitTurnRequest:
        if not isinstance(manifest, Manifest):
            raise InvalidArgument("manifest must be a gearkv.client.Manifest")
        check_session_id(manifest.session_id, "manifest.session_id")
        check_uint(expected_version, "expected_version", MAX_U64)
        check_uint(ttl_s, "ttl_s", MAX_U32)
        check_token_ids(manifest.token_ids, "manifest.token_ids", MAX_TOKENS)
        for i, ref in enumerate(manifest.chunks):
            check_key(ref.key, f"manifest.chunks[{i}].key")
        if commit_id is None:
            commit_id = uuid.uuid4().hex  # made once per call, so every retry reuses it
        else:
            check_id(commit_id, "commit_id")
        return pb.CommitTurnRequest(
            manifest=_convert.manifest_to_pb(manifest),
            expected_version=expected_version,
            commit_id=commit_id,
            ttl_s=ttl_s,
            holder=check_id(holder, "holder") if holder else "",
            lease_id=check_id(lease_id, "lease_id") if lease_id else "",
        )

    @staticmethod
    def _get_session_request(session_id: str) -> pb.GetSessionRequest:
        return pb.GetSessionRequest(session_id=check_session_id(session_id))

    @staticmethod
    def _delete_session_request(session_id: str) -> pb.DeleteSessionRequest:
        return pb.DeleteSessionRequest(session_id=check_session_id(session_id))

    @staticmethod
    def _list_request(page_size: int, page_token: str) -> pb.ListSessionsRequest:
        return pb.ListSessionsRequest(
            page_size=check_uint(page_size, "page_size", MAX_PAGE_SIZE, low=1), page_token=page_token
        )

    # ---- responses ------------------------------------------------------------------------------

    def _assembler(self, key: str) -> ChunkAssembler:
        return ChunkAssembler(key, verify=self._verify)

    def _use_small_get(self) -> bool:
        return self._small_gets and self._small_gets_supported

    def _small_get_refused(self, err: KVStoreError) -> bool:
        """Whether a GetSmallChunk error means "stream this chunk instead" (and switch to streaming)."""
        if isinstance(err, PreconditionFailed):  # the chunk is over 1 MiB
            self._small_gets = False
            return True
        if err.code == grpc.StatusCode.UNIMPLEMENTED.name:  # a store from before GetSmallChunk
            self._small_gets_supported = False
            return True
        return False

    def _streamed(self, data: bytes) -> bytes:
        if len(data) <= PART_BYTES:
            self._small_gets = True
        return data

    def _small_chunk(self, key: str, part: GetPart) -> bytes:
        assembler = self._assembler(key)
        assembler.feed(part)
        return assembler.result()

    parse_put = staticmethod(_convert.put_result_from_pb)
    parse_lookup = staticmethod(_convert.prefix_match_from_pb)
    parse_manifest = staticmethod(_convert.manifest_from_pb)
    parse_turn_start = staticmethod(_convert.turn_start_from_pb)
    parse_summary = staticmethod(_convert.session_summary_from_pb)
    parse_stats = staticmethod(_convert.stats_from_pb)
