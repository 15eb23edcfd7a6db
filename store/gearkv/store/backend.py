"""The storage interface the servicer talks to, its plain data types, and the Redis key layout.

Key layout (tenant names and session ids are validated, so they never contain braces):

    gkv:c:<tenant>:<chunk key>           one chunk value (no hash tag: chunks spread over all slots)
    gkv:s:{<tenant>:<session>}:m         the session's manifest             } one hash tag: a commit is
    gkv:s:{<tenant>:<session>}:h         version, last commit ids, summary  } a single-slot transaction
    gkv:s:{<tenant>:<session>}:l         the turn lease: holder, id, until, lost }
    gkv:t:{<tenant>}:sessions            sorted set of session ids (a superset; pruned lazily)
    gkv:t:{<tenant>}:ledger|sizes|usage  chunk byte accounting for quotas and stats
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gearkv.api.records import SessionSummary


def chunk_redis_key(tenant: str, key: str) -> str:
    return f"gkv:c:{tenant}:{key}"


def manifest_redis_key(tenant: str, session_id: str) -> str:
    return f"gkv:s:{{{tenant}:{session_id}}}:m"


def session_meta_redis_key(tenant: str, session_id: str) -> str:
    return f"gkv:s:{{{tenant}:{session_id}}}:h"


def lease_redis_key(tenant: str, session_id: str) -> str:
    return f"gkv:s:{{{tenant}:{session_id}}}:l"


def tenant_redis_key(tenant: str, what: str) -> str:
    return f"gkv:t:{{{tenant}}}:{what}"


# A retry of one of a session's last COMMIT_IDS_KEPT commits replays the version it produced; an
# older one answers as a stale expected_version (a bounded window keeps long sessions small).
COMMIT_IDS_KEPT = 16


@dataclass(frozen=True)
class CommitOutcome:
    """``applied`` False means the commit id was seen before and ``version`` is what it produced."""

    version: int
    applied: bool


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
        holder: str = "",
        lease_id: str = "",
    ) -> CommitOutcome:
        """Compare-and-set the manifest; gives back ``lease_id`` when it is the session's lease.

        Raises Aborted on a version mismatch, or (with a ``holder``) while another holder's lease is live.
        """
        ...

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        """Remove the manifest; False when it did not exist."""
        ...

    async def list_sessions(self, tenant: str, after: str, limit: int) -> tuple[list[SessionSummary], str]:
        """Up to ``limit`` live sessions with ids > ``after``; returns them and the next page token."""
        ...

    async def usage(self, tenant: str) -> TenantUsage: ...

    async def used_memory(self) -> int: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
