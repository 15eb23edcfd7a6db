"""The codec calibration procedure (gearkv.worker.codec_calibration) on a tiny model, in seconds."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from gearkv.codec import Calibration, Codec, decode
from gearkv.worker import codec_calibration as cc
from gearkv.worker.calibrate_codec import main as calibrate_codec_main
from gearkv.worker.model import LoadedModel
from test_worker_engine import tiny_engine


class _Tokenizer:
    """The tiny model's byte tokenizer, callable like a transformers tokenizer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.inner.encode(text)}


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    base = tiny_engine().loaded
    return LoadedModel(base.model, _Tokenizer(base.tokenizer), "tiny", base.device, base.dtype)


TEXT = "".join(random.Random(0).choice("abcdefgh ijklmnop\n") for _ in range(2000))


def test_a_tiny_model_calibrates_in_seconds(loaded: LoadedModel) -> None:
    cal = cc.calibrate_codec(
        loaded, fingerprint="tiny:0", text=TEXT, text_name="t", windows=2, prefix=64, cont=16
    )
    assert (cal.fingerprint, cal.layers, cal.model, cal.text) == ("tiny:0", 2, "tiny", "t")
    assert cal.stats["measured"] == cal.stats["of"] == 4 and cal.stats["seconds"] < 30
    assert all(k is not None and k >= 0 for k in cal.stats["k_kl"] + cal.stats["v_kl"])
    lo, hi = cc.SCALE_CLAMP
    assert all(lo <= s <= hi for s in cal.k_scale + cal.v_scale)
    # it is a working calibration of this model's KV
    kv = [(k, v) for k, v in _prefix_kv(loaded)]
    blob = Codec.from_preset("gtc2", calibration=cal).encode(kv)
    assert len(decode(blob, calibration=cal)) == 2


def _prefix_kv(loaded: LoadedModel) -> list[Any]:
    import torch
    from gearkv.worker import hf_cache

    ids = torch.tensor([loaded.tokenizer(TEXT)["input_ids"][:40]])
    cache = hf_cache.new_cache(loaded.model.config)
    with torch.inference_mode():
        loaded.model(input_ids=ids, **hf_cache.forward_kwargs(loaded.model, cache))
    return hf_cache.export_kv(cache)


def test_out_of_time_layers_keep_the_presets_steps(loaded: LoadedModel) -> None:
    cal = cc.calibrate_codec(
        loaded, fingerprint="tiny:0", text=TEXT, windows=1, prefix=32, cont=8, max_seconds=1e-9
    )
    assert cal.stats["measured"] == 0
    assert cal.k_scale == cal.v_scale == (1.0, 1.0)


def test_a_text_too_short_for_one_window_is_refused(loaded: LoadedModel) -> None:
    with pytest.raises(ValueError, match="calibration text has"):
        cc.calibrate_codec(loaded, fingerprint="tiny:0", text="ab", windows=1, prefix=32, cont=8)


def test_costlier_layers_get_finer_steps() -> None:
    scales = cc.scales_from_kl([1e-4, 1e-3, 1e-2])
    assert scales[0] > scales[1] > scales[2]
    assert math.isclose(scales[1], 1.0) and math.isclose(scales[0] * scales[2], 1.0)
    assert math.isclose(scales[2], 10**-cc.POWER)
    lo, hi = cc.SCALE_CLAMP
    assert cc.scales_from_kl([1e-12, 1.0]) == [hi, lo]  # clamped
    assert cc.scales_from_kl([0.0, 0.0]) == [1.0, 1.0]  # nothing to tell apart


def test_ensure_calibration_makes_it_once_and_replaces_a_bad_cache(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEARKV_CACHE_DIR", str(tmp_path))
    made: list[str] = []

    def fake(_loaded: Any, *, fingerprint: str, **_kw: Any) -> Calibration:
        made.append(fingerprint)
        return Calibration.uniform(2, fingerprint=fingerprint)

    monkeypatch.setattr(cc, "calibrate_codec", fake)
    path = cc.default_calibration_path("tiny:0")
    assert path.is_relative_to(tmp_path)
    first = cc.ensure_calibration(loaded, "tiny:0")
    assert path.is_file() and made == ["tiny:0"]
    assert cc.ensure_calibration(loaded, "tiny:0") == first and made == ["tiny:0"]  # from the cache
    path.write_text(path.read_text().replace("1.0", "1.5", 1))  # damaged: checksum mismatch
    cc.ensure_calibration(loaded, "tiny:0")
    assert made == ["tiny:0", "tiny:0"] and Calibration.load(path).fingerprint == "tiny:0"
    other = tmp_path / "other.json"
    Calibration.uniform(2, fingerprint="other:1").save(other)  # another model's file is not used
    assert cc.ensure_calibration(loaded, "tiny:0", other).fingerprint == "tiny:0"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--windows", "0"], "--windows"),
        (["--max-seconds", "0"], "--max-seconds"),
        (["--text", "/nonexistent/calibration.txt"], "cannot read --text"),
    ],
)
def test_cli_refuses_bad_arguments_before_loading_a_model(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        calibrate_codec_main([*argv, "--out", str(tmp_path / "cal.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
