"""The worker's pure turn rules: which history a turn continues, what it is called, admission."""

from __future__ import annotations

import pytest
from gearkv.worker.history import Continue, LocalState, classify, settle


@pytest.mark.parametrize(
    ("local", "store_version", "expected"),
    [
        # nothing kept here: the store's history (or a new session)
        (None, 0, Continue.STORE),
        (None, 7, Continue.STORE),
        # a committed record, current or not
        (LocalState(3, unsynced=False, pending=False), 3, Continue.LOCAL),
        (LocalState(3, unsynced=False, pending=False), 4, Continue.STORE),  # another worker advanced it
        (LocalState(3, unsynced=False, pending=False), 0, Continue.STORE),  # deleted or expired: trust it
        # answered turns the store does not have yet
        (LocalState(3, unsynced=True, pending=False), 3, Continue.LOCAL),  # the push failed: carry it
        (LocalState(3, unsynced=True, pending=True), 3, Continue.LOCAL),  # its push is still running
        (LocalState(3, unsynced=True, pending=True), 4, Continue.LOCAL),  # its push just landed
        (LocalState(3, unsynced=True, pending=False), 4, Continue.STORE_LOST),  # overtaken elsewhere
        (LocalState(3, unsynced=True, pending=True), 5, Continue.STORE_LOST),
        (LocalState(3, unsynced=True, pending=False), 1, Continue.LOCAL_RECOMMIT),  # store lost commits
        (LocalState(3, unsynced=True, pending=False), 0, Continue.LOCAL_RECOMMIT),
    ],
)
def test_settle(local: LocalState | None, store_version: int, expected: Continue) -> None:
    assert settle(local, store_version) is expected


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"reused": 0, "could": 0, "had": 0, "fault": "", "new": True}, ("miss", "new_session")),
        (
            {"reused": 0, "could": 50, "had": 50, "fault": "store_unavailable", "new": False},
            ("miss", "store_unavailable"),
        ),
        ({"reused": 0, "could": 0, "had": 50, "fault": "", "new": False}, ("miss", "prefix_diverged")),
        (
            {"reused": 20, "could": 50, "had": 50, "fault": "chunk_corrupt", "new": False},
            ("partial", "chunk_corrupt"),
        ),
        ({"reused": 20, "could": 50, "had": 50, "fault": "", "new": False}, ("partial", "chunk_missing")),
        ({"reused": 30, "could": 30, "had": 50, "fault": "", "new": False}, ("partial", "prefix_diverged")),
        ({"reused": 50, "could": 50, "had": 50, "fault": "", "new": False}, ("hit", "")),
        # everything reused, but the history is in doubt: never a hit
        (
            {
                "reused": 50,
                "could": 50,
                "had": 50,
                "fault": "",
                "new": False,
                "history_fault": "history_lost",
            },
            ("partial", "history_lost"),
        ),
        (
            {"reused": 50, "could": 50, "had": 50, "fault": "", "new": False, "confirmed": False},
            ("partial", "store_unavailable"),
        ),
        (
            {
                "reused": 50,
                "could": 50,
                "had": 50,
                "fault": "",
                "new": False,
                "history_fault": "store_timeout",
                "confirmed": False,
            },
            ("partial", "store_timeout"),
        ),
    ],
)
def test_classify(kw: dict[str, object], expected: tuple[str, str]) -> None:
    assert classify(**kw) == expected  # type: ignore[arg-type]


def test_admission_one_turn_per_session_and_a_bounded_number_in_flight() -> None:
    from gearkv.worker.admission import Admission
    from gearkv.worker.errors import SessionBusy, WorkerOverloaded
    from prometheus_client import CollectorRegistry, Gauge

    gauge = Gauge("in_flight", "turns", registry=CollectorRegistry())
    admission = Admission(2, gauge)
    release_a = admission.enter("a")
    with pytest.raises(SessionBusy, match="'a'"):
        admission.enter("a")
    admission.enter("b")
    with pytest.raises(WorkerOverloaded, match="max 2"):
        admission.enter("c")
    assert gauge._value.get() == 2
    release_a()
    release_a()  # idempotent: a closed turn's generator and its close() both release
    assert gauge._value.get() == 1
    admission.enter("a")
