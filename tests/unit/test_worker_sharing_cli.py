"""`gearkv calibrate-sharing` on a tiny random-weight model: options, progress, the plan file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import gearkv.worker.model as model_mod
import pytest
import torch
import transformers
from gearkv.cli import HelpFormatter, main
from gearkv.worker.calibrate import select_texts
from gearkv.worker.fingerprint import model_fingerprint
from gearkv.worker.model import LoadedModel
from gearkv.worker.sharing import load_plan

VOCAB = 128


class Tokenizer:
    """A byte tokenizer with the little the fingerprint reads (vocabulary, special tokens)."""

    all_special_tokens: tuple[str, ...] = ()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + b % (VOCAB - 3) for b in text.encode()]

    def get_vocab(self) -> dict[str, int]:
        return {f"b{i}": i for i in range(VOCAB)}


def tiny_loaded() -> LoadedModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return LoadedModel(model, Tokenizer(), "tiny", torch.device("cpu"), torch.float32)


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    made = tiny_loaded()
    seen: list[tuple[Any, ...]] = []

    def load(*args: Any, **kw: Any) -> LoadedModel:
        seen.append(args)
        return made

    monkeypatch.setattr(model_mod, "load_model", load)
    return made


def test_calibrate_sharing_writes_a_plan_for_the_model_and_reports_it(
    loaded: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question. " * 200)
    out = tmp_path / "plan.json"
    argv = ["calibrate-sharing", "--calibration-file", str(text), "--out", str(out), "--max-shared", "1"]
    argv += ["--cos-threshold", "-1", "--max-ppl-ratio", "100", "--passages", "3", "--passage-tokens", "16"]
    argv += ["--held-out-tokens", "64", "--max-candidates", "3"]
    assert main(argv) == 0
    plan = load_plan(out)
    assert plan.fingerprint == model_fingerprint(loaded) and plan.model == "tiny"
    assert plan.shared_layers == 1 and plan.num_layers == 4
    assert plan.thresholds.max_ppl_ratio == 100 and plan.quality.calibration_passages == 3
    captured = capsys.readouterr()
    assert "layers shared" in captured.out and "1 of 4" in captured.out
    assert "baseline measured" in captured.err and "kept" in captured.err  # progress lines on stderr


def test_nothing_safe_is_reported_and_still_written(
    loaded: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("All the world's a stage, and all the men and women merely players. " * 100)
    out = tmp_path / "plan.json"
    argv = ["calibrate-sharing", "--calibration-file", str(text), "--out", str(out)]
    argv += ["--passages", "2", "--passage-tokens", "16", "--held-out-tokens", "64", "--max-candidates", "2"]
    argv += ["--max-ppl-ratio", "1", "--min-top1-agreement", "1"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["shared"] == {}
    assert "Nothing is safe to share" in capsys.readouterr().out


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate-sharing", "--calibration-file", str(tmp_path / "none.txt"), "--out", "p.json"])
    assert exit_.value.code == 2 and "cannot read --calibration-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate-sharing", "--max-shared", "-1", "--out", "p.json"])
    assert "--max-shared" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class Parsed(Exception):
        pass

    parsers: list[argparse.ArgumentParser] = []

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parsers.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(Parsed):
        main(["calibrate-sharing"])
    parser = parsers[0]
    assert parser.formatter_class is HelpFormatter
    formatter = parser._get_formatter()
    for action in (a for a in parser._actions if a.option_strings and a.dest != "help"):
        help_ = formatter._expand_help(action)
        assert help_.strip() and help_.count("default") <= 1, help_
        if action.default not in (None, False, ""):
            assert "default" in help_, action.option_strings


def test_without_a_held_out_file_the_last_fifth_is_held_out() -> None:
    text = "".join(chr(65 + i % 26) for i in range(100_000))
    texts, held = select_texts(text, None, passages=5, passage_tokens=10, held_out_tokens=100)
    assert len(texts) == 5 and all(len(t) == 120 for t in texts)
    assert held == [text[80_000:81_200]]
    assert all(text.index(t) + len(t) <= 80_000 for t in texts)  # the guard never sees calibration text
    texts, held = select_texts("short", "other", passages=5, passage_tokens=10, held_out_tokens=100)
    assert texts == ["short"] and held == ["other"]
