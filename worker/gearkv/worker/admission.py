"""Admission: at most one running turn per session on this worker, and at most N turns at once.

(Across workers, one turn per session is the store's turn lease; see ``leases.py``.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from gearkv.worker.errors import SessionBusy, WorkerOverloaded
from prometheus_client import Gauge

__all__ = ["Admission"]


class Admission:
    def __init__(self, max_in_flight: int, gauge: Gauge) -> None:
        self._max = max_in_flight
        self._gauge = gauge
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def enter(self, key: str) -> Callable[[], None]:
        """Take a turn slot for ``key``; returns the (idempotent) call that gives it back.

        Raises:
            SessionBusy: ``key`` already has a turn running here.
            WorkerOverloaded: ``max_in_flight`` turns are running.
        """
        with self._lock:
            if key in self._busy:
                raise SessionBusy(f"session {key!r} already has a turn running")
            if len(self._busy) >= self._max:
                raise WorkerOverloaded(f"{len(self._busy)} turns in flight (max {self._max})")
            self._busy.add(key)
            self._gauge.set(len(self._busy))
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._busy.discard(key)
                self._gauge.set(len(self._busy))

        return release
