"""KVSharer on tiny random-weight models: applying a plan, the plan file, calibration.

A model run with a sharing map must equal a reference forward written out by hand here (shared layers
attend with their owner's keys and values), decoding step by step on the cache must equal the full
forward, and the cache holds only the owner layers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from gearkv.worker import hf_cache
from gearkv.worker.sharing import (
    FORMAT_VERSION,
    SharingPlan,
    SharingPlanError,
    SharingPlanMismatch,
    apply_plan,
    base_fingerprint,
    calibrate_sharing,
    load_plan,
    random_owners,
    save_plan,
    sharing_fingerprint,
    tentative,
)
from support.tiny_models import VOCAB, common_config

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

torch.set_num_threads(1)


def _common(**kw: Any) -> dict[str, Any]:
    return common_config(**{"num_hidden_layers": 5, **kw})


def tiny(config: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny(transformers.LlamaConfig(**_common()))


def ids(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, n), generator=g)


# -- a plain reference: a Llama forward written out, with shared layers using their owner's KV --------


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def reference_logits(model: Any, token_ids: torch.Tensor, owners: dict[int, int]) -> torch.Tensor:
    """``[tokens, vocab]`` logits of a Llama computed layer by layer with ``owners`` sharing."""
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    n = token_ids.shape[1]
    pos = torch.arange(n, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(pos, inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()  # [n, hd]
    causal = torch.full((n, n), float("-inf")).triu(1)
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        h = model.model.embed_tokens(token_ids)[0]  # [n, hidden]
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            x = _rms(h, layer.input_layernorm.weight, cfg.rms_norm_eps)
            q = attn.q_proj(x).view(n, heads, hd).transpose(0, 1)  # [heads, n, hd]
            q = q * cos + _rotate_half(q) * sin
            if i in owners:
                k, v = kv[owners[i]]  # the owner's keys (after RoPE) and values; no k/v projection
            else:
                k = attn.k_proj(x).view(n, kv_heads, hd).transpose(0, 1)
                k = k * cos + _rotate_half(k) * sin
                v = attn.v_proj(x).view(n, kv_heads, hd).transpose(0, 1)
                kv[i] = (k, v)
            rep = heads // kv_heads
            kk, vv = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            scores = q @ kk.transpose(-1, -2) * hd**-0.5 + causal
            out = (scores.softmax(-1) @ vv).transpose(0, 1).reshape(n, heads * hd)
            h = h + attn.o_proj(out)
            x = _rms(h, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
            mlp = layer.mlp
            h = h + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        h = _rms(h, model.model.norm.weight, cfg.rms_norm_eps)
        return model.lm_head(h)


def forward(model: Any, token_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=token_ids, **hf_cache.forward_kwargs(model, cache)).logits[0]


@pytest.mark.parametrize("owners", [{}, {3: 1}, {2: 0, 3: 0, 4: 1}], ids=["none", "one", "three"])
def test_a_shared_model_matches_the_reference_forward_and_caches_only_owner_layers(
    llama: Any, owners: dict[int, int]
) -> None:
    x = ids(23)
    reference = reference_logits(llama, x, owners)
    unshared = reference_logits(llama, x, {})
    hf_cache.share_kv(llama, owners)
    try:
        cache = hf_cache.new_cache()
        got = forward(llama, x, cache)
        assert torch.allclose(got, reference, atol=1e-5, rtol=1e-4)
        assert len(cache.layers) == 5 - len(owners)  # one slot per owner layer
        if owners:
            assert not torch.allclose(got, unshared, atol=1e-3)  # the sharing does change the outputs
    finally:
        hf_cache.unshare_kv(llama)
    assert torch.allclose(forward(llama, x, hf_cache.new_cache()), unshared, atol=1e-5, rtol=1e-4)


def _decode_matches_full_forward(model: Any, owners: dict[int, int], n: int = 20) -> None:
    x = ids(n, seed=3)
    hf_cache.share_kv(model, owners)
    try:
        full = forward(model, x, hf_cache.new_cache())
        cache = hf_cache.new_cache()
        steps = [forward(model, x[:, :7], cache)]
        for t in range(7, n):
            steps.append(forward(model, x[:, t : t + 1], cache))
        assert torch.allclose(torch.cat(steps), full, atol=1e-4, rtol=1e-4)
        # the exported cache (owner layers only) resumes exactly like the live one
        kv = hf_cache.export_kv(cache, 0, n - 3)
        resumed = hf_cache.import_kv(kv, layers=model.config.num_hidden_layers - len(owners))
        tail = forward(model, x[:, n - 3 :], resumed)
        assert torch.allclose(tail, full[n - 3 :], atol=1e-4, rtol=1e-4)
    finally:
        hf_cache.unshare_kv(model)


def test_decoding_step_by_step_with_the_cache_matches_the_full_forward(llama: Any) -> None:
    _decode_matches_full_forward(llama, {2: 0, 4: 1})


ARCHS: dict[str, Any] = {
    "qwen2-bias": lambda: transformers.Qwen2Config(**_common(num_key_value_heads=1)),
    "mistral-sliding": lambda: transformers.MistralConfig(**_common(sliding_window=6)),
    "gemma2-softcap": lambda: transformers.Gemma2Config(
        **_common(head_dim=16, sliding_window=6, query_pre_attn_scalar=16)
    ),
    "qwen3-qk-norm": lambda: transformers.Qwen3Config(**_common(head_dim=16)),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_other_architectures_with_the_standard_layout_decode_like_their_full_forward(arch: str) -> None:
    model = tiny(ARCHS[arch]())
    x = ids(12)
    plain = forward(model, x, hf_cache.new_cache())
    hf_cache.share_kv(model, {3: 1, 4: 1})
    try:
        assert not torch.allclose(forward(model, x, hf_cache.new_cache()), plain, atol=1e-4)
    finally:
        hf_cache.unshare_kv(model)
    _decode_matches_full_forward(model, {3: 1, 4: 1})


def test_a_model_without_the_standard_layout_is_a_clear_error() -> None:
    phi3 = tiny(transformers.Phi3Config(**_common(num_key_value_heads=4)))  # fused qkv_proj
    with pytest.raises(hf_cache.UnsupportedSharingError, match="standard attention layout"):
        hf_cache.share_kv(phi3, {2: 0})
    assert hf_cache.kv_sharing(phi3) is None


def test_invalid_maps_and_a_forward_without_cache_are_clear_errors(llama: Any) -> None:
    with pytest.raises(hf_cache.UnsupportedSharingError, match="earlier layer"):
        hf_cache.share_kv(llama, {1: 3})
    with pytest.raises(hf_cache.UnsupportedSharingError, match="itself shared"):
        hf_cache.share_kv(llama, {2: 1, 1: 0})
    hf_cache.share_kv(llama, {2: 0})
    try:
        assert hf_cache.share_kv(llama, {2: 0}).owners == {2: 0}  # the same map again: a no-op
        with pytest.raises(hf_cache.UnsupportedSharingError, match="another map"):
            hf_cache.share_kv(llama, {3: 0})
        with pytest.raises(hf_cache.UnsupportedSharingError, match="with a cache"), torch.no_grad():
            llama(input_ids=ids(4), use_cache=False)
    finally:
        hf_cache.unshare_kv(llama)


# -- the plan file ---------------------------------------------------------------------------------


def plan(**kw: Any) -> SharingPlan:
    base: dict[str, Any] = {"fingerprint": "tiny:0", "num_layers": 5, "shared": ((4, 1), (2, 0))}
    return SharingPlan(**(base | kw))


def test_a_plan_round_trips_through_its_file(tmp_path: Path) -> None:
    p = plan(model="tiny")
    save_plan(p, tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["version"] == FORMAT_VERSION and data["shared"] == {"2": 0, "4": 1}
    loaded = load_plan(tmp_path / "plan.json")
    assert loaded == p and loaded.owners == {2: 0, 4: 1} and loaded.kv_layers == 3
    assert loaded.digest == p.digest and len(p.digest) == 12
    assert plan(shared=((2, 0),)).digest != p.digest
    assert plan(shared=()).digest == ""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.update(format="other"), "not a sharing plan"),
        (lambda d: d.update(shared={"2": 3}), "owner must be an earlier layer"),
        (lambda d: d.update(shared={"3": 2, "2": 0}, digest=None), "chains must be resolved"),
        (lambda d: d.update(shared={"2": "x"}), "owner must be an integer"),
        (lambda d: d.update(fingerprint=""), "fingerprint"),
        (lambda d: d["thresholds"].update(max_ppl_ratio=0.5), "max_ppl_ratio"),
        (lambda d: d["quality"].update(colour=1), "unknown fields"),
        (lambda d: d.update(shared={"3": 0}), "digest"),
    ],
)
def test_an_invalid_plan_file_names_the_file_and_the_problem(tmp_path: Path, edit: Any, message: str) -> None:
    data = plan().to_json()
    edit(data)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SharingPlanError, match=message) as err:
        load_plan(path)
    assert "bad.json" in str(err.value)


def test_unreadable_plan_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SharingPlanError, match="cannot read"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SharingPlanError, match="not JSON"):
        load_plan(tmp_path / "x.json")


def test_the_plan_belongs_to_one_model_and_names_the_kv_namespace() -> None:
    p = plan()
    p.check_model("tiny:0")
    with pytest.raises(SharingPlanMismatch, match="calibrated for model 'tiny:0'"):
        p.check_model("other:1")
    fp = sharing_fingerprint("tiny:0", p)
    assert fp == f"tiny:0:share-{p.digest}" and base_fingerprint(fp) == "tiny:0"
    assert sharing_fingerprint("tiny:0", plan(shared=())) == "tiny:0" == sharing_fingerprint("tiny:0", None)


def test_apply_plan_checks_the_layer_count(llama: Any) -> None:
    with pytest.raises(SharingPlanError, match="for 7 layers, the model has 5"):
        apply_plan(llama, plan(num_layers=7))


def test_chains_resolve_to_the_final_owner() -> None:
    assert tentative({3: 1}, 5, 3) == {3: 1, 5: 1}  # 5 -> 3 -> 1
    assert tentative({3: 1}, 4, 2) == {3: 1, 4: 2}
    assert tentative({3: 1}, 3, 0) is None  # 3 is shared already
    assert tentative({4: 2}, 2, 0) == {4: 0, 2: 0}  # 2's dependants follow it to 0
    shares = random_owners(30, 8, seed=1)
    assert len(shares) == 8 and all(o < s and o not in shares for s, o in shares.items())


# -- calibration -----------------------------------------------------------------------------------


class WordTokenizer:
    """Each byte is a token (ids 3..130, folded into the vocabulary)."""

    def encode(self, text: str) -> list[int]:
        return [3 + b % (VOCAB - 3) for b in text.encode()]


TEXT = ("the quick brown fox jumps over the lazy dog while the cat sleeps in the sun. " * 30).strip()


def test_calibration_on_a_tiny_model_finishes_in_seconds_and_writes_a_valid_plan(
    llama: Any, tmp_path: Path
) -> None:
    events: list[Any] = []
    p = calibrate_sharing(
        llama,
        WordTokenizer(),
        [TEXT],
        fingerprint="tiny:0",
        max_shared=2,
        cos_threshold=-1.0,  # random weights: let the held-out guard decide
        max_ppl_ratio=50.0,
        passages=4,
        passage_tokens=32,
        held_out_tokens=128,
        max_candidates=6,
        time_budget_s=30,
        progress=events.append,
    )
    assert p.shared_layers == 2 and p.quality.stopped == "target"
    assert p.quality.candidates_evaluated == 2 and p.quality.elapsed_s < 30
    assert 0.0 < p.quality.ppl_ratio <= 50.0 and p.quality.held_out_tokens > 0
    assert math.isclose(p.quality.ppl, p.quality.ppl_base * p.quality.ppl_ratio, rel_tol=1e-6)
    assert events[0].stage == "baseline" and events[-1].stage == "done"
    save_plan(p, tmp_path / "p.json")
    assert load_plan(tmp_path / "p.json") == p
    assert hf_cache.kv_sharing(llama) is None  # calibration leaves the model as it found it


def test_a_guard_that_cannot_be_met_gives_an_empty_plan(llama: Any) -> None:
    p = calibrate_sharing(
        llama,
        WordTokenizer(),
        [TEXT],
        held_out_texts=[TEXT[::-1]],
        fingerprint="tiny:0",
        max_shared=3,
        cos_threshold=-1.0,
        max_ppl_ratio=1.0,
        min_top1_agreement=1.0,  # any sharing changes some of a random model's next tokens
        passages=2,
        passage_tokens=16,
        held_out_tokens=64,
        max_candidates=4,
    )
    assert p.shared == () and p.digest == "" and p.quality.stopped == "max_candidates"
    assert p.quality.candidates_evaluated == 4 and p.quality.ppl_ratio == 1.0


def test_the_cosine_check_alone_can_reject_everything(llama: Any) -> None:
    p = calibrate_sharing(
        llama,
        WordTokenizer(),
        [TEXT],
        fingerprint="tiny:0",
        cos_threshold=1.0,
        max_ppl_ratio=None,
        passages=2,
        passage_tokens=16,
        held_out_tokens=32,
        max_candidates=3,
    )
    assert p.shared == ()


def test_too_little_text_is_a_clear_error(llama: Any) -> None:
    with pytest.raises(SharingPlanError, match="shorter than one passage of 64"):
        calibrate_sharing(llama, WordTokenizer(), ["short"], fingerprint="tiny:0", passage_tokens=64)


def test_the_sharing_bench_measures_bytes_and_perplexity_per_map(llama: Any) -> None:
    from gearkv.bench.sharing import Bench
    from gearkv.codec import Codec

    windows = [ids(40, seed=s)[0] for s in (5, 6)]
    bench = Bench(llama, windows, prefix=24, codec=Codec.from_preset("gear4"))
    none = bench.measure({}, "none")
    shared = bench.measure({3: 1, 4: 1}, "random")
    assert none.ppl_ratio == 1.0 and none.top1_agreement == 1.0
    # 16-bit K and V of 5 layers x 2 KV heads x 16 dims per token, then of the 3 owner layers
    assert none.bytes_per_token == 5 * 2 * 16 * 2 * 2 and shared.bytes_per_token == 3 * 2 * 16 * 2 * 2
    assert shared.bytes_per_token_gear < none.bytes_per_token_gear < none.bytes_per_token
    assert shared.ppl_ratio != 1.0 and shared.owners == {"3": 1, "4": 1}
    assert hf_cache.kv_sharing(llama) is None
