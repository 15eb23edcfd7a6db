"""The worker's push queue: one background thread that compresses, uploads and commits turns.

FIFO on a single thread, so consecutive turns of a session commit in order. Back-pressure: each
queued push holds a session's whole KV, so past ``max_queued`` a new push waits for room (after its
turn's answer streamed) instead of growing memory without bound. A push that failed because the
store was away can be run again later (``retry_later``); at most ``max_retrying`` wait at a time,
since each holds its KV too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["PushQueue"]

T = TypeVar("T")


class PushQueue:
    def __init__(self, *, max_queued: int, max_retrying: int, background: bool = True) -> None:
        self._background = background
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gearkv-push")
        self._slots = threading.BoundedSemaphore(max_queued)
        self._max_retrying = max_retrying
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` (waits for room); run at once when not ``background`` (tests)."""
        if not self._background:
            return _run_now(fn)
        self._slots.acquire()
        try:
            future = self._executor.submit(fn)
        except BaseException:  # shut down
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def submit_nowait(self, fn: Callable[[], object]) -> bool:
        """Queue small work (no back-pressure slot); False once closed."""
        try:
            self._executor.submit(fn)
        except RuntimeError:
            return False
        return True

    def retry_later(self, delay: float, fn: Callable[[], object]) -> bool:
        """Queue ``fn`` in ``delay`` seconds (it re-checks whether it is still wanted); False when
        closed or ``max_retrying`` retries already wait."""
        timer = threading.Timer(delay, lambda: self._fire(timer, fn))
        timer.daemon = True
        with self._lock:
            if self._closed or len(self._timers) >= self._max_retrying:
                return False
            self._timers.add(timer)
        timer.start()
        return True

    def _fire(self, timer: threading.Timer, fn: Callable[[], object]) -> None:
        with self._lock:
            self._timers.discard(timer)
            if self._closed:
                return
        self.submit_nowait(fn)

    def drain(self, timeout: float | None = None) -> None:
        """Block until everything queued so far has run."""
        self._executor.submit(lambda: None).result(timeout=timeout)

    def close(self, timeout: float) -> None:
        """Drop waiting retries, let queued pushes finish for ``timeout`` seconds, stop the thread."""
        with self._lock:
            self._closed = True
            timers, self._timers = set(self._timers), set()
        for timer in timers:
            timer.cancel()
        with contextlib.suppress(Exception):  # a timed-out push is abandoned; its chunks expire
            self.drain(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run_now(fn: Callable[[], T]) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(fn())
    return future
