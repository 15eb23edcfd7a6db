"""What the worker knows of its sessions: its own record of each, and a turn's view of one.

A ``LocalRecord`` is the history this worker answered on and what of it is committed; it outlives a
store outage (``unsynced``) and is the session's history until a commit includes it. A ``TurnView`` is
the session as a turn starts, built from that record or from the store's manifest. ``SessionTable``
holds the records, bounded, never dropping one a commit has not got yet. Pure data: no I/O, and the
table leaves locking to its owner (the ``Worker``'s lock).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from gearkv.client import ChatMessage, ChunkRef, Manifest
from gearkv.client.keys import Namespace
from gearkv.codec import split_codec_id
from gearkv.worker.sharing._plan import SHARING_ATTRIBUTE, base_fingerprint
from gearkv.worker.transfer import PushResult

__all__ = ["LocalRecord", "SessionTable", "TurnView", "merge_refs", "view_of_manifest", "view_of_record"]

MAX_LOCAL_SESSIONS = 4096  # session records kept per worker (committed ones are dropped first)


@dataclass
class LocalRecord:
    """This worker's record of a session: the history it answered on, and what of it is committed.

    ``version``/``chunks`` are the last commit this worker knows of; ``unsynced`` says the history
    holds answered turns that no commit includes yet (their push is pending, failed or retrying):
    until one does, this record, not the store's older manifest, is the session's history.
    """

    messages: tuple[ChatMessage, ...] = ()
    token_ids: tuple[int, ...] = ()
    chunks: tuple[ChunkRef, ...] = ()
    version: int = 0
    turns: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    pending: Future[PushResult] | None = None
    last_push: PushResult | None = None
    unsynced: bool = False
    seq: int = 0  # turns answered here; a background retry only runs for the latest


@dataclass
class TurnView:
    """A session as the turn starts: conversation and the KV the store (or this worker) holds."""

    messages: tuple[ChatMessage, ...] = ()
    token_ids: tuple[int, ...] = ()
    chunks: tuple[ChunkRef, ...] = ()
    version: int = 0
    turns: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    new: bool = True
    fault: str = ""
    store_ok: bool = True
    from_local: bool = False
    lease_id: str = ""  # this turn's lease ("" without one)
    handed: bool = False  # the turn answered: its push (not _end_lease) settles the lease
    # The store confirmed this history is current (or there is no store): a full reuse is a hit.
    confirmed: bool = True


def view_of_record(local: LocalRecord | None) -> TurnView:
    """A turn's view of this worker's record (an empty, new session without one)."""
    if local is None:
        return TurnView()
    return TurnView(
        messages=local.messages,
        token_ids=local.token_ids,
        chunks=local.chunks,
        version=local.version,
        turns=local.turns,
        attributes=dict(local.attributes),
        new=not local.messages and not local.token_ids,
        from_local=True,
    )


def view_of_manifest(manifest: Manifest, namespace: Namespace, *, sharing: str = "") -> TurnView:
    """A turn's view of the store's manifest; KV of another namespace is not reused (the fault says
    why: another model, another KV sharing plan, the same codec under another calibration, another
    codec, or another chunk size).

    Args:
        sharing: the digest of the KV sharing plan this worker runs ("" without one); the manifest
            records its own (attribute ``sharing_plan``) and the namespace fingerprint carries it.
    """
    view = TurnView(
        messages=manifest.messages,
        token_ids=manifest.token_ids,
        chunks=manifest.chunks,
        version=manifest.version,
        turns=manifest.turns,
        attributes=dict(manifest.attributes),
        new=False,
    )
    ns = manifest.namespace
    recorded = manifest.attributes.get(SHARING_ATTRIBUTE, "")
    if ns != namespace or recorded != sharing:
        view.fault = (
            "fingerprint_mismatch"
            if base_fingerprint(ns.fingerprint) != base_fingerprint(namespace.fingerprint)
            else "sharing_mismatch"
            if ns.fingerprint != namespace.fingerprint or recorded != sharing
            else "calibration_mismatch"
            if _calibration_only(ns.codec_id, namespace.codec_id)
            else "codec_mismatch"
            if ns.codec_id != namespace.codec_id
            else "namespace_mismatch"
        )
        view.token_ids, view.chunks = (), ()  # that KV is not ours to reuse
    return view


def _calibration_only(stored: str, ours: str) -> bool:
    """Whether two codec ids name the same codec under two calibrations."""
    (codec, digest), (our_codec, our_digest) = split_codec_id(stored), split_codec_id(ours)
    return codec == our_codec and bool(digest) and bool(our_digest) and digest != our_digest


def merge_refs(a: Sequence[ChunkRef], b: Sequence[ChunkRef]) -> tuple[ChunkRef, ...]:
    """The chunks of ``a`` and those of ``b`` it lacks (by key), in that order."""
    seen = {r.key: r for r in a}
    for r in b:
        seen.setdefault(r.key, r)
    return tuple(seen.values())


class SessionTable:
    """The worker's records, least recently used first; the caller holds the worker's lock."""

    def __init__(self, capacity: int = MAX_LOCAL_SESSIONS) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, LocalRecord] = OrderedDict()

    def get(self, session_id: str, *, touch: bool = False) -> LocalRecord | None:
        record = self._records.get(session_id)
        if record is not None and touch:
            self._records.move_to_end(session_id)
        return record

    def answered(
        self,
        session_id: str,
        view: TurnView,
        messages: Sequence[ChatMessage],
        token_ids: Sequence[int],
    ) -> LocalRecord:
        """Record an answered turn (unsynced until a commit has it); makes room among synced records."""
        record = self._records.get(session_id)
        if record is None:
            record = self._records[session_id] = LocalRecord(version=view.version, chunks=view.chunks)
        self._records.move_to_end(session_id)
        record.messages, record.token_ids = tuple(messages), tuple(token_ids)
        record.turns, record.attributes = view.turns + 1, dict(view.attributes)
        record.unsynced = True
        record.seq += 1
        synced = [sid for sid, rec in self._records.items() if not rec.unsynced]
        for sid in synced[: max(0, len(self._records) - self.capacity)]:
            del self._records[sid]  # oldest first; a record a commit has not got yet is never dropped
        return record

    def drop(self, session_id: str) -> None:
        self._records.pop(session_id, None)

    def unsynced(self) -> list[str]:
        return [sid for sid, rec in self._records.items() if rec.unsynced]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)
