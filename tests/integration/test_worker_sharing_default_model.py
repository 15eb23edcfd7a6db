"""KVSharer on the default model: calibration's path, and `gearkv demo --sharing-plan` end to end
(its own redis-server and store, every turn on a fresh worker resuming only owner layers' KV)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gearkv.worker import demo, hf_cache
from gearkv.worker.engine import Engine
from gearkv.worker.sharing import SharingPlan, calibrate_sharing, load_plan, save_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_calibration_runs_on_the_default_model_within_its_caps(engine: Engine, fingerprint: str) -> None:
    text = demo.default_text_path()
    assert text is not None
    raw = text.read_text(encoding="utf-8")
    plan = calibrate_sharing(
        engine.model,
        engine.tokenizer,
        [raw[i * 20_000 : i * 20_000 + 600] for i in range(4)],
        held_out_texts=[raw[-3_000:]],
        fingerprint=fingerprint,
        max_shared=2,
        cos_threshold=0.9,
        max_ppl_ratio=10.0,
        passages=4,
        passage_tokens=32,
        held_out_tokens=256,
        max_candidates=2,
    )
    assert plan.num_layers == 30 and plan.quality.candidates_evaluated <= 2
    assert plan.quality.ppl_base > 1 and plan.quality.held_out_tokens == 255
    assert hf_cache.kv_sharing(engine.model) is None  # the shared engine is left as it was


def test_demo_with_a_sharing_plan_resumes_owner_layers_and_reports_the_savings(
    tmp_path: Path, fingerprint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = SharingPlan(fingerprint, 30, ((16, 11), (27, 11)), model="SmolLM2-135M-Instruct")
    save_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == plan
    out = tmp_path / "demo.json"
    argv = ["--turns", "2", "--max-new-tokens", "4", "--chunk-size", "128", "--no-cold"]
    assert demo.main([*argv, "--sharing-plan", str(tmp_path / "plan.json"), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["sharing_plan"]["shared"] == {"16": 11, "27": 11}
    first, second = doc["turns"]
    assert second["outcome"] == "hit" and second["source"] == "store" and second["tokens_reused"] > 500
    # the KV of every token but the last answer token: 28 owner layers x 3 heads x 64 dims x K, V x 16 bits
    cached = first["prompt_tokens"] + first["tokens_generated"] - 1
    assert first["bytes_raw"] == cached * 28 * 3 * 64 * 2 * 2
    assert second["shared_layers"] == 2 and second["bytes_saved_raw"] == second["bytes_raw"] * 2 // 28
    text = capsys.readouterr().out
    assert "2/30 layers shared" in text and "saved" in text, text


def test_demo_refuses_a_plan_for_another_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_plan(SharingPlan("other:123", 30, ((5, 1),)), tmp_path / "p.json")
    assert demo.main(["--turns", "1", "--sharing-plan", str(tmp_path / "p.json")]) == 2
    assert "calibrated for model 'other:123'" in capsys.readouterr().out
