"""Codec error bounds on real KV of the default model (SmolLM2-135M-Instruct, CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from gearkv.bench._kv_eval import KVEvaluator, load_windows, relative_errors
from gearkv.codec import Codec, decode, inspect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX, CONT = 256, 64
# (max K error, max V error, min ratio, max mean KL) on 256-token prefixes; the benchmark measures
# 768-token prefixes over 8 windows (docs/codec.md), these bounds leave room for the shorter chunk.
BOUNDS = {
    "fp16": (1e-3, 1e-3, 0.99, 1e-4),
    "kivi4": (0.06, 0.11, 3.1, 0.02),
    "gear4": (0.07, 0.12, 3.6, 0.01),
    "gear3": (0.13, 0.24, 4.7, 0.03),
    "kivi2": (0.26, 0.50, 5.2, 0.40),
    "gear2": (0.26, 0.50, 6.0, 0.15),
}


@pytest.fixture(scope="module")
def evaluator() -> Any:
    from gearkv.worker.model import load_model

    torch.set_num_threads(2)
    lm = load_model(device="cpu")
    windows = load_windows(lm.tokenizer, 1, PREFIX, CONT)  # one window per domain
    return KVEvaluator(lm.model, windows, PREFIX, batch=2)


def test_error_bounds_on_real_kv(evaluator: Any) -> None:
    kv = evaluator.kv[0]
    kls = {}
    for preset, (k_max, v_max, ratio_min, kl_max) in BOUNDS.items():
        codec = Codec.from_preset(preset)
        blob = codec.encode(kv)
        k_err, v_err = relative_errors(kv, decode(blob))
        assert k_err <= k_max and v_err <= v_max, (preset, k_err, v_err)
        assert inspect(blob).ratio >= ratio_min, preset
        quality = evaluator.quality(lambda layers, c=codec: decode(c.encode(layers)))
        assert quality.kl <= kl_max, (preset, quality)
        kls[preset] = quality.kl
    # GEAR's improvements buy quality at a higher ratio than KIVI's plain grouping.
    assert kls["gear2"] < kls["kivi2"]
    assert kls["gear4"] < kls["gear3"] < kls["gear2"]


def test_decoded_cache_types_and_devices(evaluator: Any) -> None:
    kv = evaluator.kv[0]
    blob = Codec.from_preset("gear3").encode([(k.float(), v.float()) for k, v in kv])  # the CPU worker's fp32
    layers = decode(blob)
    assert layers[0][0].dtype == torch.float32 and len(layers) == len(kv)
    assert layers[0][0].shape == kv[0][0].shape
    assert decode(blob, dtype=torch.bfloat16)[5][1].dtype == torch.bfloat16
