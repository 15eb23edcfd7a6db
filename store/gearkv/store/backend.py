"""The storage interface the servicer talks to and its plain data types (no storage layout here:
each backend keeps its own, e.g. ``gearkv.store.redis_keys``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gearkv.api.records import SessionSummary

# A retry of one of a session's last COMMIT_IDS_KEPT commits replays the version it produced; an
# older one answers as a stale expected_version (a bounded window keeps long sessions small).
COMMIT_IDS_KEPT = 16


@dataclass(frozen=True)
class CommitOutcome:
    """``applied`` False means the commit id was seen before and ``version`` is what it produced."""

    version: int
    applied: bool


@dataclass(frozen=True)
class ManifestMark:
    """A compact record of a session's current manifest, kept (and compared) by the commit that wrote it.

    Chunk keys are chained (each hashes its parent's key and every token before it, and a manifest's
    chunks are validated to chain), so a new manifest whose chunk ``i`` has the key the current one
    has at ``i`` shares the current manifest's chunks ``0..i``. The mark keeps the current manifest's
    last two keys: its last chunk (a turn appended after it) and the one before (a turn whose first
    full chunk superseded the last, partial one). ``verified_ms`` is when every chunk of the manifest
    was last checked to exist and given a fresh TTL (the store's clock).
    """

    chunks: int
    last_key: str
    prev_key: str
    created_ms: int
    verified_ms: int

    def encode(self) -> str:
        return f"{self.chunks}:{self.created_ms}:{self.verified_ms}:{self.last_key}:{self.prev_key}"

    @classmethod
    def decode(cls, text: str) -> ManifestMark | None:
        """The mark ``encode`` wrote, or None for anything else (then a commit verifies every chunk)."""
        parts = text.split(":")
        if len(parts) != 5 or not all(p.isdigit() for p in parts[:3]):
            return None
        return cls(int(parts[0]), parts[3], parts[4], int(parts[1]), int(parts[2]))

    @classmethod
    def of(cls, keys: Sequence[str], created_ms: int, verified_ms: int) -> ManifestMark:
        """The mark of a manifest whose chunk keys are ``keys``."""
        last = keys[-1] if keys else ""
        prev = keys[-2] if len(keys) > 1 else ""
        return cls(len(keys), last, prev, created_ms, verified_ms)


@dataclass(frozen=True)
class SessionHead:
    """A session's version and its manifest's mark (None for a manifest written without one)."""

    version: int
    mark: ManifestMark | None


@dataclass(frozen=True)
class TurnStart:
    """What BeginTurn learns: the session's version, its manifest (None when unchanged or absent) and
    whether an earlier turn's lease expired uncommitted (``abandoned_holder`` held it)."""

    version: int
    manifest: bytes | None
    abandoned: bool = False
    abandoned_holder: str = ""


@dataclass(frozen=True)
class TenantUsage:
    sessions: int
    chunks: int
    raw_bytes: int
    stored_bytes: int
    manifest_bytes: int = 0


class Backend(Protocol):
    """Async storage operations; every failure surfaces as a ``gearkv.store.errors.StoreError``.

    Raises (any method): BackendUnavailable after bounded retries; ResourceExhausted when the
    backend is out of memory.
    """

    kind: str

    async def put_chunk(
        self,
        tenant: str,
        key: str,
        value: bytes | bytearray,
        *,
        stored: int,
        raw: int,
        ttl_ms: int,
        quota: int,
    ) -> bool:
        """Store a chunk value unless it exists (then refresh its TTL); True when deduplicated.

        Raises ResourceExhausted when a new chunk would push the tenant over ``quota`` (0 = none).
        """
        ...

    async def get_chunk(self, tenant: str, key: str, ttl_ms: int) -> bytes | None:
        """The chunk's stored value (TTL refreshed), or None when missing/expired/evicted."""
        ...

    async def discard_chunk(self, tenant: str, key: str) -> None:
        """Delete a chunk found corrupt, so that a re-upload can replace it."""
        ...

    async def touch_chunks_nonatomic(
        self, tenant: str, keys: Sequence[str], ttl_ms: int, *, stop_at_missing: bool
    ) -> list[bool]:
        """Refresh TTLs; True for each key that exists (may stop early after the first False)."""
        ...

    async def chunk_sizes(self, tenant: str, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        """(stored, raw) bytes of each chunk as accounted at write time; None where unknown."""
        ...

    async def get_session(self, tenant: str, session_id: str, ttl_ms: int) -> bytes | None:
        """The manifest value (TTLs refreshed), or None."""
        ...

    async def session_head(self, tenant: str, session_id: str) -> SessionHead | None:
        """The session's version and manifest mark without its manifest; None when there is no session."""
        ...

    async def begin_turn(
        self,
        tenant: str,
        session_id: str,
        *,
        holder: str,
        lease_id: str,
        lease_ms: int,
        known_version: int,
        ttl_ms: int,
    ) -> TurnStart:
        """Take or renew the session's turn lease (raises Aborted while another holder's is live)."""
        ...

    async def end_turn(self, tenant: str, session_id: str, lease_id: str) -> None:
        """Give the lease back if it is still ``lease_id`` (an abandoned mark outlives it)."""
        ...

    async def commit_session(
        self,
        tenant: str,
        session_id: str,
        *,
        expected_version: int,
        commit_id: str,
        manifest: bytes,
        summary: SessionSummary,
        ttl_ms: int,
        mark: ManifestMark,
        base: ManifestMark | None = None,
        holder: str = "",
        lease_id: str = "",
        quota: int = 0,
        digest: str = "",
    ) -> CommitOutcome:
        """Compare-and-set the manifest (and its ``mark``); gives back ``lease_id`` when it is the session's
        lease. ``base`` is the mark the caller read and relied on: the commit applies only while it is
        still the session's mark. The manifest's bytes are charged to the tenant (its latest manifest
        replaces the previous charge). ``digest`` identifies the request's content: a retry of
        ``commit_id`` with the same digest replays its version.

        Raises Aborted on a version mismatch, a changed ``base``, or (with a ``holder``) while another
        holder's lease is live; ResourceExhausted when a larger manifest would pass ``quota`` (0 =
        none); FailedPrecondition when ``commit_id`` was used for other content.
        """
        ...

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        """Remove the manifest; False when it did not exist."""
        ...

    async def list_sessions(self, tenant: str, after: str, limit: int) -> tuple[list[SessionSummary], str]:
        """Up to ``limit`` live sessions with ids > ``after``; returns them and the next page token."""
        ...

    async def usage(self, tenant: str) -> TenantUsage: ...

    async def sweep(self, tenant: str) -> None:
        """Release the bookkeeping of data that expired or was evicted (quota charges, the session
        index): run periodically by the server, so it goes with the data even when no one asks."""
        ...

    async def used_bytes(self, tenant: str) -> int:
        """Bytes charged to the tenant's quota now (chunks and manifests), expired data released."""
        ...

    async def used_memory(self) -> int: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
