"""An in-memory ``StoreClient`` for the worker's fast tests (the real store is tested against Redis).

It keeps the store's contract where the worker's logic depends on it: content-addressed chunks,
compare-and-set commits, one live turn lease per session (another holder is refused), the abandoned
mark of a lease that expired uncommitted, and lookups that stop at the first missing chunk. Faults are
switched on by the test: ``down`` (every call fails as unreachable), ``missing``/``corrupt`` keys.
``calls`` counts each method's calls; ``puts`` logs each upload as ``(key, start, len(token_ids))``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from gearkv.client import ChunkRef, Manifest, Namespace, PrefixMatch, PutChunkResult, TurnStart, errors, keys


@dataclass
class _Lease:
    holder: str
    lease_id: str
    until: float
    lost: bool = False
    lost_holder: str = ""


class FakeStore:
    def __init__(self) -> None:
        self.chunks: dict[str, bytes] = {}
        self.sessions: dict[str, Manifest] = {}
        self.leases: dict[str, _Lease] = {}
        self.calls: Counter[str] = Counter()
        self.puts: list[tuple[str, int, int]] = []  # every put_chunk in call order (duplicates too)
        self.down = False
        self.corrupt: set[str] = set()

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self.down:
            raise errors.KVStoreUnavailable("store unreachable (fake)", code="UNAVAILABLE")

    def version(self, session_id: str) -> int:
        m = self.sessions.get(session_id)
        return m.version if m else 0

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
        self._call("begin_turn")
        now = time.monotonic()
        old = self.leases.get(session_id)
        lost, lost_holder = (old.lost, old.lost_holder) if old else (False, "")
        if old is not None:
            live = old.until > now
            if live and old.holder != holder:
                raise errors.TurnInProgress(f"leased by {old.holder}", code="ABORTED")
            if not live and old.lease_id != lease_id:
                lost, lost_holder = True, old.holder
        self.leases[session_id] = _Lease(
            holder, lease_id, now + (lease_ms or 30_000) / 1000, lost, lost_holder
        )
        version = self.version(session_id)
        manifest = self.sessions.get(session_id) if version != known_version else None
        return TurnStart(version, manifest, lost, lost_holder)

    def end_turn(self, session_id: str, lease_id: str, *, timeout: float | None = None) -> None:
        self._call("end_turn")
        lease = self.leases.get(session_id)
        if lease is not None and lease.lease_id == lease_id and not lease.lost:
            del self.leases[session_id]

    def lookup_prefix(
        self,
        ns: Namespace,
        token_ids: Sequence[int],
        session_id: str | None = None,
        *,
        timeout: float | None = None,
    ) -> PrefixMatch:
        self._call("lookup_prefix")
        m = self.sessions.get(session_id or "")
        if m is None or m.namespace != ns:
            return self._walk_chain(ns, token_ids, self.version(session_id or ""))
        n = 0
        for a, b in zip(m.token_ids, token_ids, strict=False):
            if a != b:
                break
            n += 1
        refs = []
        for ref in m.chunks:
            if ref.start >= n:
                break
            if ref.key not in self.chunks:
                n = ref.start  # stops at the first missing chunk
                break
            refs.append(ref)
        return PrefixMatch(tuple(refs), min(n, refs[-1].end if refs else 0), m.version)

    def _walk_chain(self, ns: Namespace, token_ids: Sequence[int], version: int) -> PrefixMatch:
        """The content-addressed chain of stored full chunks, as the store walks it without a session."""
        refs = []
        for span in keys.chain(ns, token_ids, include_tail=False):
            if span.key not in self.chunks:
                break
            refs.append(ChunkRef(span.key, span.start, span.end, len(self.chunks[span.key]), 0))
        return PrefixMatch(tuple(refs), refs[-1].end if refs else 0, version)

    def get_chunks(self, keys_: Iterable[str], *, timeout: float | None = None) -> Iterator[bytes]:
        self._call("get_chunks")
        for key in keys_:
            if key not in self.chunks:
                raise errors.ChunkNotFound(f"chunk {key} not found", code="NOT_FOUND")
            if key in self.corrupt:
                raise errors.ChunkCorrupt(f"chunk {key} is corrupt", code="DATA_LOSS")
            yield self.chunks[key]

    def put_chunk(
        self,
        ns: Namespace,
        parent_key: str,
        *,
        start: int,
        token_ids: Sequence[int],
        data: bytes,
        raw_bytes: int,
        ttl_s: int = 0,
    ) -> PutChunkResult:
        self._call("put_chunk")
        key = keys.chunk_key(ns, parent_key, start, token_ids)
        self.puts.append((key, start, len(token_ids)))
        dedup = key in self.chunks
        self.chunks[key] = bytes(data)
        self.corrupt.discard(key)
        return PutChunkResult(key, dedup, len(data))

    def commit_turn(
        self,
        manifest: Manifest,
        expected_version: int,
        commit_id: str | None = None,
        ttl_s: int = 0,
        *,
        holder: str = "",
        lease_id: str = "",
    ) -> int:
        self._call("commit_turn")
        lease = self.leases.get(manifest.session_id)
        if holder and lease and lease.holder != holder and lease.until > time.monotonic():
            raise errors.VersionConflict("another worker holds the session", code="ABORTED")
        current = self.version(manifest.session_id)
        if current != expected_version:
            raise errors.VersionConflict(f"version is {current}", code="ABORTED")
        missing = [r.key for r in manifest.chunks if r.key not in self.chunks]
        if missing:
            raise errors.PreconditionFailed(f"chunk {missing[0]} is not stored", code="FAILED_PRECONDITION")
        self.sessions[manifest.session_id] = replace(manifest, version=current + 1)
        if lease and lease_id and lease.lease_id == lease_id:
            del self.leases[manifest.session_id]
        return current + 1

    def close(self) -> None:
        return None
