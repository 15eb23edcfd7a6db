"""Frozen dataclasses mirroring the v1 proto messages the SDK hands out and takes in.

Callers never touch generated protobuf classes; ``_convert`` is the one place that maps between the
two. Sequences are tuples: a ``Manifest`` takes any iterable (list, tuple, ``range``, numpy array) and
keeps a tuple, and its type hints say so; attributes are a plain dict. ``Namespace`` and
``SessionSummary`` are the API contract's own (gearkv.api.keys, gearkv.api.records), shared with the store.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gearkv.api.keys import Namespace
from gearkv.api.records import SessionSummary

__all__ = [
    "ChatMessage",
    "ChunkRef",
    "Manifest",
    "Namespace",
    "PrefixMatch",
    "PutChunkResult",
    "SessionSummary",
    "StoreStats",
    "TurnStart",
]


@dataclass(frozen=True)
class ChunkRef:
    """Where a chunk sits in a session: tokens ``[start, end)``, stored and raw (16-bit) sizes."""

    key: str
    start: int
    end: int
    stored_bytes: int = 0
    raw_bytes: int = 0

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ChatMessage:
    """One chat message, kept in the manifest so any worker can continue the conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class Manifest:
    """A session's committed state; the server sets version, timestamps and byte totals.

    Example::

        m = Manifest("s1", ns, token_ids=ids, chunks=refs, messages=[ChatMessage("user", "hi")], turns=1)
        version = client.commit_turn(m, expected_version=0)
    """

    session_id: str
    namespace: Namespace
    token_ids: tuple[int, ...] = ()
    chunks: tuple[ChunkRef, ...] = ()
    messages: tuple[ChatMessage, ...] = ()
    turns: int = 0
    version: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)

    if TYPE_CHECKING:  # what the generated __init__ accepts: any iterable, stored as a tuple

        def __init__(
            self,
            session_id: str,
            namespace: Namespace,
            token_ids: Iterable[int] = (),
            chunks: Iterable[ChunkRef] = (),
            messages: Iterable[ChatMessage] = (),
            turns: int = 0,
            version: int = 0,
            created_ms: int = 0,
            updated_ms: int = 0,
            raw_bytes: int = 0,
            stored_bytes: int = 0,
            attributes: Mapping[str, str] = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # Accept any iterables (lists, ranges, arrays) but keep the instance immutable: tuples, and
        # token ids as Python ints (numpy integers included; floats and bools-as-floats refused).
        ids = self.token_ids
        if not (isinstance(ids, tuple) and all(type(t) is int for t in ids)):
            object.__setattr__(self, "token_ids", tuple(map(operator.index, ids)))
        for name in ("chunks", "messages"):
            value: Iterable[object] = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.attributes, dict):
            object.__setattr__(self, "attributes", dict(self.attributes))


@dataclass(frozen=True)
class PrefixMatch:
    """Result of a prefix lookup: use the first ``matched_tokens`` positions of ``chunks``."""

    chunks: tuple[ChunkRef, ...]
    matched_tokens: int
    session_version: int
    reason: str = ""


@dataclass(frozen=True)
class PutChunkResult:
    """Outcome of a chunk upload; ``deduplicated`` when the chunk was already stored."""

    key: str
    deduplicated: bool
    stored_bytes: int


@dataclass(frozen=True)
class TurnStart:
    """What ``begin_turn`` found: the session's version (0: none), its manifest when that differs from
    the version the caller knew, and whether an earlier turn's lease expired uncommitted (that turn
    may have been answered and lost; ``abandoned_holder`` ran it)."""

    version: int
    manifest: Manifest | None = None
    abandoned_turn: bool = False
    abandoned_holder: str = ""


@dataclass(frozen=True)
class StoreStats:
    """Usage figures of the caller's tenant and the backend."""

    tenant: str
    sessions: int
    chunks: int
    raw_bytes: int
    stored_bytes: int
    quota_bytes: int
    backend_used_memory_bytes: int
    backend: str
    # Bytes of the tenant's session manifests; the quota counts stored_bytes + manifest_bytes.
    manifest_bytes: int = 0

    @property
    def compression_ratio(self) -> float:
        """Raw over stored bytes (the "memory saved" factor); 0.0 with nothing stored."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0
