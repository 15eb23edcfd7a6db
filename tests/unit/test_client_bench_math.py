"""Pure figures of `gearkv bench store`: percentiles and the JSON summary."""

from __future__ import annotations

from dataclasses import replace

import pytest
from gearkv.bench.progress import progress
from gearkv.bench.store import (
    BenchConfig,
    Latency,
    Sample,
    Throughput,
    bench_config,
    mb_per_s,
    percentile,
    summarize,
)
from hypothesis import given
from hypothesis import strategies as st


def test_percentile_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([3.0], 99) == 3.0


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_is_a_sample_within_bounds(samples: list[float], q: float) -> None:
    p = percentile(samples, q)
    assert p in samples and min(samples) <= p <= max(samples)


def test_mb_per_s() -> None:
    assert mb_per_s(10 * 1024 * 1024, 2.0) == 5.0
    assert mb_per_s(1, 0.0) == 0.0


def test_summary_has_the_required_keys() -> None:
    tp = [Throughput(1, 10)]
    for phase, rates in {
        "raw_push": (90, 100, 110),
        "push": (70,),
        "raw_pull": (1000,),
        "pull": (500,),
    }.items():
        tp[0].samples[phase] += [Sample(r, {"bench": 1.0, "store": 2.0}) for r in rates]
    lat = {
        side: {k: Latency(int(k), [f / 1e3] * 50 + [2 * f / 1e3] * 2, wall_s=1.0) for k in ("1", "16", "64")}
        for side, f in (("raw", 10.0), ("store", 15.0))
    }
    out = summarize(BenchConfig.quick(), tp, lat)
    assert out["push_ratio"] == 0.7 and out["pull_ratio"] == 0.5
    assert out["p99_ms"] == {"1": 30.0, "16": 30.0, "64": 30.0}
    assert out["p50_ms"]["16"] == 15.0 and out["pull_mb_s"]["1"] == 52.0
    assert out["raw_p99_ms"]["64"] == 20.0 and out["p99_factor"]["64"] == 1.5
    assert set(out["p50_ms"]) == set(out["raw_p50_ms"]) == {"1", "16", "64"}
    assert out["targets"]["met"] is False  # pull 50 % < 60 %
    assert out["throughput"][0]["raw_push_mb_s"] == 100.0  # the median of the rounds
    assert out["throughput"][0]["cpu_ms_per_mib"]["pull"] == {"bench": 1.0, "store": 2.0}


@pytest.mark.parametrize("quick", [False, True])
def test_configs_cover_every_latency_level(quick: bool) -> None:
    cfg = BenchConfig.quick() if quick else BenchConfig()
    assert set(cfg.pulls_per_session) == {1, 16, 64}


def test_ratio_pairs_the_rounds_when_it_can() -> None:
    tp = Throughput(1, 10)
    for raw, store in ((100.0, 80.0), (50.0, 30.0), (200.0, 60.0)):  # the load changed between rounds
        tp.samples["raw_pull"].append(Sample(raw, {}))
        tp.samples["pull"].append(Sample(store, {}))
    assert tp.ratio("pull") == 0.6  # median of 0.8, 0.6, 0.3 (ratio of medians would say 0.6 too)
    tp.samples["pull"][1] = Sample(45.0, {})
    assert tp.ratio("pull") == 0.8  # per-round: 0.8, 0.9, 0.3; medians would give 60 / 100


def test_quick_sets_small_defaults_unless_the_user_gave_them() -> None:
    quick, full = bench_config(quick=True), bench_config(quick=False)
    assert (quick.rounds, quick.volume_mib) == (1, 32)
    assert (full.rounds, full.volume_mib) == (3, 256)
    assert bench_config(quick=True, rounds=5).rounds == 5
    assert bench_config(quick=True, volume_mib=8) == replace(quick, volume_mib=8)
    with pytest.raises(ValueError, match="--rounds must be >= 1"):
        bench_config(quick=True, rounds=0)
    # progress steps: a round of each size (1 and 4 MiB) and of each latency level (1, 16, 64)
    assert quick.steps == 5 and full.steps == 15


def test_progress_without_a_terminal_writes_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    # stderr captured is not a terminal (as in CI logs): one line per step, no bar, no control characters
    with progress(2, first="loading") as tick:
        tick("first step")
        tick("second step")
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == ""
    assert [line.split(" (")[0] for line in lines] == ["[1/2] first step", "[2/2] second step"]
    assert "\x1b" not in captured.err and "\r" not in captured.err
