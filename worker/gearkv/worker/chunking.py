"""Which chunks a session's KV is cut into, and which of them still need to be pushed.

Chunks are aligned to multiples of the namespace's chunk size counted from the session start; the
last, partial chunk (the tail) is stored too so that short sessions resume. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gearkv.client import ChunkRef
from gearkv.client.keys import ChunkSpan, Namespace, chain

__all__ = ["common_prefix", "plan_push", "session_spans"]


def session_spans(ns: Namespace, token_ids: Sequence[int]) -> list[ChunkSpan]:
    """The aligned chunks (full ones, then the tail) covering ``token_ids``."""
    return chain(ns, token_ids, include_tail=True)


def plan_push(
    spans: Sequence[ChunkSpan], stored: Iterable[ChunkRef]
) -> tuple[list[ChunkSpan], dict[str, ChunkRef]]:
    """Split ``spans`` into those to compress and push, and refs of those already stored.

    Returns:
        (spans whose key is not among ``stored``, {key: ref} for those that are).
    """
    known = {ref.key: ref for ref in stored}
    todo = [s for s in spans if s.key not in known]
    return todo, {s.key: known[s.key] for s in spans if s.key in known}


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
