"""`gearkv bench load` end to end, tiny: own redis-server, the stores, ramp, shedding, read-back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gearkv.bench.load import LoadConfig, load_config, main, run_load

pytestmark = pytest.mark.integration  # about 12 s on 2 cores

LIMIT_MS = 1000.0  # generous: other tests share the 2 cores
STEP_KEYS = {
    "phase",
    "sessions",
    "max_in_flight",
    "seconds",
    "turns_per_s",
    "pushes_per_s",
    "pulls_per_s",
    "push_mb_s",
    "pull_mb_s",
    "push_p50_ms",
    "push_p99_ms",
    "pull_p50_ms",
    "pull_p99_ms",
    "meta_p99_ms",
    "p99_ms",
    "admitted",
    "acknowledged_turns",
    "shed",
    "errors",
    "over_limit",
}


def check_result(result: dict[str, Any], ramp_steps: int) -> None:
    assert {"steps", "shedding_begins_at_sessions", "sustained", "acknowledged_turns", "lost"} <= set(result)
    assert {"corrupt_reads", "seconds", "shedding", "stopped_by", "verified", "config"} <= set(result)
    steps = result["steps"]
    assert all(set(s) == STEP_KEYS for s in steps)
    ramp = [s for s in steps if s["phase"] == "ramp"]
    assert [s["sessions"] for s in ramp] == [2**k for k in range(ramp_steps)]
    assert steps[-1]["phase"] == "shed"
    for s in ramp:  # requests were admitted and turns committed at every step
        assert s["admitted"] > 0 and s["pushes_per_s"] > 0 and s["acknowledged_turns"] > 0
        assert not s["errors"], s
    assert ramp[1]["pulls_per_s"] > 0  # sessions went on across steps, pulling their history
    assert result["stopped_by"] == "max_step"
    sustained = result["sustained"]
    assert sustained is not None and sustained["pushes_per_s"] > 0 and sustained["p99_ms"] <= LIMIT_MS
    # The store with a tiny --max-in-flight sheds, and what it admits stays fast: bounded, not queued.
    shed = result["shedding"]
    assert shed["shed"] > 0 and shed["admitted"] > 0, shed
    assert shed["p99_ms"] <= LIMIT_MS and shed["bounded"], shed
    assert steps[-1]["shed"] == shed["shed"] and not steps[-1]["errors"]
    # Every acknowledged commit read back whole and bit-exact.
    assert result["acknowledged_turns"] == sum(s["acknowledged_turns"] for s in steps) > 0
    assert result["verified"]["sessions"] > 0 and result["verified"]["chunks"] > 0
    assert result["lost"] == 0 and result["corrupt_reads"] == 0, result["verified"]


def test_bench_load_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "load.json"
    argv = [
        "--quick",
        "--max-step",
        "2",
        "--step-s",
        "1.5",
        "--p99-limit-ms",
        str(LIMIT_MS),
        "--json",
        str(out),
    ]
    assert main(argv, prog="gearkv bench load") == 0
    result = json.loads(out.read_text())
    check_result(result, ramp_steps=2)
    assert result["config"]["store_mode"] == "process" and result["config"]["chunk_kib"] == 128
    printed = capsys.readouterr().out
    assert "Load ramp" in printed and "bounded" in printed


def test_run_load_in_process_store_sheds_at_a_tiny_limit() -> None:
    cfg = LoadConfig(
        max_step=2,
        step_s=1.0,
        p99_limit_ms=LIMIT_MS,
        chunk_kib=16,
        max_turns=3,
        shed_sessions=8,
        shed_max_in_flight=1,
        shed_step_s=1.5,
    )
    ticks: list[str] = []
    result = run_load(quick=True, config=cfg, store_mode="thread", progress_tick=ticks.append)
    check_result(result, ramp_steps=2)
    assert result["config"]["store_mode"] == "thread" and result["shedding"]["max_in_flight"] == 1
    assert len(ticks) == cfg.steps


def test_load_config_refuses_bad_figures() -> None:
    assert load_config(True, max_step=3).levels == [1, 2, 4]
    assert load_config(False, max_in_flight=8).max_in_flight == 8
    bads: list[dict[str, Any]] = [
        {"max_step": 0},
        {"max_in_flight": 0},
        {"p99_limit_ms": 0.0},
        {"step_s": -1.0},
    ]
    for bad in bads:
        with pytest.raises(ValueError):
            load_config(True, **bad)
    with pytest.raises(ValueError, match="store_mode"):
        run_load(quick=True, store_mode="cluster")
