"""An in-memory ``Backend`` for fast unit tests of the servicer's logic (integration tests use Redis)."""

from __future__ import annotations

from collections.abc import Sequence

from gearkv.store.backend import COMMIT_IDS_KEPT, CommitOutcome, SessionSummary, TenantUsage
from gearkv.store.errors import Aborted, ResourceExhausted


class FakeBackend:
    """Dicts instead of Redis; no TTLs (``expire`` removes a key, like an expiry or an eviction)."""

    kind = "fake"

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, str], bytes] = {}
        self.sizes: dict[tuple[str, str], tuple[int, int]] = {}
        self.sessions: dict[tuple[str, str], tuple[bytes, SessionSummary]] = {}
        self.commits: dict[tuple[str, str], dict[str, int]] = {}  # the last commit ids, their versions
        self.touched: list[str] = []

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
        used = sum(s for (t, _), (s, _) in self.sizes.items() if t == tenant)
        if quota and used + stored > quota:
            raise ResourceExhausted(f"tenant byte quota of {quota} bytes exceeded")
        self.chunks[(tenant, key)] = bytes(value)
        self.sizes[(tenant, key)] = (stored, raw)
        return False

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
    ) -> CommitOutcome:
        seen = self.commits.setdefault((tenant, session_id), {})
        if commit_id in seen:
            return CommitOutcome(seen[commit_id], applied=False)
        current = self.sessions.get((tenant, session_id))
        version = current[1].version if current else 0
        if version != expected_version:
            raise Aborted(f"expected_version {expected_version} does not match {version}")
        self.sessions[(tenant, session_id)] = (manifest, summary)
        seen[commit_id] = version + 1
        while len(seen) > COMMIT_IDS_KEPT:
            del seen[next(iter(seen))]
        return CommitOutcome(version + 1, applied=True)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        self.commits.pop((tenant, session_id), None)
        return self.sessions.pop((tenant, session_id), None) is not None

    async def list_sessions(self, tenant: str, after: str, limit: int) -> tuple[list[SessionSummary], str]:
        ids = sorted(s for t, s in self.sessions if t == tenant and s > after)
        page = [self.sessions[(tenant, s)][1] for s in ids[:limit]]
        return page, (ids[limit - 1] if len(ids) > limit else "")

    async def usage(self, tenant: str) -> TenantUsage:
        mine = [v for (t, _), v in self.sizes.items() if t == tenant]
        sessions = sum(1 for t, _ in self.sessions if t == tenant)
        return TenantUsage(sessions, len(mine), sum(r for _, r in mine), sum(s for s, _ in mine))

    async def used_memory(self) -> int:
        return sum(len(v) for v in self.chunks.values())

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
