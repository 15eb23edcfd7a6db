"""`gearkv bench store --quick` end to end: own redis-server, the store as a child process, JSON out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gearkv.bench.store import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_store_quick_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store.json"
    assert main(["--quick", "--volume-mib", "8", "--json", str(out)], prog="gearkv bench store") == 0
    result = json.loads(out.read_text())
    for key in ("pull_ratio", "push_ratio"):
        assert result[key] > 0
    for key in ("p50_ms", "p99_ms", "raw_p50_ms", "raw_p99_ms"):
        assert set(result[key]) == {"1", "16", "64"} and all(v > 0 for v in result[key].values())
    assert [t["size_mib"] for t in result["throughput"]] == [1, 4]
    assert "Throughput" in capsys.readouterr().out
