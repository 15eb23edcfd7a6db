"""`gearkv demo` end to end (short): its own redis-server and store, JSON figures, nothing left running."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gearkv.worker import demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _children() -> dict[int, str]:
    """PID -> command line of this process's live children (redis-server, the store, ...)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            if ppid == os.getpid() and state != "Z":
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_demo_runs_resumes_from_the_store_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    before = _children()  # other tests' session-scoped servers are not the demo's to stop
    code = demo.main(["--turns", "3", "--max-new-tokens", "6", "--chunk-size", "128", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    turns = doc["turns"]
    assert len(turns) == 3
    for t in turns:
        for key in (
            "tokens_reused",
            "tokens_prefilled",
            "ttft_s",
            "ttft_cold_s",
            "bytes_raw",
            "bytes_stored",
            "outcome",
        ):
            assert key in t
        assert t["bytes_raw"] > t["bytes_stored"] > 0 and t["ttft_cold_s"] > 0
    assert turns[0]["outcome"] == "miss" and turns[0]["tokens_reused"] == 0
    for t in turns[1:]:
        assert t["outcome"] == "hit" and t["source"] == "store" and t["tokens_reused"] > 500
    left = [c for pid, c in _children().items() if pid not in before]
    assert not [c for c in left if "redis-server" in c or "gearkv.cli store" in c]


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--turns", "0"]) == 2
    assert demo.main(["--codec", "zip"]) == 2
    assert "--codec" in capsys.readouterr().err


def test_passages_fall_back_to_the_bundled_text(tmp_path: Path) -> None:
    bundled = demo.load_passages(tmp_path / "missing.txt")
    assert len(bundled) == 4 and all(len(p) > 1000 for p in bundled)
    script = demo.build_script(bundled, 6)
    assert len(script) == 6 and bundled[0] in script[0] and "{p}" not in "".join(script)
