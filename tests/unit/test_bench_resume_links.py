"""`gearkv bench resume --link-gbps`: parsing, the by-link table and plot (no store, no model)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from gearkv.bench import resume


def _row(preset: str, gbps: float | None, resume_s: float, stored: int) -> resume.Row:
    return resume.Row(
        context_tokens=2048,
        preset=preset,
        resume_s=resume_s,
        recompute_s=5.0,
        overhead_s=resume_s - 0.06,
        redis_get_s=0.02,
        decode_s=0.03,
        floor_s=0.05,
        overhead_vs_floor=1.2,
        speedup=round(5.0 / resume_s, 1),
        pull_s=0.05,
        prefill_new_s=0.06,
        chunks=8,
        bytes_raw=47_185_920,
        bytes_stored=stored,
        ratio=round(47_185_920 / stored, 2),
        link_gbps=gbps,
        link_bytes=stored + 10_000 if gbps is not None else 0,
    )


def test_link_speeds_parse() -> None:
    assert resume._gbps_list("25,1, 10") == [1.0, 10.0, 25.0]
    assert resume._gbps_list("0.5") == [0.5]
    for bad in ("", "fast", "1,0", "-1", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            resume._gbps_list(bad)


def test_unknown_preset_is_refused_with_the_codecs_reason() -> None:
    assert resume._check_presets(["fp16", "gear4"]) == []
    [bad] = resume._check_presets(["no-such-preset"])
    assert bad.startswith("no-such-preset: ") and "preset" in bad[16:]
    with pytest.raises(SystemExit):
        resume.main(["--presets", "no-such-preset", "--link-gbps", "1"])


def test_table_and_plot_by_link_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        _row(preset, gbps, t + (stored * 8 / (gbps * 1e9) if gbps else 0.0), stored)
        for preset, stored in (("fp16", 47_200_000), ("gear4", 12_700_000))
        for gbps, t in ((None, 0.15), (1.0, 0.16), (10.0, 0.16), (25.0, 0.16))
    ]
    resume._print(rows)
    out = capsys.readouterr().out
    assert "by link speed" in out and "25 Gbps" in out and "loopback" in out and "47.2" in out
    # the JSON --json writes, drawn again by --plot-from (old runs' rows, without link fields, too)
    run = tmp_path / "resume.json"
    run.write_text(json.dumps({"benchmark": "resume", "rows": [asdict(r) for r in rows]}))
    assert resume.main(["--plot-from", str(run)]) == 0
    png = (tmp_path / "resume.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    old = [{k: v for k, v in asdict(r).items() if k not in ("link_gbps", "link_bytes")} for r in rows[:1]]
    run.write_text(json.dumps({"benchmark": "resume", "rows": old}))
    assert resume.main(["--plot-from", str(run)]) == 0
