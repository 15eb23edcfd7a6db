"""Errors the worker raises to its callers (the gRPC service maps each to one status code).

::

    WorkerError
    ├── InvalidRequest     (also ValueError) a field is malformed or out of range -> INVALID_ARGUMENT
    ├── SessionBusy        another turn of the session is running               -> ABORTED
    ├── WorkerOverloaded   too many turns in flight                              -> RESOURCE_EXHAUSTED
    └── TurnCancelled      client cancel or deadline, or shutdown               -> CANCELLED

Store and codec faults never surface here: a turn degrades to recomputing and says why in its stats.
"""

from __future__ import annotations

__all__ = ["InvalidRequest", "SessionBusy", "TurnCancelled", "WorkerError", "WorkerOverloaded"]


class WorkerError(Exception):
    """Root of the worker's own errors."""


class InvalidRequest(WorkerError, ValueError):
    """A request field is malformed or out of range; the message names the field and the limit."""


class SessionBusy(WorkerError):
    """Another turn of this session is running on this worker; retry when it has finished."""


class WorkerOverloaded(WorkerError):
    """The worker already runs its maximum number of turns; retry with backoff."""


class TurnCancelled(WorkerError):
    """The turn was cancelled (client cancel or deadline, or shutdown) and stopped between two steps.

    Nothing of it is kept: no KV is cached or pushed, and the session is free for its next turn.
    """
