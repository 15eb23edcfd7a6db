"""Which history a turn continues, and what the turn's outcome is: pure decisions, no I/O.

A worker keeps a record of each session it served (what it answered on, and the last commit it knows
of). When a turn begins, the store says the session's current version; :func:`settle` picks the
history to continue from the two. After reuse, :func:`classify` names the outcome (hit / partial /
miss) and its reason. Both are unit-tested over every case in ``tests/unit/test_worker_history_rules.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Continue", "LocalState", "classify", "settle"]


class Continue(enum.Enum):
    """The history a turn continues."""

    LOCAL = "local"  # this worker's record: current, or ahead of the store by turns answered here
    LOCAL_RECOMMIT = "local_recommit"  # the record: the store lost commits of it, push it all again
    STORE = "store"  # the store's manifest (another worker advanced it, or nothing is kept here)
    STORE_LOST = "store_lost"  # the store's: a turn answered here was overtaken there, and is lost


@dataclass(frozen=True)
class LocalState:
    """What :func:`settle` needs of a worker's record of a session."""

    version: int  # the last commit this worker knows of
    unsynced: bool  # it holds answered turns no commit includes yet
    pending: bool  # a push of it is still running


def settle(local: LocalState | None, store_version: int) -> Continue:
    """Pick the history of a turn from this worker's record and the store's current version."""
    if local is None:
        return Continue.STORE
    if local.unsynced or local.pending:
        committing = local.pending and store_version == local.version + 1  # its push just landed
        if store_version == local.version or committing:
            return Continue.LOCAL
        if store_version < local.version:
            return Continue.LOCAL_RECOMMIT
        return Continue.STORE_LOST
    return Continue.LOCAL if store_version == local.version else Continue.STORE


def classify(
    *,
    reused: int,
    could: int,
    had: int,
    fault: str,
    new: bool,
    history_fault: str = "",
    confirmed: bool = True,
) -> tuple[str, str]:
    """``(outcome, reason)`` of a turn.

    Args:
        reused: prompt tokens whose KV was reused.
        could: tokens the session's history shares with the prompt (what a full reuse would give).
        had: tokens the session's history holds that the prompt can use.
        fault: the first fault met while reusing ("" when none).
        new: the session had no history.
        history_fault: why the history itself is in doubt ("history_lost", "store_unavailable",
            "store_timeout"); a turn on such a history is never a hit.
        confirmed: the store confirmed the history is the session's current one.
    """
    if reused == 0:
        return "miss", fault or ("new_session" if new else "prefix_diverged")
    if reused < could:
        return "partial", fault or "chunk_missing"
    if reused < had:
        return "partial", "prefix_diverged"
    if history_fault or not confirmed:
        # Everything this worker holds was reused, but the store did not confirm it is the
        # session's whole history (it was away, or an earlier turn may be missing): not a hit.
        return "partial", history_fault or fault or "store_unavailable"
    return "hit", ""
