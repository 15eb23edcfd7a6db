"""A bounded, byte-accounted LRU of sessions' exact KV, so one worker continues a session without a pull.

Entries are immutable snapshots: the token ids whose KV is held and the per-layer tensors (the cache's
own tensors; transformers grows a cache by concatenation, so they are never modified afterwards).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from gearkv.worker.hf_cache import kv_nbytes

__all__ = ["HotCache", "HotEntry"]


@dataclass(frozen=True)
class HotEntry:
    token_ids: tuple[int, ...]
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return kv_nbytes(self.kv)


class HotCache:
    """Thread-safe LRU keyed by session id, holding at most ``max_bytes`` of KV (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("hot_cache_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, HotEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # For metrics: bytes of KV freed by evicting least recently used (idle) sessions, by device type
        # ("cpu", "cuda"); their KV stays in the store.
        self.evicted_bytes: dict[str, int] = {}
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> HotEntry | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None:
                self._entries.move_to_end(session_id)
            return entry

    def put(self, session_id: str, entry: HotEntry) -> bool:
        """Insert or replace; evicts least recently used entries. False when the entry alone is too big."""
        size = entry.nbytes
        with self._lock:
            self._drop(session_id)
            if size > self.max_bytes:
                return False
            while self._entries and self._bytes + size > self.max_bytes:
                evicted = self._entries[next(iter(self._entries))]
                self._drop(next(iter(self._entries)))
                device = evicted.kv[0][0].device.type if evicted.kv else "cpu"
                self.evicted_bytes[device] = self.evicted_bytes.get(device, 0) + evicted.nbytes
                self.evictions += 1
            self._entries[session_id] = entry
            self._bytes += size
            return True

    def discard(self, session_id: str) -> None:
        with self._lock:
            self._drop(session_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, session_id: str) -> None:
        old = self._entries.pop(session_id, None)
        if old is not None:
            self._bytes -= old.nbytes
