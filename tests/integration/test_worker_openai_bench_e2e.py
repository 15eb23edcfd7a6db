"""`gearkv bench chat` at a tiny size: two `gearkv worker --http-port` processes (on a store, and
without one), its own redis-server and store, the openai client, JSON rows with the promised keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gearkv.bench import chat

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_chat_compares_gearkv_with_recompute(tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    args = ["--conversations", "2", "--turns", "2", "--passage-chars", "600", "--max-tokens", "8"]
    assert chat.main([*args, "--chunk-size", "64", "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    first, second = doc["rows"]
    for key in (
        "turn",
        "ttft_p50_s",
        "ttft_p50_s_recompute",
        "tokens_prefilled",
        "tokens_prefilled_recompute",
    ):
        assert key in first
    assert first["tokens_reused"] == 0 and first["tokens_prefilled"] == first["tokens_prefilled_recompute"]
    # the second turn re-sends the first: gearkv prefills only what follows its stored full chunks
    assert (
        second["tokens_reused"] >= 256
        and second["tokens_prefilled"] < second["tokens_prefilled_recompute"] - 200
    )
    assert second["tokens_prefilled_recompute"] == second["prompt_tokens"]
    assert doc["throughput"]["gearkv"]["turns"] == doc["throughput"]["recompute"]["turns"] == 4
    assert doc["errors"] == []
