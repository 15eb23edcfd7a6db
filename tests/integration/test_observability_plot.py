"""`gearkv bench resume` draws its plot (resumed vs recomputed TTFT, bytes held per preset)."""

from __future__ import annotations

import shutil
from pathlib import Path

from gearkv.bench import resume

ROOT = Path(__file__).resolve().parents[2]


def test_plot_from_a_run_json(tmp_path: Path) -> None:
    run = tmp_path / "resume.json"
    shutil.copy(ROOT / "bench/results/resume.json", run)
    assert resume.main(["--plot-from", str(run)]) == 0
    png = (tmp_path / "resume.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
