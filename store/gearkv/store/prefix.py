"""LookupPrefix's algorithm: the longest stored prefix of a prompt's token ids.

First the session's manifest (its chunks under the common prefix of its token ids and the prompt's),
then the content-addressed chain of full chunks beyond it (another session may have stored more of
the same prefix). Only chunks that exist count, up to the first missing one; every chunk checked gets
a fresh TTL (this is what keeps a live session's older chunks from expiring: commits verify only the
chunks they add). The pure steps are plain functions; ``match_prefix`` runs them against a backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gearkv.api.keys import Namespace, chunk_key
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.store.backend import Backend


@dataclass(frozen=True)
class PrefixMatch:
    """The matched chunks, how many tokens they cover, and why not more ("" for a full match)."""

    chunks: list[pb.ChunkRef]
    matched: int
    reason: str


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token id sequences."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    lo, hi = 0, n  # binary search on slice equality: C-speed comparisons
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if list(a[:mid]) == list(b[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def same_namespace(msg: pb.Namespace, ns: Namespace) -> bool:
    return (msg.fingerprint, msg.codec_id, msg.chunk_size) == (ns.fingerprint, ns.codec_id, ns.chunk_size)


def manifest_candidates(manifest: pb.Manifest, tokens: Sequence[int]) -> tuple[list[pb.ChunkRef], int]:
    """The manifest's chunks that start inside the common prefix, and that prefix's length."""
    common = common_prefix(manifest.token_ids, tokens)
    return [c for c in manifest.chunks if c.start < common], common


def chain_start(chunks: Sequence[pb.ChunkRef], matched: int, size: int) -> int:
    """How many leading ``chunks`` are full chunks wholly inside the matched prefix.

    Those have exactly the chain's keys (a key hashes every token before it), so a chain walk starts
    after them.
    """
    known = 0
    while (
        known < len(chunks)
        and chunks[known].end - chunks[known].start == size
        and chunks[known].end <= matched
    ):
        known += 1
    return known


def chain_keys(
    ns: Namespace, tokens: Sequence[int], parent: str, first: int, count: int | None = None
) -> list[str]:
    """Keys of the full chunks of ``tokens`` from chunk index ``first`` on (at most ``count`` of them),
    chained from ``parent`` (the key of chunk ``first - 1``)."""
    size = ns.chunk_size
    stop = len(tokens) - size + 1
    if count is not None:
        stop = min(stop, (first + count - 1) * size + 1)
    keys: list[str] = []
    for start in range(first * size, stop, size):
        parent = chunk_key(ns, parent, start, tokens[start : start + size])
        keys.append(parent)
    return keys


# A chain walk hashes and checks chunks in batches that grow from a few chunks to this many tokens:
# a prompt of which nothing is stored costs a few hashes, not a hash of every token (a million-token
# lookup used to hold the event loop for seconds before its first EXISTS), and every batch yields to
# other requests while Redis answers.
_FIRST_BATCH_CHUNKS = 4
_MAX_BATCH_TOKENS = 1 << 15


def _ref(c: pb.ChunkRef) -> pb.ChunkRef:
    return pb.ChunkRef(
        key=c.key, start=c.start, end=c.end, stored_bytes=c.stored_bytes, raw_bytes=c.raw_bytes
    )


async def match_manifest(
    backend: Backend, tenant: str, manifest: pb.Manifest, tokens: Sequence[int], ttl_ms: int
) -> PrefixMatch:
    """The manifest's chunks under the common prefix that still exist, up to the first missing."""
    wanted, common = manifest_candidates(manifest, tokens)
    found = await backend.touch_chunks_nonatomic(
        tenant, [c.key for c in wanted], ttl_ms, stop_at_missing=True
    )
    ok = found.index(False) if False in found else len(found)
    chunks = [_ref(c) for c in wanted[:ok]]
    matched = min(common, chunks[-1].end) if chunks else 0
    return PrefixMatch(chunks, matched, "chunk_missing" if ok < len(wanted) else "")


async def walk_chain(
    backend: Backend, tenant: str, ns: Namespace, tokens: Sequence[int], base: PrefixMatch, ttl_ms: int
) -> PrefixMatch:
    """Extend ``base`` along the content-addressed chain; checks only chunks past its full ones, in
    growing batches, and stops at the first missing chunk."""
    size = ns.chunk_size
    known = chain_start(base.chunks, base.matched, size)
    parent = base.chunks[known - 1].key if known else ""
    walked: list[str] = []
    batch = _FIRST_BATCH_CHUNKS
    while True:
        keys = chain_keys(ns, tokens, parent, known + len(walked), batch)
        if not keys:
            break
        found = await backend.touch_chunks_nonatomic(tenant, keys, ttl_ms, stop_at_missing=True)
        present = found.index(False) if False in found else len(found)
        walked += keys[:present]
        if present < len(keys):
            break
        parent = keys[-1]
        batch = min(batch * 2, max(1, _MAX_BATCH_TOKENS // size))
    if (known + len(walked)) * size <= base.matched:
        return base
    sizes = await backend.chunk_sizes(tenant, walked)
    extended = base.chunks[:known] + [
        pb.ChunkRef(
            key=k,
            start=(known + i) * size,
            end=(known + i + 1) * size,
            stored_bytes=(sz or (0, 0))[0],
            raw_bytes=(sz or (0, 0))[1],
        )
        for i, (k, sz) in enumerate(zip(walked, sizes, strict=True))
    ]
    return PrefixMatch(extended, (known + len(walked)) * size, "")


async def match_prefix(
    backend: Backend,
    tenant: str,
    ns: Namespace,
    tokens: Sequence[int],
    manifest: pb.Manifest | None,
    ttl_ms: int,
) -> PrefixMatch:
    """The longest stored prefix of ``tokens``: the session's ``manifest`` first, then the chain.

    ``reason`` is "" for a full match, else why it stopped: "namespace_mismatch", "chunk_missing"
    (a manifest chunk expired or was evicted) or "not_stored".
    """
    base = PrefixMatch([], 0, "")
    if manifest is not None:
        if same_namespace(manifest.namespace, ns):
            base = await match_manifest(backend, tenant, manifest, tokens, ttl_ms)
        else:
            base = PrefixMatch([], 0, "namespace_mismatch")
    walked = await walk_chain(backend, tenant, ns, tokens, base, ttl_ms)
    if walked.matched == len(tokens):
        return PrefixMatch(walked.chunks, walked.matched, "")
    return PrefixMatch(walked.chunks, walked.matched, walked.reason or "not_stored")
