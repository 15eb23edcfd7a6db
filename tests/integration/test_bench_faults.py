"""`gearkv bench faults` at tiny size: the cheapest scenarios run for real and keep the gate's promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gearkv.bench import faults

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = faults.Size.tiny()
COLUMNS = {
    "name",
    "attempted",
    "acknowledged",
    "errors_by_status",
    "outage_s",
    "lost",
    "corrupt_reads",
    "dangling_manifests",
    "recovery_s",
    "crashes",
    "note",
}


def check_row(row: dict[str, Any]) -> None:
    assert row.keys() >= COLUMNS, COLUMNS - row.keys()
    assert row["ran"] is True, row["note"]
    assert isinstance(row["errors_by_status"], dict)
    assert "UNKNOWN" not in row["errors_by_status"]
    assert row["acknowledged"] > 0 and row["attempted"] >= row["acknowledged"]
    assert row["corrupt_reads"] == 0 and row["crashes"] == 0
    assert faults.row_failures(row) == []


def test_redis_killed_with_aof_loses_no_acknowledged_turn() -> None:
    row = faults.run_scenario("redis-kill-aof", TINY)
    check_row(row)
    assert row["lost"] == 0 and row["dangling_manifests"] == 0
    assert row["errors_by_status"].get("UNAVAILABLE", 0) > 0
    assert row["outage_s"] >= faults.REDIS_DOWN_S - 0.5 and row["recovery_s"] is not None


def test_store_killed_between_chunks_and_commit() -> None:
    row = faults.run_scenario("store-kill-before-commit", TINY)
    check_row(row)
    assert row["lost"] == 0 and row["dangling_manifests"] == 0


def test_client_cancelling_mid_stream_stores_nothing_partial(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    code = faults.main(
        ["--quick", "--only", "client-cancel", "--skip-fuzz", "--skip-load", "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["gate"] == "pass" and report["fuzz"] == {"skipped": "--skip-fuzz"}
    (row,) = report["scenarios"]
    check_row(row)
    assert row["lost"] == 0 and row["cancelled_uploads"] > 0


def test_a_failing_row_fails_the_gate() -> None:
    bad = faults.row("x", None, faults.Verified(corrupt_reads=1))
    assert faults.gate([bad], {}) == ["x: corrupt reads served"]
    lossy = faults.row("y", None, faults.Verified(lost=2), lossless=True)
    assert faults.gate([lossy], {"unknown_status": 1}) == [
        "y: acknowledged turns lost",
        "fuzz: 1 UNKNOWN answers",
    ]
    assert faults.gate([faults.row("z", None, faults.Verified(lost=2))], {}) == []  # reported, not gated
