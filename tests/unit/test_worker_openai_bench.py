"""`gearkv bench chat`'s pure parts: percentiles, the conversation scripts, rows per turn index."""

from __future__ import annotations

from gearkv.bench.chat import Run, Turn, percentile, rows_of, scripts


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert abs(percentile([4.0, 1.0, 3.0, 2.0], 0.95) - 3.85) < 1e-9


def test_each_conversation_opens_with_its_passage_then_follows_up() -> None:
    convs = scripts(["alpha", "beta"], 3)
    assert len(convs) == 2 and all(len(c) == 3 for c in convs)
    assert "alpha" in convs[0][0] and "beta" in convs[1][0]
    assert convs[0][1] != convs[1][1]  # distinct follow-ups: no shared tails between conversations


def turn(n: int, ttft: float, prefilled: int, reused: int = 0) -> Turn:
    return Turn(0, n, ttft, ttft + 1, prefilled + reused, 8, reused, prefilled, "hit" if reused else "miss")


def test_rows_pair_turn_indices_of_both_runs() -> None:
    gearkv = Run(
        "gearkv", 10.0, [turn(1, 1.0, 300), turn(1, 3.0, 300), turn(2, 0.5, 40, 256), turn(2, 0.7, 60, 256)]
    )
    recompute = Run(
        "recompute", 20.0, [turn(1, 1.0, 300), turn(1, 3.0, 300), turn(2, 2.0, 296), turn(2, 2.0, 316)]
    )
    first, second = rows_of(gearkv, recompute)
    assert (first.turn, first.ttft_p50_s, first.tokens_prefilled, first.tokens_reused) == (1, 2.0, 300, 0)
    assert (second.ttft_p50_s, second.ttft_p50_s_recompute, second.speedup_p50) == (0.6, 2.0, 3.33)
    assert (second.tokens_prefilled, second.tokens_prefilled_recompute, second.tokens_reused) == (
        50,
        306,
        256,
    )
    assert gearkv.throughput()["tokens_per_s"] == 3.2 and recompute.throughput()["turns"] == 4
