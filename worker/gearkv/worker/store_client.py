"""The worker's seam to the store: exactly the calls a turn makes, typed.

``gearkv.client.KVStoreClient`` satisfies it; tests pass in-memory fakes. Keeping the seam this
narrow is what lets the turn logic be tested without a store, and another store client (a native
one, a different transport) be dropped in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from gearkv.client import Manifest, Namespace, PrefixMatch, PutChunkResult, TurnStart

__all__ = ["StoreClient"]


class StoreClient(Protocol):
    """What a worker asks of the store (see ``gearkv.client.KVStoreClient`` for each call)."""

    def begin_turn(
        self,
        session_id: str,
        *,
        holder: str,
        lease_id: str,
        lease_ms: int = ...,
        known_version: int = ...,
        timeout: float | None = ...,
    ) -> TurnStart: ...

    def end_turn(self, session_id: str, lease_id: str, *, timeout: float | None = ...) -> None: ...

    def lookup_prefix(
        self,
        ns: Namespace,
        token_ids: Sequence[int],
        session_id: str | None = ...,
        *,
        timeout: float | None = ...,
    ) -> PrefixMatch: ...

    def get_chunks(self, keys: Iterable[str], *, timeout: float | None = ...) -> Iterator[bytes]: ...

    def put_chunk(
        self,
        ns: Namespace,
        parent_key: str,
        *,
        start: int,
        token_ids: Sequence[int],
        data: bytes,
        raw_bytes: int,
        ttl_s: int = ...,
    ) -> PutChunkResult: ...

    def commit_turn(
        self,
        manifest: Manifest,
        expected_version: int,
        commit_id: str | None = ...,
        ttl_s: int = ...,
        *,
        holder: str = ...,
        lease_id: str = ...,
    ) -> int: ...

    def close(self) -> None: ...
