"""Keeping the store's turn leases of running turns alive.

A turn takes its session's lease in ``BeginTurn`` (so no other worker runs a turn of the session
meanwhile) and gives it back with the commit. A long prefill or a push waiting in the queue can
outlive the lease, so a daemon thread renews every held lease each third of its lifetime. A renewal
is ``BeginTurn`` again with the same lease id; ``release`` waits for a renewal in flight, so a lease
given back by a commit is never re-created by a late renewal.
"""

from __future__ import annotations

import logging
import threading

from gearkv.client import errors
from gearkv.worker.store_client import StoreClient

__all__ = ["LeaseKeeper"]

log = logging.getLogger("gearkv.worker")


class LeaseKeeper:
    """Renews ``{session: lease}`` every ``lease_ms / 3`` until released or closed."""

    def __init__(self, client: StoreClient | None, holder: str, lease_ms: int) -> None:
        self._client = client
        self._holder = holder
        self._lease_ms = lease_ms
        self._held: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()  # guards _held
        self._renewing = threading.Lock()  # held while a renewal round is in flight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, session_id: str, lease_id: str, version: int) -> None:
        with self._lock:
            self._held[session_id] = (lease_id, version)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="gearkv-leases", daemon=True)
                self._thread.start()

    def release(self, session_id: str, lease_id: str) -> None:
        """Stop renewing ``lease_id`` (no-op for another lease); waits for a renewal in flight."""
        with self._renewing, self._lock:
            if session_id in self._held and self._held[session_id][0] == lease_id:
                del self._held[session_id]

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self._lease_ms / 3000
        while not self._stop.wait(interval):
            with self._renewing:
                with self._lock:
                    held = list(self._held.items())
                for session_id, (lease_id, version) in held:
                    self._renew(session_id, lease_id, version)

    def _renew(self, session_id: str, lease_id: str, version: int) -> None:
        if self._client is None:
            return
        try:
            self._client.begin_turn(
                session_id,
                holder=self._holder,
                lease_id=lease_id,
                lease_ms=self._lease_ms,
                known_version=version,
                timeout=min(2.0, self._lease_ms / 6000),
            )
        except errors.TurnInProgress:
            # Another worker took the session after this lease expired: this turn's commit will be
            # refused and reported; nothing left to renew.
            log.warning("session %r: the turn lease was lost to another worker", session_id)
            with self._lock:
                if session_id in self._held and self._held[session_id][0] == lease_id:
                    del self._held[session_id]
        except errors.KVStoreError:
            pass  # store away: the next round tries again; the commit settles what happened
