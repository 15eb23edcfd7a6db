"""Which chunks a commit verifies: pure planning from the session's head (its version and mark).

A commit must never publish a manifest naming a chunk that was never written. Chunks the current
manifest already names were verified (checked to exist, TTL refreshed) by the commit that added them,
so a commit verifies only the chunks it adds: O(turn), not O(session). Which chunks are old is proven
by the current manifest's ``ManifestMark`` (chunk keys are chained, so one equal key proves the whole
prefix before it equal) and the commit applies only while that mark is still the session's (the
commit script compares it atomically with the version: the Lua compare-and-set is the arbiter).

Old chunks' TTLs are kept fresh by use: LookupPrefix refreshes every chunk of the prefix it matches
and GetChunk the chunk it reads, as a resumed turn does both. For a session that is committed to but
never read, a commit re-verifies every chunk once the last full verification is older than half the
chunk TTL (``ManifestMark.verified_ms``), so a live session's chunks never expire under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gearkv.store.backend import ManifestMark, SessionHead


@dataclass(frozen=True)
class CommitPlan:
    """``keys[verify_from:]`` are verified; ``base`` is the mark relied on (None: nothing relied on).

    ``created_ms`` is None for a session whose mark predates marks (then its manifest is read once).
    """

    verify_from: int
    base: ManifestMark | None
    created_ms: int | None
    verified_ms: int


def shared_prefix(mark: ManifestMark, keys: Sequence[str]) -> int:
    """How many leading chunks of a manifest with chunk ``keys`` the marked manifest also has."""
    n = mark.chunks
    if n >= 1 and len(keys) >= n and keys[n - 1] == mark.last_key:
        return n
    if n >= 2 and len(keys) >= n - 1 and keys[n - 2] == mark.prev_key:
        return n - 1
    return 0


def plan_commit(
    head: SessionHead | None, expected: int, keys: Sequence[str], now_ms: int, reverify_after_ms: int
) -> CommitPlan:
    """The verification a commit of chunk ``keys`` at ``expected_version`` needs.

    Every chunk is verified (as before marks) when there is nothing to rely on: a new session, a
    version other than ``expected`` (the commit is then a replay or refused), a session without a mark,
    or a last full verification older than ``reverify_after_ms``. Otherwise the chunks the current
    manifest shares are skipped, except the last chunk, which is always verified.
    """
    if expected == 0 or head is None or head.version != expected:
        return CommitPlan(0, None, now_ms, now_ms)
    mark = head.mark
    if mark is None:
        return CommitPlan(0, None, None, now_ms)
    shared = shared_prefix(mark, keys)
    if shared == 0 or now_ms - mark.verified_ms >= reverify_after_ms:
        return CommitPlan(0, mark, mark.created_ms, now_ms)
    return CommitPlan(min(shared, len(keys) - 1), mark, mark.created_ms, mark.verified_ms)
