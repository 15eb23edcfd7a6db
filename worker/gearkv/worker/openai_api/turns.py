"""A worker turn driven on a thread, its deltas delivered to the event loop.

The model never runs on the event loop: :class:`TurnStream` iterates a :class:`~gearkv.worker.sessions.Turn`
on a thread of the API's turn pool and hands each delta to the loop through an ``asyncio.Queue``
(``call_soon_threadsafe``). Leaving the async iteration early (a client that disconnected, a
cancelled request task) cancels the turn: the engine stops before its next decoder layer or decode
step, and the turn's slot and session are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from gearkv.worker.engine import Delta
from gearkv.worker.sessions import Turn
from gearkv.worker.transfer import PushResult

__all__ = ["PushOutcome", "TurnStream", "await_push"]

_DONE = object()


class TurnStream:
    """Runs ``turn`` on ``executor`` once iterated; ``async for delta in stream`` yields its deltas.

    ``on_finished(stream)`` is called (from any thread) once the turn is over and its slot free: it
    ran to its end, was cancelled and stopped, or was closed before it started.

    Raises (from the iteration): the turn's own errors (``TurnCancelled``, ``WorkerError``), as raised
    on its thread. ``first_token_at`` is the ``perf_counter`` time the first delta was produced.
    """

    def __init__(
        self, turn: Turn, executor: Executor, on_finished: Callable[[TurnStream], None] | None = None
    ) -> None:
        self.turn = turn
        self._executor = executor
        self._on_finished = on_finished
        self.first_token_at = 0.0
        self.finished = threading.Event()  # set when the thread is done with the turn
        self._started = False

    async def __aiter__(self) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._started = True
        loop.run_in_executor(self._executor, self._drive, loop, queue)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not self.finished.is_set():
                self.turn.cancel()  # we left early: stop the model within a layer

    def _drive(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            for delta in self.turn:
                if not self.first_token_at:
                    self.first_token_at = time.perf_counter()
                post(delta)
            post(_DONE)
        except BaseException as exc:  # handed to the loop, which raises it in the request's task
            post(exc)
        finally:
            self._finish()

    def _finish(self) -> None:
        self.turn.close()
        self.finished.set()
        if self._on_finished is not None:
            self._on_finished(self)

    def close(self) -> None:
        """Free a turn that was never iterated (its admission slot); cancel one that runs."""
        if not self._started:
            self._finish()
        elif not self.finished.is_set():
            self.turn.cancel()


@dataclass(frozen=True)
class PushOutcome:
    """How the turn's push stood when the answer was completed."""

    stored: bool  # its chunks are in the store (the next turn, on any worker, can reuse them)
    wait_s: float
    chunks_pushed: int = 0
    bytes_pushed: int = 0
    error: str = ""

    def figures(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "push_wait_s": round(self.wait_s, 6),
            "chunks_pushed": self.chunks_pushed,
            "bytes_pushed": self.bytes_pushed,
            "push_error": self.error,
        }


async def await_push(turn: Turn, timeout: float) -> PushOutcome:
    """Wait (at most ``timeout`` seconds) for the turn's background push.

    A stateless client sends its next turn as soon as it has this answer, maybe to another worker:
    finishing the response once the answer's chunks are stored lets that turn reuse them, and costs
    only the compression and upload of the turn's new chunks (not of its whole context).
    """
    if turn.push is None:
        return PushOutcome(stored=False, wait_s=0.0, error="no_store")
    t0 = time.perf_counter()
    try:
        result: PushResult = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(turn.push)), timeout)
    except TimeoutError:
        return PushOutcome(stored=False, wait_s=time.perf_counter() - t0, error="pending")
    except Exception as exc:
        return PushOutcome(stored=False, wait_s=time.perf_counter() - t0, error=type(exc).__name__)
    return PushOutcome(
        stored=not result.error,
        wait_s=time.perf_counter() - t0,
        chunks_pushed=result.chunks_pushed,
        bytes_pushed=result.bytes_pushed,
        error=result.error,
    )
