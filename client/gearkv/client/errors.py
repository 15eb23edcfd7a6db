"""The one exception tree of the GearKV SDK.

Every failure of a store call reaches the caller as one of these; ``grpc.RpcError`` is translated in
exactly one place (``gearkv.client._base.map_rpc_errors``) with ``raise ... from err``, so the original
status stays available as ``__cause__``; a value the API contract forbids
(:class:`gearkv.api.errors.InvalidField`) is raised as ``InvalidArgument`` before anything is sent.
This module imports neither grpc nor redis.

::

    GearKVError                      root of everything GearKV raises on purpose (gearkv.api.errors;
    │                                gearkv.codec.CodecError derives from it too)
    └── KVStoreError                 a store call failed (.code = gRPC status name or None)
        ├── KVStoreUnavailable       UNAVAILABLE, CANCELLED: store/Redis unreachable (retried)
        │   └── KVStoreOverloaded    RESOURCE_EXHAUSTED from load shedding (retried)
        ├── KVStoreTimeout           DEADLINE_EXCEEDED: the call's deadline passed (retried)
        ├── InvalidArgument          INVALID_ARGUMENT, OUT_OF_RANGE; also raised before sending
        │                            (subclass of ValueError too)
        ├── Unauthenticated          UNAUTHENTICATED: missing or unknown bearer token
        ├── PermissionDenied         PERMISSION_DENIED
        ├── NotFound                 NOT_FOUND
        │   ├── ChunkNotFound        a chunk was never written, expired or was evicted
        │   └── SessionNotFound      no manifest for that session id
        ├── DataCorrupt              DATA_LOSS: stored data failed its check (never served)
        │   ├── ChunkCorrupt         a chunk, or one that fails the client's digest check
        │   └── SessionCorrupt       a session's manifest or bookkeeping
        ├── VersionConflict          ABORTED (and ALREADY_EXISTS): someone else committed first
        │   └── TurnInProgress       ABORTED from begin_turn: another worker runs a turn of the session
        ├── PreconditionFailed       FAILED_PRECONDITION: the manifest names a missing chunk
        ├── QuotaExceeded            RESOURCE_EXHAUSTED naming the tenant's byte quota
        ├── KVStoreInternalError     UNKNOWN, INTERNAL, UNIMPLEMENTED: a bug on one side
        └── ClientClosed             the client was closed (no call is sent; never retried)

Example::

    try:
        blob = client.get_chunk(key)
    except ChunkNotFound:
        blob = None  # recompute this part of the prefix
"""

from __future__ import annotations

from gearkv.api.errors import GearKVError

__all__ = [
    "ChunkCorrupt",
    "ChunkNotFound",
    "ClientClosed",
    "DataCorrupt",
    "GearKVError",
    "InvalidArgument",
    "KVStoreError",
    "KVStoreInternalError",
    "KVStoreOverloaded",
    "KVStoreTimeout",
    "KVStoreUnavailable",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "QuotaExceeded",
    "SessionCorrupt",
    "SessionNotFound",
    "TurnInProgress",
    "Unauthenticated",
    "VersionConflict",
]


class KVStoreError(GearKVError):
    """A store call failed.

    Attributes:
        code: the gRPC status name (e.g. ``"NOT_FOUND"``), or None when the SDK raised it itself.
        details: the server's (or the SDK's) message, free of internals by contract.
    """

    def __init__(self, details: str, *, code: str | None = None) -> None:
        super().__init__(f"{code}: {details}" if code else details)
        self.code = code
        self.details = details


class KVStoreUnavailable(KVStoreError):
    """The store or its Redis could not be reached; idempotent calls are retried with backoff."""


class KVStoreOverloaded(KVStoreUnavailable):
    """The store shed the request (too many in flight); retried with backoff like UNAVAILABLE."""


class KVStoreTimeout(KVStoreError):
    """The call's deadline passed; its outcome is unknown, so only idempotent calls are retried."""


class InvalidArgument(KVStoreError, ValueError):
    """A field is empty, too long, malformed or out of range; the message names it and the limit."""


class Unauthenticated(KVStoreError):
    """The bearer token is missing or unknown."""


class PermissionDenied(KVStoreError):
    """The token is valid but may not do this."""


class NotFound(KVStoreError):
    """The named object does not exist (or belongs to another tenant)."""


class ChunkNotFound(NotFound):
    """The chunk was never written, expired or was evicted: recompute from this point."""


class SessionNotFound(NotFound):
    """No manifest exists for the session id."""


class DataCorrupt(KVStoreError):
    """DATA_LOSS: stored or transferred bytes failed their check; never served, treat as a miss."""


class ChunkCorrupt(DataCorrupt):
    """A chunk failed its checksum (in the store or in transfer); never served, treat as a miss."""


class SessionCorrupt(DataCorrupt):
    """The session's stored manifest or bookkeeping is damaged; the session cannot be trusted."""


class VersionConflict(KVStoreError):
    """The manifest's version moved on (someone else committed): re-read and retry."""


class TurnInProgress(VersionConflict):
    """Another holder's turn lease on the session is live (``begin_turn``); retry after it."""


class PreconditionFailed(KVStoreError):
    """The commit references a chunk that does not exist; nothing changed."""


class QuotaExceeded(KVStoreError):
    """The tenant's byte quota is used up; nothing was written. Not retried."""


class KVStoreInternalError(KVStoreError):
    """UNKNOWN, INTERNAL or UNIMPLEMENTED: a bug or a version mismatch between SDK and store."""


class ClientClosed(KVStoreError):
    """A call on a client after its ``close()`` (or its ``with`` block): nothing was sent."""
