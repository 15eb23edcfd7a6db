"""`gearkv demo --prometheus`: a real Prometheus beside the demo, the savings read back from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gearkv.worker import demo

pytestmark = pytest.mark.integration


def test_demo_with_prometheus_reads_the_savings_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not on PATH: scripts/setup.sh installs Debian's prometheus package as root")
    out = tmp_path / "demo.json"
    args = ["--prometheus", "--turns", "2", "--max-new-tokens", "4", "--chunk-size", "128", "--no-cold"]
    assert demo.main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prometheus http://127.0.0.1:" in text and "gearkv_store_live_raw_bytes" in text
    assert "read back from Prometheus" in text
    doc = json.loads(out.read_text())
    figures, turns = doc["prometheus"], doc["turns"]
    # What the store holds now covers the session's last commit (superseded tail chunks wait for their TTL).
    assert figures["stored_bytes"] >= turns[-1]["bytes_stored"] > 0
    assert figures["raw_bytes"] > 3 * figures["stored_bytes"]
    assert figures["tokens_reused"]["store"] == turns[1]["tokens_reused"] > 0
    assert figures["tokens_prefilled"] == sum(t["tokens_prefilled"] for t in turns)
    assert set(figures["mean_ttft_s"]) == {"cold", "resumed"}


def test_demo_prometheus_refuses_an_in_process_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--prometheus", "--store-in-process"]) == 2
    assert "--prometheus" in capsys.readouterr().err
