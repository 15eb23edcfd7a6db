"""An in-memory ``Backend`` for fast unit tests of the servicer's logic (integration tests use Redis)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gearkv.api.records import SessionSummary
from gearkv.store.backend import (
    COMMIT_IDS_KEPT,
    CommitOutcome,
    ManifestMark,
    SessionHead,
    TenantUsage,
    TurnStart,
)
from gearkv.store.errors import Aborted, FailedPrecondition, ResourceExhausted


@dataclass
class _Lease:
    holder: str
    lease_id: str
    until: float  # time.monotonic()
    lost: bool = False
    lost_holder: str = ""


class FakeBackend:
    """Dicts instead of Redis; no TTLs (``expire`` removes a key, like an expiry or an eviction)."""

    kind = "fake"

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, str], bytes] = {}
        self.sizes: dict[tuple[str, str], tuple[int, int]] = {}
        self.sessions: dict[tuple[str, str], tuple[bytes, SessionSummary]] = {}
        self.commits: dict[
            tuple[str, str], dict[str, tuple[int, str]]
        ] = {}  # last commit ids: version, digest
        self.marks: dict[tuple[str, str], ManifestMark] = {}
        self.touched: list[str] = []
        self.leases: dict[tuple[str, str], _Lease] = {}
        self.manifest_bytes: dict[tuple[str, str], int] = {}

    def expire(self, tenant: str, key: str) -> None:
        self.chunks.pop((tenant, key), None)

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
        if (tenant, key) in self.chunks:
            return True
        if quota and self._used(tenant) + stored > quota:
            raise ResourceExhausted(f"tenant byte quota of {quota} bytes exceeded")
        self.chunks[(tenant, key)] = bytes(value)
        self.sizes[(tenant, key)] = (stored, raw)
        return False

    def _used(self, tenant: str) -> int:
        chunks = sum(s for (t, _), (s, _) in self.sizes.items() if t == tenant)
        return chunks + sum(n for (t, _), n in self.manifest_bytes.items() if t == tenant)

    async def get_chunk(self, tenant: str, key: str, ttl_ms: int) -> bytes | None:
        return self.chunks.get((tenant, key))

    async def discard_chunk(self, tenant: str, key: str) -> None:
        self.chunks.pop((tenant, key), None)

    async def touch_chunks_nonatomic(
        self, tenant: str, keys: Sequence[str], ttl_ms: int, *, stop_at_missing: bool
    ) -> list[bool]:
        out = []
        for key in keys:
            self.touched.append(key)
            out.append((tenant, key) in self.chunks)
            if stop_at_missing and not out[-1]:
                break
        return out

    async def chunk_sizes(self, tenant: str, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        return [self.sizes.get((tenant, k)) for k in keys]

    async def get_session(self, tenant: str, session_id: str, ttl_ms: int) -> bytes | None:
        entry = self.sessions.get((tenant, session_id))
        return entry[0] if entry else None

    async def session_head(self, tenant: str, session_id: str) -> SessionHead | None:
        current = self.sessions.get((tenant, session_id))
        if current is None:
            return None
        return SessionHead(current[1].version, self.marks.get((tenant, session_id)))

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
        before = self.manifest_bytes.get((tenant, session_id), 0)
        if quota and len(manifest) > before and self._used(tenant) + len(manifest) - before > quota:
            raise ResourceExhausted(f"tenant byte quota of {quota} bytes exceeded by a manifest")
        self.manifest_bytes[(tenant, session_id)] = len(manifest)
        seen = self.commits.setdefault((tenant, session_id), {})
        if commit_id in seen:
            version, was = seen[commit_id]
            if was != digest:
                raise FailedPrecondition(f"commit_id {commit_id!r} already committed other content")
            return CommitOutcome(version, applied=False)
        lease = self.leases.get((tenant, session_id))
        if holder and lease and lease.holder != holder and lease.until > time.monotonic():
            raise Aborted(f"the session has a turn running on another worker ({lease.holder!r})")
        current = self.sessions.get((tenant, session_id))
        version = current[1].version if current else 0
        if version != expected_version:
            raise Aborted(f"expected_version {expected_version} does not match {version}")
        if base is not None and self.marks.get((tenant, session_id)) != base:
            raise Aborted("the session changed while the commit was checked")
        self.sessions[(tenant, session_id)] = (manifest, summary)
        self.marks[(tenant, session_id)] = mark
        if lease and lease_id and lease.lease_id == lease_id:
            del self.leases[(tenant, session_id)]
        seen[commit_id] = (version + 1, digest)
        while len(seen) > COMMIT_IDS_KEPT:
            del seen[next(iter(seen))]
        return CommitOutcome(version + 1, applied=True)

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
        now = time.monotonic()
        old = self.leases.get((tenant, session_id))
        lost, lost_holder = False, ""
        if old is not None:
            live = old.until > now
            if live and old.holder != holder:
                raise Aborted(f"the session has a turn running on another worker ({old.holder!r})")
            lost, lost_holder = old.lost, old.lost_holder
            if not live and old.lease_id != lease_id:
                lost, lost_holder = True, old.holder
        self.leases[(tenant, session_id)] = _Lease(holder, lease_id, now + lease_ms / 1000, lost, lost_holder)
        current = self.sessions.get((tenant, session_id))
        version = current[1].version if current else 0
        manifest = current[0] if current and version != known_version else None
        return TurnStart(version, manifest, lost, lost_holder)

    async def end_turn(self, tenant: str, session_id: str, lease_id: str) -> None:
        lease = self.leases.get((tenant, session_id))
        if lease is None or lease.lease_id != lease_id:
            return
        if lease.lost:
            lease.until, lease.lease_id = 0.0, ""
        else:
            del self.leases[(tenant, session_id)]

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        self.manifest_bytes.pop((tenant, session_id), None)
        self.commits.pop((tenant, session_id), None)
        self.leases.pop((tenant, session_id), None)
        self.marks.pop((tenant, session_id), None)
        return self.sessions.pop((tenant, session_id), None) is not None

    async def list_sessions(self, tenant: str, after: str, limit: int) -> tuple[list[SessionSummary], str]:
        ids = sorted(s for t, s in self.sessions if t == tenant and s > after)
        page = [self.sessions[(tenant, s)][1] for s in ids[:limit]]
        return page, (ids[limit - 1] if len(ids) > limit else "")

    async def usage(self, tenant: str) -> TenantUsage:
        mine = [v for (t, _), v in self.sizes.items() if t == tenant]
        sessions = sum(1 for t, _ in self.sessions if t == tenant)
        manifests = sum(n for (t, _), n in self.manifest_bytes.items() if t == tenant)
        return TenantUsage(sessions, len(mine), sum(r for _, r in mine), sum(s for s, _ in mine), manifests)

    async def sweep(self, tenant: str) -> None:
        return None

    async def used_bytes(self, tenant: str) -> int:
        return self._used(tenant)

    async def used_memory(self) -> int:
        return sum(len(v) for v in self.chunks.values())

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
