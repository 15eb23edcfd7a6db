"""Contract tests for the one transformers adapter (gearkv.worker.hf_cache).

Tiny random-weight models of several architectures (GQA, MQA, different head_dims, sliding windows,
fp32/bf16) are built locally: generation continued from an exported and re-imported cache must equal
generation continued from the original cache, bit for bit.

Every test here turns transformers' ``FutureWarning`` s into errors: a deprecated call on the worker's
path (``past_key_values=`` where a model takes ``cache=``) fails here before a release removes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import transformers
from gearkv.worker import hf_cache
from gearkv.worker.engine import Engine, SamplingParams
from gearkv.worker.model import LoadedModel
from support.tiny_models import VOCAB, common_config

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

torch.set_num_threads(1)


def _common(**kw: Any) -> dict[str, Any]:
    return common_config(**kw)


CONFIGS: dict[str, Callable[[], Any]] = {
    # GQA (4 query heads over 2 KV heads), head_dim 16
    "llama-gqa": lambda: transformers.LlamaConfig(**_common()),
    # MQA with a head_dim that is not hidden/heads
    "llama-mqa-hd32": lambda: transformers.LlamaConfig(**_common(num_key_value_heads=1, head_dim=32)),
    # sliding window shorter than the test sequence: the cache must keep every position anyway
    "mistral-sliding": lambda: transformers.MistralConfig(**_common(sliding_window=12)),
    "qwen2": lambda: transformers.Qwen2Config(**_common(num_key_value_heads=1)),
    "phi3": lambda: transformers.Phi3Config(**_common(num_key_value_heads=4, pad_token_id=0)),
    "gemma": lambda: transformers.GemmaConfig(**_common(num_key_value_heads=1, head_dim=24)),
    # Gemma 2 style: alternating sliding/full layers, soft-capping
    "gemma2-hybrid": lambda: transformers.Gemma2Config(
        **_common(head_dim=16, sliding_window=10, query_pre_attn_scalar=16)
    ),
}


def tiny_model(name: str, dtype: torch.dtype = torch.float32) -> Any:
    torch.manual_seed(0)
    config = CONFIGS[name]()
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()


@torch.inference_mode()
def greedy(model: Any, cache: Any, ids: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Feed ``ids`` on top of ``cache``, then decode ``steps`` tokens greedily; returns tokens and logits."""
    out = model(input_ids=torch.tensor([ids]), **hf_cache.forward_kwargs(model, cache))
    tokens: list[int] = []
    logits: list[torch.Tensor] = []
    for _ in range(steps):
        last = out.logits[0, -1]
        logits.append(last.float().clone())
        nxt = int(last.argmax())
        tokens.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), **hf_cache.forward_kwargs(model, cache))
    return tokens, logits


def _prompt(n: int, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(3, VOCAB, (n,), generator=g)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resumed_generation_is_identical(name: str, dtype: torch.dtype) -> None:
    model = tiny_model(name, dtype)
    prompt, follow = _prompt(20), _prompt(7, seed=2)
    with torch.inference_mode():
        original = hf_cache.new_cache(model.config)
        model(input_ids=torch.tensor([prompt]), **hf_cache.forward_kwargs(model, original))
        exported = [(k.clone(), v.clone()) for k, v in hf_cache.export_kv(original)]
    assert hf_cache.kv_tokens(exported) == len(prompt)
    assert all(k.dtype == dtype for k, _ in exported)
    resumed = hf_cache.import_kv(exported, model.config)
    assert hf_cache.cache_length(resumed) == len(prompt)

    snapshot = [(k.clone(), v.clone()) for k, v in exported]
    want_tokens, want_logits = greedy(model, original, follow, steps=8)
    got_tokens, got_logits = greedy(model, resumed, follow, steps=8)
    assert got_tokens == want_tokens
    # the resumed cache adopted `exported` without copying; generation never wrote into it
    for (k, v), (k0, v0) in zip(exported, snapshot, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    for want, got in zip(want_logits, got_logits, strict=True):
        assert torch.equal(want, got)


@pytest.mark.parametrize("name", ["mistral-sliding", "gemma2-hybrid", "llama-gqa"])
def test_resumed_cache_matches_a_full_forward(name: str) -> None:
    """The full-layer cache still honours sliding windows: same logits as one no-cache forward."""
    model = tiny_model(name)
    ids = _prompt(30)
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([ids])).logits[0, -1]
        first = hf_cache.new_cache(model.config)
        model(input_ids=torch.tensor([ids[:17]]), **hf_cache.forward_kwargs(model, first))
        resumed = hf_cache.import_kv([(k.clone(), v.clone()) for k, v in hf_cache.export_kv(first)])
        rest = model(input_ids=torch.tensor([ids[17:]]), **hf_cache.forward_kwargs(model, resumed))
    assert torch.allclose(rest.logits[0, -1], full, atol=1e-4, rtol=1e-4)


def test_export_range_crop_and_concat_round_trip() -> None:
    model = tiny_model("llama-gqa")
    ids = _prompt(25)
    with torch.inference_mode():
        cache = hf_cache.new_cache(model.config)
        model(input_ids=torch.tensor([ids]), **hf_cache.forward_kwargs(model, cache))
    whole = hf_cache.export_kv(cache)
    parts = [hf_cache.export_kv(cache, s, min(s + 8, 25)) for s in range(0, 25, 8)]
    assert [hf_cache.kv_tokens(p) for p in parts] == [8, 8, 8, 1]
    joined = hf_cache.concat_kv(parts)
    for (k1, v1), (k2, v2) in zip(whole, joined, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert hf_cache.kv_tokens(hf_cache.crop_kv(joined, 10)) == 10
    hf_cache.crop_cache(cache, 10)
    assert hf_cache.cache_length(cache) == 10
    assert torch.equal(hf_cache.export_kv(cache)[1][0], whole[1][0][:, :, :10])
    # the 16-bit figure: 2 layers x (K + V) x 2 kv heads x 10 tokens x head_dim 16 x 2 bytes
    assert hf_cache.kv_nbytes(hf_cache.export_kv(cache), bytes_per_element=2) == 2 * 2 * 2 * 10 * 16 * 2


def test_bad_inputs_are_rejected_with_the_reason() -> None:
    model = tiny_model("llama-gqa")
    with torch.inference_mode():
        cache = hf_cache.new_cache(model.config)
        model(input_ids=torch.tensor([_prompt(5)]), **hf_cache.forward_kwargs(model, cache))
    with pytest.raises(ValueError, match="outside"):
        hf_cache.export_kv(cache, 0, 6)
    with pytest.raises(ValueError, match="outside"):
        hf_cache.crop_cache(cache, 9)
    kv = hf_cache.export_kv(cache)
    with pytest.raises(ValueError, match="layers"):
        hf_cache.import_kv(kv[:1], model.config)
    with pytest.raises(ValueError, match="different token counts"):
        hf_cache.import_kv([kv[0], (kv[1][0][:, :, :3], kv[1][1][:, :, :3])])


def test_windowed_layer_that_dropped_tokens_is_not_exported() -> None:
    config = CONFIGS["mistral-sliding"]()
    model = tiny_model("mistral-sliding")
    windowed = transformers.DynamicCache(config=config)  # what a config-derived cache would do
    with torch.inference_mode():
        model(input_ids=torch.tensor([_prompt(20)]), **hf_cache.forward_kwargs(model, windowed))
    with pytest.raises(hf_cache.UnsupportedCacheError, match="positions"):
        hf_cache.export_kv(windowed)


def test_empty_cache() -> None:
    cache = hf_cache.new_cache()
    assert hf_cache.cache_length(cache) == 0
    assert hf_cache.export_kv(cache) == []
    assert hf_cache.concat_kv([]) == []


class _Bytes:
    """Token i is byte i (enough of a tokenizer for the engine's detokenizer)."""

    eos_token_id = 2

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_worker_path_raises_no_future_warning(name: str) -> None:
    """Prefill, decode, export, import and a resumed turn through the Engine, FutureWarnings as errors."""
    model = tiny_model(name)
    engine = Engine(LoadedModel(model, _Bytes(), name, torch.device("cpu"), torch.float32), prefill_block=8)
    prompt, follow = _prompt(20), _prompt(5, seed=2)
    params = SamplingParams(max_new_tokens=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        engine.warmup()
        first = engine.generate(prompt, params).run()
        held = engine.cached_ids(prompt, first)
        kv = [(k.clone(), v.clone()) for k, v in hf_cache.export_kv(first.cache)]
        resumed = hf_cache.import_kv(kv, model.config)
        second = engine.generate(held + follow, params, cache=resumed, reused=len(held)).run()
    assert hf_cache.kv_tokens(kv) == len(held)
    assert second.reused_tokens == len(held) and second.generated
