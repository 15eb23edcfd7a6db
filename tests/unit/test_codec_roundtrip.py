"""Codec round trips: property tests over shapes, dtypes and presets (CPU, no network)."""

from __future__ import annotations

import itertools

import pytest
import torch
from gearkv.codec import (
    PRESETS,
    Calibration,
    Codec,
    CodecConfig,
    InvalidInput,
    decode,
    decode_into,
    inspect,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# Relative Frobenius error each preset must stay under on Gaussian KV with per-channel offsets.
BOUNDS = {"fp16": 1e-3, "raw": 0.0, "kivi2": 0.6, "kivi4": 0.12, "gear2": 0.6, "gear3": 0.3, "gear4": 0.15}
# The gtc presets (calibrated, uniform calibration here), keys and values apart: a value's error is about
# step / sqrt(12) of its token's spread (measured worst over many shapes: gtc2 0.52, gtc3 0.29; keys,
# whose channel offsets are coded exactly in the mean, 0.095 and 0.053).
GTC_BOUNDS = {"gtc2": (0.15, 0.6), "gtc3": (0.1, 0.34)}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
DTYPE_EPS = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6}
SETTINGS = settings(max_examples=50, deadline=None)


def make_layers(
    seed: int, layers: int, batch: int, heads: int, tokens: int, dk: int, dv: int, dtype: torch.dtype,
    scale: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        offset = torch.randn(1, heads, 1, dk, generator=gen) * 3  # key channels carry offsets
        k = (torch.randn(batch, heads, tokens, dk, generator=gen) + offset) * scale
        v = torch.randn(batch, heads, tokens, dv, generator=gen) * scale
        out.append((k.to(dtype), v.to(dtype)))
    return out


def bounds(preset: str) -> tuple[float, float]:
    """(keys, values) relative error bound of ``preset``."""
    if preset in GTC_BOUNDS:
        return GTC_BOUNDS[preset]
    return BOUNDS[preset], BOUNDS[preset]


def codec_for(preset: str, layers: int) -> tuple[Codec, Calibration | None]:
    """``preset``'s codec, with a uniform Calibration of ``layers`` layers where it needs one."""
    cal = Calibration.uniform(layers) if PRESETS[preset].needs_calibration else None
    return Codec.from_preset(preset, calibration=cal), cal


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


shapes = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "layers": st.integers(1, 3),
        "batch": st.integers(1, 2),
        "heads": st.sampled_from([1, 2, 3, 4]),  # MQA (1) and GQA head counts
        "tokens": st.sampled_from([1, 2, 3, 17, 63, 64, 65, 100, 129]),
        "dk": st.sampled_from([64, 80, 96, 128, 256]),
        "dtype": st.sampled_from(DTYPES),
    }
)


@SETTINGS
@given(shape=shapes, preset=st.sampled_from(sorted(PRESETS)), same_dims=st.booleans())
def test_round_trip_within_bound(shape: dict, preset: str, same_dims: bool) -> None:
    dv = shape["dk"] if same_dims else 64
    layers = make_layers(shape["seed"], shape["layers"], shape["batch"], shape["heads"], shape["tokens"],
                         shape["dk"], dv, shape["dtype"])  # fmt: skip
    codec, cal = codec_for(preset, len(layers))
    blob = codec.encode(layers)
    out = decode(blob, calibration=cal)
    assert len(out) == len(layers)
    eps = DTYPE_EPS[shape["dtype"]] if preset != "raw" else 0.0
    k_bound, v_bound = (b + eps for b in bounds(preset))
    for (k, v), (k2, v2) in zip(layers, out, strict=True):
        assert k2.shape == k.shape and v2.shape == v.shape
        assert k2.dtype == k.dtype and v2.dtype == v.dtype
        assert torch.isfinite(k2).all() and torch.isfinite(v2).all()
        assert rel_err(k2, k) <= k_bound, preset
        assert rel_err(v2, v) <= v_bound, preset
    info = inspect(blob)
    assert info.stored_bytes == len(blob)
    numel = sum(k.numel() + v.numel() for k, v in layers)
    assert info.raw_bytes == 2 * numel
    assert info.ratio == info.raw_bytes / len(blob)
    if cal is None:
        assert info.codec_id == codec.codec_id == f"{preset}.v1"
        assert info.format_version == 1 and info.calibration == ""
    else:
        assert info.codec_id == codec.codec_id == f"{preset}.v2.{cal.digest}"
        assert info.format_version == 2 and info.calibration == cal.digest
    assert decode(blob, dtype=torch.float32, calibration=cal)[0][0].dtype == torch.float32


@SETTINGS
@given(shape=shapes)
def test_fp16_is_bit_exact_for_16_bit_input_and_raw_for_all(shape: dict) -> None:
    layers = make_layers(shape["seed"], shape["layers"], shape["batch"], shape["heads"], shape["tokens"],
                         shape["dk"], shape["dk"], shape["dtype"])  # fmt: skip
    presets = ["raw", "fp16"] if shape["dtype"] != torch.float32 else ["raw"]
    for preset in presets:
        out = decode(Codec.from_preset(preset).encode(layers))
        for (k, v), (k2, v2) in zip(layers, out, strict=True):
            assert k2.dtype == k.dtype
            assert torch.equal(k2.view(torch.uint8), k.view(torch.uint8))
            assert torch.equal(v2.view(torch.uint8), v.view(torch.uint8))


def test_bf16_stays_bf16_in_fp16_preset() -> None:
    layers = make_layers(0, 1, 1, 2, 64, 64, 64, torch.bfloat16, scale=1e5)  # beyond the float16 range
    blob = Codec.from_preset("fp16").encode(layers)
    assert torch.equal(decode(blob)[0][0], layers[0][0])
    assert inspect(blob).ratio > 0.98


def test_large_fp32_values_keep_side_data_in_fp32() -> None:
    layers = make_layers(1, 2, 1, 2, 70, 64, 64, torch.float32, scale=1e6)
    for preset in ("gear3", "kivi4"):
        out = decode(Codec.from_preset(preset).encode(layers))
        assert torch.isfinite(out[0][0]).all()
        assert rel_err(out[0][0], layers[0][0]) < BOUNDS[preset]


@settings(max_examples=25, deadline=None)
@given(
    shape=shapes, preset=st.sampled_from(sorted(PRESETS)), before=st.integers(0, 9), after=st.integers(0, 9)
)
def test_decode_into_a_token_range_equals_decode(shape: dict, preset: str, before: int, after: int) -> None:
    layers = make_layers(**{**shape, "dv": shape["dk"]})
    codec, cal = codec_for(preset, len(layers))
    blob = codec.encode(layers)
    want = decode(blob, dtype=torch.float32, calibration=cal)
    b, h, t, d = layers[0][0].shape
    big_k = torch.full((len(layers), b, h, before + t + after, d), 7.0)
    big_v = big_k.clone()
    info = decode_into(
        blob, big_k[:, :, :, before : before + t], big_v[:, :, :, before : before + t], calibration=cal
    )
    assert info == inspect(blob)
    for i, (k, v) in enumerate(want):
        assert torch.equal(big_k[i, :, :, before : before + t], k)
        assert torch.equal(big_v[i, :, :, before : before + t], v)
    # nothing outside the range was touched
    assert bool((big_k[:, :, :, :before] == 7).all() and (big_k[:, :, :, before + t :] == 7).all())
    assert bool((big_v[:, :, :, :before] == 7).all() and (big_v[:, :, :, before + t :] == 7).all())


def test_decode_into_refuses_outputs_that_do_not_fit() -> None:
    layers = make_layers(0, 2, 1, 2, 8, 64, 64, torch.float32)
    blob = Codec.from_preset("gear4").encode(layers)
    k, v = torch.zeros(2, 1, 2, 8, 64), torch.zeros(2, 1, 2, 8, 64)
    with pytest.raises(InvalidInput, match="keys is"):
        decode_into(blob, k[:, :, :1], v)  # one head short
    with pytest.raises(InvalidInput, match="values is"):
        decode_into(blob, k, torch.zeros(2, 1, 2, 9, 64))  # a token too many
    with pytest.raises(InvalidInput, match="dtype"):
        decode_into(blob, k.long(), v.long())
    with pytest.raises(InvalidInput, match="viewable"):  # heads not adjacent in memory
        decode_into(blob, torch.zeros(2, 1, 8, 2, 64).transpose(2, 3), v)
    assert not k.any() and not v.any()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), preset=st.sampled_from(sorted(PRESETS)))
def test_deterministic(seed: int, preset: str) -> None:
    layers = make_layers(seed, 2, 1, 2, 33, 64, 64, torch.float16)
    codec, _ = codec_for(preset, len(layers))
    assert codec.encode(layers) == codec.encode([(k.clone(), v.clone()) for k, v in layers])


def test_input_not_modified() -> None:
    layers = make_layers(3, 2, 1, 2, 100, 64, 64, torch.float32)
    copies = [(k.clone(), v.clone()) for k, v in layers]
    Codec(CodecConfig(k_outliers=2 / 256, v_outliers=1 / 256, k_rank=2, v_rank=2)).encode(layers)
    for (k, v), (k0, v0) in zip(layers, copies, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_constant_groups_give_no_nan() -> None:
    for value in (0.0, 5.0, -1e-4):
        layers = [(torch.full((1, 2, 70, 64), value), torch.full((1, 2, 70, 64), value)) for _ in range(2)]
        for preset in PRESETS:
            codec, cal = codec_for(preset, len(layers))
            for k, v in decode(codec.encode(layers), calibration=cal):
                assert torch.isfinite(k).all() and torch.isfinite(v).all()
                assert torch.allclose(k, layers[0][0], atol=1e-3 * max(1.0, abs(value)))
        cfg = CodecConfig(k_rank=3, v_rank=3, k_outliers=1 / 256, v_outliers=1 / 256)
        for k, _ in decode(Codec(cfg).encode(layers)):
            assert torch.isfinite(k).all()


def test_error_falls_as_rank_rises() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 2, 128, 4, generator=gen)
    b = torch.randn(1, 2, 4, 64, generator=gen)
    k = a @ b + 0.05 * torch.randn(1, 2, 128, 64, generator=gen)
    layers = [(k, k.clone())]
    errors = []
    for rank in (0, 1, 2, 4):
        cfg = CodecConfig(k_bits=2, v_bits=2, k_rank=rank, v_rank=rank, sink_tokens=0)
        out = decode(Codec(cfg).encode(layers))
        errors.append(rel_err(out[0][0], k) + rel_err(out[0][1], k))
    assert all(x > y for x, y in itertools.pairwise(errors)), errors


def test_planted_outliers_are_kept_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 1, 64, 64, generator=gen)
    k[0, 0, 10, 3] = 40.0
    k[0, 0, 50, 40] = -35.0
    cfg = CodecConfig(k_bits=2, v_bits=2, k_outliers=1 / 256, rotate=False, sink_tokens=0)
    out = decode(Codec(cfg).encode([(k, k.clone())]))[0][0]
    assert out[0, 0, 10, 3] == 40.0 and out[0, 0, 50, 40] == -35.0
    plain = decode(Codec(CodecConfig(k_bits=2, v_bits=2, rotate=False, sink_tokens=0)).encode([(k, k)]))[0][0]
    assert rel_err(out, k) < rel_err(plain, k)


def test_sink_tokens_follow_start_position() -> None:
    layers = make_layers(5, 1, 1, 2, 40, 64, 64, torch.float16)
    codec = Codec.from_preset("gear2")
    first = decode(codec.encode(layers))[0][0]
    later = codec.encode(layers, start=256)
    assert torch.equal(first[:, :, 0], layers[0][0][:, :, 0])  # sink kept at 16 bits
    assert inspect(later).sink_tokens == 0 and len(later) < len(codec.encode(layers))


def test_codec_ids() -> None:
    assert Codec.from_preset("gear3").codec_id == "gear3.v1"
    a = Codec(CodecConfig(k_bits=4, v_bits=2))
    b = Codec(CodecConfig(k_bits=4, v_bits=2))
    c = Codec(CodecConfig(k_bits=4, v_bits=3))
    assert a.codec_id == b.codec_id != c.codec_id
    assert a.codec_id.startswith("custom.v1.") and len(a.codec_id) == len("custom.v1.") + 12
    assert Codec(CodecConfig(**PRESETS["gear2"].to_dict())).codec_id == "gear2.v1"
    cal = Calibration.uniform(4)
    assert Codec.from_preset("gtc2", calibration=cal).codec_id == f"gtc2.v2.{cal.digest}"
    assert Codec.from_preset("gear3", calibration=cal).codec_id == "gear3.v1"  # nothing to bind
    assert Codec.from_preset("gear2", entropy="zstd").codec_id == "gear2.zstd.v2"
    for ident in [codec_for(p, 4)[0].codec_id for p in PRESETS] + [a.codec_id]:
        assert ident.isascii() and ident.isprintable() and " " not in ident and len(ident) <= 128


def test_decode_to_other_dtype_and_ratio_claims() -> None:
    layers = make_layers(7, 4, 1, 3, 256, 64, 64, torch.float16)
    for preset, low in (("gear2", 6.0), ("gear3", 4.6), ("gear4", 3.6), ("kivi2", 5.2), ("kivi4", 3.1)):
        blob = Codec.from_preset(preset).encode(layers)
        assert inspect(blob).ratio >= low, preset
        out = decode(blob, dtype=torch.bfloat16)
        assert out[0][0].dtype == torch.bfloat16


@torch.no_grad()
def test_cuda_round_trip_matches_cpu() -> None:
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    layers = make_layers(9, 2, 1, 2, 100, 128, 128, torch.float16)
    for preset in ("gear2", "gear3", "kivi2", "fp16", "gtc2"):
        codec, cal = codec_for(preset, len(layers))
        blob_gpu = codec.encode([(k.cuda(), v.cuda()) for k, v in layers])
        out = decode(blob_gpu, device="cuda", calibration=cal)
        assert out[0][0].device.type == "cuda"
        assert rel_err(out[0][0].cpu(), layers[0][0]) <= bounds(preset)[0] + 1e-3
        assert rel_err(out[0][1].cpu(), layers[0][1]) <= bounds(preset)[1] + 1e-3
        cpu = decode(codec.encode(layers), calibration=cal)
        assert rel_err(decode(blob_gpu, calibration=cal)[0][0], cpu[0][0]) < 0.05


def test_later_layers_keys_get_their_own_bits() -> None:
    layers = make_layers(11, 6, 1, 2, 80, 64, 64, torch.float32)
    cfg = CodecConfig(k_bits=2, v_bits=2, k_late_bits=4, k_late_group=64, late_from=0.5)
    assert cfg.late_cut(6) == 3 and cfg.late_cut(30) == 15 and CodecConfig().late_cut(30) == 30
    blob = Codec(cfg).encode(layers)
    out = decode(blob)
    early = [rel_err(out[i][0], layers[i][0]) for i in range(3)]
    late = [rel_err(out[i][0], layers[i][0]) for i in range(3, 6)]
    assert max(late) < 0.5 * min(early)
    plain = Codec(CodecConfig(k_bits=2, v_bits=2)).encode(layers)
    assert len(plain) < len(blob)
    for frac in (0.0, 1.0):  # all layers late, or none
        cfg = CodecConfig(k_bits=2, v_bits=2, k_late_bits=4, late_from=frac)
        assert rel_err(decode(Codec(cfg).encode(layers))[0][0], layers[0][0]) < BOUNDS["gear2"]
