"""The quick fuzz profile in CI: every KVStore and Worker RPC, the gate must pass (gearkv bench fuzz)."""

from __future__ import annotations

import pytest
from gearkv.bench.fuzz import STORE_RPCS, WORKER_RPCS, run_fuzz

pytestmark = pytest.mark.integration


def test_quick_fuzz_profile_passes_the_gate() -> None:
    result = run_fuzz(quick=True, seed=0)
    assert result["unknown_status"] == 0, result["findings"]
    assert result["internal_status"] == 0, result["findings"]
    assert result["crashes"] == 0, result["findings"]
    assert result["leaks"] == 0, result["findings"]
    assert result["harness_errors"] == 0, result["findings"]
    assert result["gate"] == "pass"
    for rpc in (*STORE_RPCS, *WORKER_RPCS):
        assert result["inputs_tried"].get(rpc, 0) >= 10, rpc
        assert result["wire_inputs"].get(rpc, 0) >= 3, rpc
    assert result["inputs_total"] == sum(result["inputs_tried"].values())
    assert result["log_records_scanned"] > 0
