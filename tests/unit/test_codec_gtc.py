"""Codec v2 (#16): the gtc mode, its Calibration, the zstd entropy stage and wire format v2 (CPU, no network).

v1 blobs (and their golden bytes) are covered by test_codec_wire.py; the preset-wide round trips, which
include gtc2/gtc3, by test_codec_roundtrip.py. Here: what is new in v2.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import zstandard
from gearkv.codec import (
    PRESETS,
    Calibration,
    CalibrationError,
    CalibrationMismatch,
    Codec,
    CodecConfig,
    CorruptBlob,
    UnsupportedFormatVersion,
    _api,
    decode,
    decode_into,
    inspect,
)
from gearkv.codec._wire import pack_blob, read_frame, section_views
from hypothesis import given, settings
from hypothesis import strategies as st

KV = tuple[torch.Tensor, torch.Tensor]
GTC = ("gtc2", "gtc3")
# Relative Frobenius error (keys, values) on zero-mean Gaussian KV, uniform calibration. Measured worst
# over seeds, 2..255 tokens, head_dim 64/128, fp16/bf16/fp32, batch 1/2, with and without outlier
# channels: gtc2 0.26 / 0.53, gtc3 0.144 / 0.291 (a value's error is about step / sqrt(12) of its token's
# spread, 1.8 and 1.0 of it; a key's of its channel's, 0.9 and 0.5).
BOUNDS = {"gtc2": (0.3, 0.6), "gtc3": (0.18, 0.34)}
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPE_EPS = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6}
# One rounding of the stored 16-bit type relative to a value (escapes and the sink are kept at 16 bits;
# fp32 input is stored as fp16 where it fits).
STORE_EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-11}


def make_layers(
    seed: int, layers: int, batch: int, heads: int, tokens: int, dim: int, dtype: torch.dtype,
    *, outliers: bool = False, dv: int | None = None,
) -> list[KV]:  # fmt: skip
    """Gaussian KV; ``outliers``: keys gain per-channel offsets and two loud channels, values one."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        k = torch.randn(batch, heads, tokens, dim, generator=gen)
        v = torch.randn(batch, heads, tokens, dv or dim, generator=gen)
        if outliers:
            k += torch.randn(1, heads, 1, dim, generator=gen) * 3
            k[..., 5] *= 10
            k[..., 17] *= 6
            v[..., 3] *= 5
        out.append((k.to(dtype), v.to(dtype)))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def gtc(preset: str, layers: int, **scales: tuple[float, ...]) -> tuple[Codec, Calibration]:
    cal = Calibration("", layers, **scales) if scales else Calibration.uniform(layers)
    return Codec.from_preset(preset, calibration=cal), cal


def header_of(blob: bytes) -> dict[str, Any]:
    return read_frame(blob)[0]


def payload_of(blob: bytes) -> bytes:
    """The payload's sections as stored before the entropy stage."""
    _, start, _, flags = read_frame(blob)
    body = blob[start:-4]
    return zstandard.ZstdDecompressor().decompress(body) if flags else body


def forge(
    blob: bytes, *, header: dict[str, Any] | None = None, body: bytes | None = None,
    flags: int | None = None, version: int | None = None,
) -> bytes:  # fmt: skip
    """``blob`` reframed with any of its parts replaced, under a valid checksum (what only a bug or a
    deliberate forgery produces: the checks behind the CRC must still refuse it)."""
    old, start, old_version, old_flags = read_frame(blob)
    text = json.dumps(old if header is None else header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    out = struct.pack(
        "<4sHHI",
        b"GKV\x00",
        old_version if version is None else version,
        old_flags if flags is None else flags,
        len(text),
    )
    out += text + (blob[start:-4] if body is None else body)
    return out + struct.pack("<I", zlib.crc32(out))


def zc(payload: bytes, **kwargs: Any) -> bytes:
    return zstandard.ZstdCompressor(level=1, **kwargs).compress(payload)


def assert_shapes(out: list[KV], layers: list[KV], dtype: torch.dtype | None = None) -> None:
    assert len(out) == len(layers)
    for (k, v), (k2, v2) in zip(layers, out, strict=True):
        assert k2.shape == k.shape and v2.shape == v.shape
        assert k2.dtype == v2.dtype == (dtype or k.dtype)


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("outliers", [False, True], ids=["gaussian", "outlier-channels"])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("preset", GTC)
def test_round_trip_within_bounds(preset: str, dtype: torch.dtype, dim: int, outliers: bool) -> None:
    layers = make_layers(dim + outliers, 2, 2, 2, 65, dim, dtype, outliers=outliers)  # batch 2
    codec, cal = gtc(preset, 2)
    blob = codec.encode(layers)
    out = decode(blob, calibration=cal)
    assert_shapes(out, layers)
    k_bound, v_bound = (b + DTYPE_EPS[dtype] for b in BOUNDS[preset])
    for (k, v), (k2, v2) in zip(layers, out, strict=True):
        assert torch.isfinite(k2).all() and torch.isfinite(v2).all()
        assert rel_err(k2, k) <= k_bound
        assert rel_err(v2, v) <= v_bound
        assert torch.equal(k2[:, :, 0], k[:, :, 0].half().to(dtype))  # the sink token, at 16 bits
    info = inspect(blob)
    assert (info.format_version, info.calibration, info.sink_tokens) == (2, cal.digest, 1)
    assert info.raw_bytes == 2 * sum(k.numel() + v.numel() for k, v in layers)
    assert info.ratio > 2.5  # even this short chunk: the header is ~500 bytes of it
    for other in DTYPES:  # any output dtype
        assert decode(blob, dtype=other, calibration=cal)[1][1].dtype == other


def test_gtc3_is_finer_than_gtc2_and_bigger() -> None:
    layers = make_layers(3, 2, 1, 4, 128, 128, torch.float16)
    sizes, errors = [], []
    for preset in GTC:
        codec, cal = gtc(preset, 2)
        blob = codec.encode(layers)
        out = decode(blob, calibration=cal)
        sizes.append(len(blob))
        errors.append(sum(rel_err(a, b) for pair, pair2 in zip(out, layers, strict=True)
                          for a, b in zip(pair, pair2, strict=True)))  # fmt: skip
    assert errors[1] < 0.7 * errors[0] and sizes[1] > sizes[0]
    assert 2 * 2 * 4 * 128 * 128 * 2 * 2 / sizes[0] > 6  # gtc2 on 128 tokens: over 6x against fp16


@pytest.mark.parametrize("start", [0, 3])
@pytest.mark.parametrize("tokens", [1, 2, 3, 255])
@pytest.mark.parametrize("preset", GTC)
def test_odd_token_counts_and_the_sink(preset: str, tokens: int, start: int) -> None:
    layers = make_layers(tokens, 2, 1, 2, tokens, 64, torch.float16, outliers=True)
    codec, cal = gtc(preset, 2)
    blob = codec.encode(layers, start=start)
    out = decode(blob, calibration=cal)
    assert_shapes(out, layers)
    assert inspect(blob).sink_tokens == (1 if start == 0 else 0)
    assert header_of(blob)["sink"] == inspect(blob).sink_tokens
    k_bound, v_bound = (b + DTYPE_EPS[torch.float16] for b in BOUNDS[preset])
    for (k, v), (k2, v2) in zip(layers, out, strict=True):
        assert torch.isfinite(k2).all() and torch.isfinite(v2).all()
        if start == 0:
            assert torch.equal(k2[:, :, 0], k[:, :, 0]) and torch.equal(v2[:, :, 0], v[:, :, 0])
        if tokens - (start == 0) <= 1:  # at most one quantized token: zero spread, the mean is the value
            assert rel_err(k2, k) < 2e-3 and rel_err(v2, v) < 2e-3
        else:
            assert rel_err(k2, k) <= k_bound and rel_err(v2, v) <= v_bound
    if tokens > 1:
        # one token fewer at 16 bits (its codes still cost something, so compare with the fp16 bytes)
        assert len(codec.encode(layers, start=0)) - len(codec.encode(layers, start=1)) > 0


@pytest.mark.parametrize("preset", GTC)
def test_decode_into_a_token_range_equals_decode(preset: str) -> None:
    layers = make_layers(21, 3, 2, 2, 33, 64, torch.bfloat16, outliers=True)
    codec, cal = gtc(preset, 3)
    blob = codec.encode(layers, start=7)
    for dtype in (torch.float32, torch.bfloat16):
        want = decode(blob, dtype=dtype, calibration=cal)
        big_k = torch.full((3, 2, 2, 5 + 33 + 4, 64), 7.0, dtype=dtype)
        big_v = big_k.clone()
        info = decode_into(blob, big_k[:, :, :, 5:38], big_v[:, :, :, 5:38], calibration=cal)
        assert info == inspect(blob)
        for i, (k, v) in enumerate(want):
            assert torch.equal(big_k[i, :, :, 5:38], k) and torch.equal(big_v[i, :, :, 5:38], v)
        for buf in (big_k, big_v):  # nothing outside the range was touched
            assert bool((buf[:, :, :, :5] == 7).all() and (buf[:, :, :, 38:] == 7).all())
    with pytest.raises(CalibrationMismatch):
        decode_into(blob, big_k[:, :, :, 5:38], big_v[:, :, :, 5:38])


def test_encode_is_deterministic_and_leaves_the_input_alone() -> None:
    layers = make_layers(8, 2, 1, 2, 40, 128, torch.float32, outliers=True)
    copies = [(k.clone(), v.clone()) for k, v in layers]
    for preset in GTC:
        codec, _ = gtc(preset, 2, k_scale=(0.5, 2.0), v_scale=(1.5, 0.75))
        assert codec.encode(layers) == codec.encode(copies)
    for (k, v), (k0, v0) in zip(layers, copies, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_near_the_top_of_fp16_do_not_overflow(dtype: torch.dtype) -> None:
    """A row's rotation grows up to sqrt(head_dim)-fold: 20000 in every channel of a 128-dim token
    rotates to 226000, beyond fp16. (Was inf: the rotation ran in fp16 and means were stored in fp16.)"""
    layers = make_layers(4, 1, 1, 2, 40, 128, torch.float32)
    k, v = layers[0]
    k[0, 0, 10] = 20000.0  # one loud token
    k[0, 1] += 20000.0  # a head whose every key is loud: its channel means are large too
    v[0, 0, 10] = -20000.0
    layers = [(k.to(dtype), v.to(dtype))]
    for preset in GTC:
        codec, cal = gtc(preset, 1)
        blob = codec.encode(layers)
        ((k2, v2),) = decode(blob, calibration=cal)
        assert torch.isfinite(k2).all() and torch.isfinite(v2).all()
        if dtype != torch.bfloat16:  # bf16 has the range: it stays bf16
            assert header_of(blob)["store_dtype"] == "float32"
        assert rel_err(k2[0, 0, 10], layers[0][0][0, 0, 10]) < 0.05  # measured 0.022
        assert rel_err(k2[0, 1], layers[0][0][0, 1]) < 0.01
        assert rel_err(v2[0, 0, 10], layers[0][1][0, 0, 10]) < 0.05
    # moderate values keep 16-bit side data
    blob = gtc("gtc2", 1)[0].encode(make_layers(4, 1, 1, 2, 40, 128, torch.float32))
    assert header_of(blob)["store_dtype"] == "float16"


# --- a property: any shape, dtype and preset; escapes ------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    preset=st.sampled_from(GTC),
    seed=st.integers(0, 2**16),
    n_layers=st.integers(1, 2),
    batch=st.integers(1, 2),
    heads=st.sampled_from([1, 2, 3]),
    tokens=st.sampled_from([1, 2, 3, 17, 64, 65, 100]),
    dim=st.sampled_from([64, 80, 96, 128]),
    same_dims=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    start=st.sampled_from([0, 1, 300]),
    huge=st.floats(300.0, 3000.0),
)
def test_any_shape_decodes_finite_and_escapes_are_exact(
    preset: str, seed: int, n_layers: int, batch: int, heads: int, tokens: int, dim: int,
    same_dims: bool, dtype: torch.dtype, start: int, huge: float,
) -> None:  # fmt: skip
    """decode(encode(x)) has x's shapes and dtype and finite values; a few huge keys are escapes (codes
    beyond -8..7) whose whole rotated token is stored at 16 bits: they come back to that precision."""
    dv = None if same_dims else 64
    layers = make_layers(seed, n_layers, batch, heads, tokens, dim, torch.float32, dv=dv)
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=gen))

    planted = []
    for i, (k, _) in enumerate(layers):  # one huge key per layer, in the quantized body
        if tokens >= 64:
            b, h, t, c = draw(0, batch), draw(0, heads), draw(2, tokens), draw(0, dim)
            k[b, h, t, c] = huge if (t + c) % 2 else -huge
            planted.append((i, b, h, t, c))
    layers = [(k.to(dtype), v.to(dtype)) for k, v in layers]
    codec, cal = gtc(preset, n_layers)
    blob = codec.encode(layers, start=start)
    out = decode(blob, calibration=cal)
    assert_shapes(out, layers)
    for k2, v2 in out:
        assert torch.isfinite(k2).all() and torch.isfinite(v2).all()
    info = inspect(blob)
    assert info.tokens == tokens and info.sink_tokens == max(0, min(1 - start, tokens))
    escapes = header_of(blob)["escapes"]
    if planted:
        assert escapes[0] >= len(planted)
        for i, b, h, t, c in planted:
            want = float(layers[i][0][b, h, t, c])
            got = float(out[i][0][b, h, t, c])
            assert abs(got - want) <= 3 * STORE_EPS[dtype] * abs(want), (got, want)
    assert decode(blob, dtype=torch.float32, calibration=cal)[0][0].dtype == torch.float32


def test_escapes_are_exact_without_rotation() -> None:
    """Unrotated, an escape is the input element itself, kept at 16 bits: bit-exact for fp16 input."""
    cfg = replace(PRESETS["gtc2"], rotate=False)
    layers = make_layers(2, 1, 1, 2, 100, 64, torch.float16)
    k = layers[0][0]
    spots = [(0, 10, 3, 500.0), (1, 50, 40, -350.0), (1, 99, 63, 1234.0)]
    for h, t, c, x in spots:
        k[0, h, t, c] = x
    cal = Calibration.uniform(1)
    blob = Codec(cfg, calibration=cal).encode(layers)
    assert header_of(blob)["escapes"][0] >= len(spots)
    ((k2, _),) = decode(blob, calibration=cal)
    for h, t, c, x in spots:
        assert float(k2[0, h, t, c]) == x


# --- what the calibration controls ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", GTC)
def test_a_layers_scale_sets_its_error(preset: str) -> None:
    """Two layers of identical KV: the one at scale 0.25 comes back far closer than the one at 4.0."""
    ((k, v),) = make_layers(1, 1, 1, 4, 128, 128, torch.float16)
    layers = [(k, v), (k.clone(), v.clone())]
    codec, cal = gtc(preset, 2, k_scale=(0.25, 4.0), v_scale=(4.0, 0.25))
    out = decode(codec.encode(layers), calibration=cal)
    k_err = [rel_err(out[i][0], k) for i in range(2)]
    v_err = [rel_err(out[i][1], v) for i in range(2)]
    assert k_err[0] < 0.25 * k_err[1]  # measured: gtc2 0.062 vs 0.89, gtc3 0.03 vs 0.57
    assert v_err[1] < 0.35 * v_err[0]  # measured: gtc2 0.13 vs 0.99, gtc3 0.07 vs 0.93
    # at scale 1 both layers sit in between
    ones = gtc(preset, 2)
    plain = decode(ones[0].encode(layers), calibration=ones[1])
    assert k_err[0] < rel_err(plain[0][0], k) < k_err[1]
    assert v_err[1] < rel_err(plain[1][1], v) < v_err[0]


def test_finer_scales_cost_bytes() -> None:
    layers = make_layers(5, 2, 1, 2, 128, 128, torch.float16)
    sizes = [len(gtc("gtc2", 2, k_scale=(s, s), v_scale=(s, s))[0].encode(layers)) for s in (2.0, 1.0, 0.5)]
    assert sizes[0] < sizes[1] < sizes[2]


# --- calibration mismatch --------------------------------------------------------------------------------


def test_decode_refuses_a_missing_or_other_calibration() -> None:
    layers = make_layers(6, 2, 1, 2, 20, 64, torch.float16)
    codec, cal = gtc("gtc2", 2, k_scale=(1.0, 0.5), v_scale=(1.0, 2.0))
    blob = codec.encode(layers)
    assert inspect(blob).calibration == cal.digest  # inspect needs none
    k, v = torch.zeros(2, 1, 2, 20, 64), torch.zeros(2, 1, 2, 20, 64)
    with pytest.raises(CalibrationMismatch, match=f"needs codec calibration {cal.digest}"):
        decode(blob)
    with pytest.raises(CalibrationMismatch, match=cal.digest):
        decode_into(blob, k, v)
    others = [
        Calibration("", 2, (1.0, 0.5), (1.0, 2.5)),  # one scale differs
        Calibration.uniform(2),
        Calibration("model-a", 2, (1.0, 0.5), (1.0, 2.0)),  # the same scales for a named model
        Calibration.uniform(3),  # another layer count
        Calibration("", 1, (1.0,), (1.0,)),
    ]
    for other in others:
        assert other.digest != cal.digest
        with pytest.raises(CalibrationMismatch) as raised:
            decode(blob, calibration=other)
        assert cal.digest in str(raised.value) and other.digest in str(raised.value)
        with pytest.raises(CalibrationMismatch, match=other.digest):
            decode_into(blob, k, v, calibration=other)
    assert not k.any() and not v.any()  # nothing was written
    with pytest.raises(CalibrationMismatch, match="must be a Calibration"):
        decode(blob, calibration=cal.to_json())  # type: ignore[arg-type]
    # the same calibration, rebuilt or reloaded, is accepted
    again = Calibration("", 2, (1.0, 0.5), (1.0, 2.0), text="other provenance")
    assert torch.equal(decode(blob, calibration=again)[1][0], decode(blob, calibration=cal)[1][0])


def test_gtc_codecs_need_a_calibration_for_their_layer_count() -> None:
    for preset in GTC:
        with pytest.raises(CalibrationMismatch, match="needs a Calibration"):
            Codec.from_preset(preset)
        with pytest.raises(CalibrationMismatch, match="needs a Calibration"):
            Codec.from_preset(preset, calibration={"k_scale": [1.0]})  # type: ignore[arg-type]
        codec = Codec.from_preset(preset, calibration=Calibration.uniform(3))
        assert codec.calibration == Calibration.uniform(3)
        with pytest.raises(CalibrationMismatch, match="for 3 KV layers, the chunk has 2"):
            codec.encode(make_layers(0, 2, 1, 1, 4, 64, torch.float16))
    # other presets take none, ignore one given and decode without one
    codec = Codec.from_preset("gear3", calibration=Calibration.uniform(2))
    assert codec.calibration is None
    layers = make_layers(0, 2, 1, 1, 4, 64, torch.float16)
    blob = codec.encode(layers)
    assert inspect(blob).calibration == ""
    assert torch.equal(decode(blob)[0][0], decode(blob, calibration=Calibration.uniform(5))[0][0])


def test_check_model() -> None:
    cal = Calibration("fp-model-a", 2, (1.0, 1.0), (1.0, 1.0))
    cal.check_model("fp-model-a")
    with pytest.raises(CalibrationMismatch) as raised:
        cal.check_model("fp-model-b")
    message = str(raised.value)
    assert "fp-model-a" in message and "fp-model-b" in message and cal.digest in message
    assert "calibrate-codec" in message
    Calibration.uniform(2).check_model("fp-anything")  # a calibration bound to no model fits any


# --- codec ids ------------------------------------------------------------------------------------------


def test_codec_ids_and_format_versions() -> None:
    cal = Calibration("fp", 2, (1.0, 0.5), (1.0, 2.0))
    assert len(cal.digest) == 16 and int(cal.digest, 16) >= 0
    for preset in GTC:
        codec = Codec.from_preset(preset, calibration=cal)
        assert codec.codec_id == f"{preset}.v2.{cal.digest}"
        assert repr(codec) == f"Codec({preset}.v2.{cal.digest}, backend='auto')"
    for preset in ("fp16", "raw", "kivi2", "kivi4", "gear2", "gear3", "gear4"):
        assert Codec.from_preset(preset).codec_id == f"{preset}.v1"  # unchanged
        assert Codec.from_preset(preset, entropy="none").codec_id == f"{preset}.v1"
        assert Codec.from_preset(preset, entropy="zstd").codec_id == f"{preset}.zstd.v2"
        assert PRESETS[preset].format_version == 1
        assert replace(PRESETS[preset], entropy="zstd").format_version == 2
    assert Codec(replace(PRESETS["gear2"], entropy="zstd")).codec_id == "gear2.zstd.v2"
    custom = Codec(CodecConfig(k_bits=4, v_bits=2, entropy="zstd")).codec_id
    assert custom.startswith("custom.v2.") and len(custom) == len("custom.v2.") + 12
    assert custom != Codec(CodecConfig(k_bits=4, v_bits=2)).codec_id
    # gtc without the entropy stage is no preset: a custom id, still bound to the calibration
    plain = Codec.from_preset("gtc2", calibration=cal, entropy="none")
    assert plain.codec_id.startswith("custom.v2.") and plain.codec_id.endswith(f".{cal.digest}")
    layers = make_layers(1, 2, 1, 2, 30, 64, torch.float16)
    blob = plain.encode(layers)
    assert read_frame(blob)[2:] == (2, 0)  # v2, no entropy flag
    assert inspect(blob).codec_id == plain.codec_id
    zipped = Codec.from_preset("gtc2", calibration=cal).encode(layers)
    assert read_frame(zipped)[2:] == (2, 1)
    assert payload_of(zipped) == payload_of(blob)  # the same sections, entropy-coded
    for (k, v), (k2, v2) in zip(decode(blob, calibration=cal), decode(zipped, calibration=cal), strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    assert len(zipped) < len(blob)


# --- the entropy stage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gear2", "gear3", "gear4", "kivi2", "kivi4", "fp16", "raw"])
def test_entropy_stage_is_lossless_and_does_not_grow_blobs(preset: str) -> None:
    layers = make_layers(9, 3, 1, 2, 70, 128, torch.float16, outliers=True)
    plain = Codec.from_preset(preset).encode(layers)
    zipped = Codec.from_preset(preset, entropy="zstd").encode(layers)
    assert read_frame(plain)[2:] == (1, 0) and read_frame(zipped)[2:] == (2, 1)
    assert payload_of(zipped) == payload_of(plain)  # a wrapper around the v1 payload, byte for byte
    for (k, v), (k2, v2) in zip(decode(plain), decode(zipped), strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    # the header grows by '"entropy":"zstd",' and the frame has a header of its own
    assert len(zipped) <= len(plain) + 64, (len(zipped), len(plain))
    if preset == "gear2":  # 2-bit codes of Gaussian data: measurably below their 2 bits
        assert len(zipped) < 0.97 * len(plain)
    info = inspect(zipped)
    assert (info.format_version, info.codec_id, info.calibration) == (2, f"{preset}.zstd.v2", "")


# --- corrupted and forged v2 blobs -----------------------------------------------------------------------


def small_v2_blob(preset: str) -> tuple[bytes, Calibration | None]:
    layers = make_layers(0, 2, 1, 2, 70, 64, torch.float16)
    layers[0][0][0, 1, 40, 7] = 300.0  # a few escapes, so that their sections are present
    if preset in GTC:
        codec, cal = gtc(preset, 2)
        return codec.encode(layers), cal
    return Codec.from_preset(preset, entropy="zstd").encode(layers), None


@pytest.mark.parametrize("preset", ["gtc2", "gear2"])
def test_every_corrupted_byte_of_a_v2_blob_is_detected(preset: str) -> None:
    blob, cal = small_v2_blob(preset)
    if preset in GTC:
        assert min(header_of(blob)["escapes"]) >= 0 and max(header_of(blob)["escapes"]) > 0
    assert decode(blob, calibration=cal)[0][0].shape == (1, 2, 70, 64)
    for i in range(len(blob)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= flip
            expected = UnsupportedFormatVersion if i in (4, 5) else CorruptBlob
            with pytest.raises(expected):
                decode(bytes(bad), calibration=cal)
            with pytest.raises(expected):
                inspect(bytes(bad))


def test_every_truncation_and_extension_of_a_v2_blob_is_detected() -> None:
    blob, cal = small_v2_blob("gtc3")
    for n in range(len(blob)):
        with pytest.raises(CorruptBlob):
            decode(blob[:n], calibration=cal)
    for extra in (b"\x00", b"GKV\x00", blob[-4:]):
        with pytest.raises(CorruptBlob):
            decode(blob + extra, calibration=cal)


def test_forge_is_sound() -> None:
    blob, cal = small_v2_blob("gtc2")
    assert forge(blob) == blob
    assert decode(forge(blob, body=zc(payload_of(blob))), calibration=cal)[0][0].shape == (1, 2, 70, 64)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h: h.update(escapes=[h["escapes"][0] + 1, h["escapes"][1]]), "payload size mismatch"),
        (lambda h: h.update(escapes=[0, 0]), "payload size mismatch"),
        (lambda h: h.pop("escapes"), "payload size mismatch"),
        (lambda h: h.update(escapes=[-1, h["escapes"][0] + 1]), "inconsistent blob header"),
        (lambda h: h.update(escapes=[h["escapes"][0]]), "inconsistent blob header"),
        (lambda h: h.update(escapes=["x", 0]), "inconsistent blob header"),
        (lambda h: h.update(escapes=None), "inconsistent blob header"),
        (lambda h: h.update(calibration=""), "inconsistent blob header"),
        (lambda h: h.pop("calibration"), "inconsistent blob header"),
        (lambda h: h.update(calibration="0123456789abcdef"), "inconsistent blob header"),  # not the id's
        (lambda h: h["config"].update(entropy="none"), "inconsistent blob header"),  # the flag says zstd
        (lambda h: h["config"].update(mode="quant"), "inconsistent blob header"),
        (lambda h: h["config"].update(k_step=0.0), "k_step must be > 0"),
        (lambda h: h.update(sink=2), "payload size mismatch"),
        (lambda h: h.update(key_shape=[1, 2, 71, 64], value_shape=[1, 2, 71, 64]), "payload size mismatch"),
        (lambda h: h.update(store_dtype="float32"), "payload size mismatch"),
    ],
)
def test_forged_headers_are_refused(edit: Any, match: str) -> None:
    blob, cal = small_v2_blob("gtc2")
    header = header_of(blob)
    edit(header)
    with pytest.raises(CorruptBlob, match=match):
        decode(forge(blob, header=header), calibration=cal)


def test_forged_calibration_digest_is_a_mismatch_not_a_decode() -> None:
    """A header naming another calibration consistently (codec id and field) is a different blob: decoding
    it with the writer's calibration is refused rather than decoded under the wrong steps."""
    blob, cal = small_v2_blob("gtc2")
    header = header_of(blob)
    other = Calibration.uniform(2, fingerprint="x")
    header.update(calibration=other.digest, codec_id=f"gtc2.v2.{other.digest}")
    with pytest.raises(CalibrationMismatch, match=other.digest):
        decode(forge(blob, header=header), calibration=cal)


def test_forged_frames_and_flags_are_refused() -> None:
    blob, cal = small_v2_blob("gtc2")
    payload = payload_of(blob)
    cases = {
        "no content size in the frame": zc(payload, write_content_size=False),
        "a byte short": zc(payload[:-1]),
        "a byte long": zc(payload + b"\x00"),
        "bytes after the frame": blob[read_frame(blob)[1] : -4] + b"\x00\x00\x00\x00",
        "two frames": zc(payload[:100]) + zc(payload[100:]),
        "empty": b"",
        "not a frame": payload,
        "a frame with a checksum, then junk": zc(payload, write_checksum=True) + b"junk",
    }
    for name, body in cases.items():
        with pytest.raises(CorruptBlob, match="payload"):
            decode(forge(blob, body=body), calibration=cal)
        assert inspect(forge(blob, body=body)).codec_id == inspect(blob).codec_id, name  # header only
    with pytest.raises(CorruptBlob, match="inconsistent blob header"):  # zstd config, flag cleared
        decode(forge(blob, flags=0, body=payload), calibration=cal)
    with pytest.raises(CorruptBlob, match="unknown flags 0x3"):
        decode(forge(blob, flags=3), calibration=cal)
    with pytest.raises(CorruptBlob, match="unknown flags 0x1 in a format v1 blob"):
        decode(forge(blob, version=1), calibration=cal)
    with pytest.raises(CorruptBlob, match="inconsistent blob header"):  # a v2 config framed as v1
        decode(forge(blob, version=1, flags=0, body=payload), calibration=cal)
    v1 = Codec.from_preset("gear3").encode(make_layers(0, 1, 1, 1, 8, 64, torch.float16))
    with pytest.raises(CorruptBlob, match="unknown flags 0x1 in a format v1 blob"):
        decode(forge(v1, flags=1, body=zc(payload_of(v1))))
    with pytest.raises(UnsupportedFormatVersion, match="version 3"):
        decode(forge(blob, version=3), calibration=cal)


def test_byte_flips_inside_a_resealed_zstd_frame_never_crash() -> None:
    """Behind a recomputed CRC, a flipped byte of the frame either fails zstd's or the codec's own checks
    (CorruptBlob) or decodes to tensors of the right shapes: never another exception."""
    blob, cal = small_v2_blob("gtc2")
    start = read_frame(blob)[1]
    frame = blob[start:-4]
    refused = 0
    for i in range(0, len(frame), max(1, len(frame) // 60)):
        for flip in (0x01, 0xFF):
            bad = bytearray(frame)
            bad[i] ^= flip
            try:
                out = decode(forge(blob, body=bytes(bad)), calibration=cal)
            except CorruptBlob:
                refused += 1
            else:
                assert [(k.shape, v.shape) for k, v in out] == [((1, 2, 70, 64),) * 2] * 2
    assert refused > 0


def _resealed(blob: bytes, cal: Calibration, edit: Any) -> bytes:
    """``blob`` with its sections edited by ``edit(header, tensors)`` and packed again, consistently."""
    info, plan, start, flags = _api._parse(blob)
    views = section_views(blob, start, plan.layout, torch.device("cpu"), flags)
    tensors = {name: t.clone() for name, t in views.items()}
    header = header_of(blob)
    edit(header, tensors)
    escapes = (len(tensors.get("k.eidx", ())), len(tensors.get("v.eidx", ())))
    header["escapes"] = list(escapes)
    store = getattr(torch, header["store_dtype"])
    plan = _api._plan(info.config, info.num_layers, info.key_shape, info.value_shape, info.sink_tokens,
                      store, escapes)  # fmt: skip
    return pack_blob(header, plan.layout, tensors, version=2, entropy=info.config.entropy)


def test_resealed_sections_hit_the_inner_checks() -> None:
    blob, cal = small_v2_blob("gtc2")
    assert _resealed(blob, cal, lambda h, t: None) == blob  # the repacking itself is sound
    n = 2 * 1 * 2  # rows: layers * batch * heads
    numel = n * 64 * (70 - 1)  # the keys' quantized body, channel-major

    def index(value: int) -> Any:
        return lambda h, t: t["k.eidx"].__setitem__(0, value)

    for value in (numel, numel + 1000):  # escapes are stored as gaps; the first from position 0
        with pytest.raises(CorruptBlob, match="escape index outside the part"):
            decode(_resealed(blob, cal, index(value)), calibration=cal)
    for value in (-1, -numel - 1):
        with pytest.raises(CorruptBlob, match="escape positions must increase"):
            decode(_resealed(blob, cal, index(value)), calibration=cal)
    repeated = _resealed(
        blob, cal,
        lambda h, t: t.update({"k.eidx": torch.cat([t["k.eidx"], torch.tensor([0], dtype=torch.int32)]),
                               "k.eval": torch.cat([t["k.eval"], torch.tensor([1.0], dtype=torch.float16)])}),
    )  # fmt: skip
    with pytest.raises(CorruptBlob, match="escape positions must increase"):
        decode(repeated, calibration=cal)
    # an extra escape at a valid index decodes (the CRC, not the codec, vouches for the values)
    extra = _resealed(
        blob, cal,
        lambda h, t: t.update({"k.eidx": torch.cat([t["k.eidx"], torch.tensor([5], dtype=torch.int32)]),
                               "k.eval": torch.cat([t["k.eval"], torch.tensor([1.0], dtype=torch.float16)])}),
    )  # fmt: skip
    assert header_of(extra)["escapes"][0] == header_of(blob)["escapes"][0] + 1
    assert decode(extra, calibration=cal)[0][0].shape == (1, 2, 70, 64)


# --- calibration files ----------------------------------------------------------------------------------


def sample_calibration() -> Calibration:
    return Calibration(
        "fp-1234", 3, (1.0, 0.5, 2.25), (0.0625, 1.0, 16.0), model="tiny", text="wiki", created="2025-01-01",
        stats={"windows": 4, "k_kl": [0.1, None, 0.3]},
    )  # fmt: skip


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _doc(cal: Calibration) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cal.to_json())
    return doc


def _resigned(doc: dict[str, Any]) -> str:
    doc["sha256"] = hashlib.sha256(_canonical(doc["body"])).hexdigest()
    return json.dumps(doc)


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    cal = sample_calibration()
    path = cal.save(tmp_path / "sub" / "cal.json")
    assert path == tmp_path / "sub" / "cal.json" and [p.name for p in path.parent.iterdir()] == ["cal.json"]
    loaded = Calibration.load(path)
    assert loaded == cal and loaded.digest == cal.digest
    assert dict(loaded.stats) == {"windows": 4, "k_kl": [0.1, None, 0.3]}
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == ("gearkv-codec-calibration", 1)
    assert Calibration.from_json(path.read_bytes()) == cal
    cal.save(path)  # overwrite in place
    assert Calibration.load(path) == cal


def test_scales_are_held_as_the_file_holds_them(tmp_path: Path) -> None:
    """A calibration and its saved copy encode and decode alike. (Was not so: the file and the digest
    rounded scales to 6 decimals while the in-memory one encoded with the unrounded ones.)"""
    cal = Calibration("", 2, (0.123456789, 1.0), (1.0, 3.14159265))
    assert cal.k_scale == (0.123457, 1.0) and cal.v_scale == (1.0, 3.141593)
    loaded = Calibration.load(cal.save(tmp_path / "c.json"))
    assert loaded == cal
    layers = make_layers(2, 2, 1, 2, 64, 64, torch.float32)
    blob = Codec.from_preset("gtc2", calibration=cal).encode(layers)
    assert blob == Codec.from_preset("gtc2", calibration=loaded).encode(layers)
    for (k, v), (k2, v2) in zip(decode(blob, calibration=cal), decode(blob, calibration=loaded), strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)


def _edit_body(**changes: Any) -> Any:
    def edit(doc: dict[str, Any]) -> str:
        doc["body"].update(changes)
        return _resigned(doc)

    return edit


def _drop_from_body(name: str) -> Any:
    def edit(doc: dict[str, Any]) -> str:
        del doc["body"][name]
        return _resigned(doc)

    return edit


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda doc: json.dumps(doc).replace("2.25", "2.5"), "checksum mismatch"),  # an edited number
        (lambda doc: json.dumps(doc)[:-40], "unreadable JSON"),  # truncated
        (lambda doc: json.dumps(doc)[:0], "unreadable JSON"),  # empty
        (lambda doc: "k_scale = [1.0, 0.5]\n", "unreadable JSON"),  # not JSON
        (lambda doc: "[1, 2]", "format is not"),
        (lambda doc: json.dumps({**doc, "format": "gearkv-something"}), "format is not"),
        (lambda doc: json.dumps({**doc, "version": 2}), "version 2 unsupported"),
        (lambda doc: json.dumps({k: v for k, v in doc.items() if k != "body"}), "has no body"),
        (lambda doc: json.dumps({k: v for k, v in doc.items() if k != "sha256"}), "checksum mismatch"),
        (_edit_body(k_scale=[1.0, 0.5, 17.0]), r"k_scale\[2\] = 17.0 is outside"),
        (_edit_body(v_scale=[0.0, 1.0, 1.0]), r"v_scale\[0\] = 0.0 is outside"),
        (_edit_body(v_scale=[1.0, -2.0, 1.0]), "is outside"),
        (_edit_body(k_scale=[1.0, "2", 1.0]), r"k_scale\[1\] must be a finite number"),
        (_edit_body(k_scale=[1.0, True, 1.0]), r"k_scale\[1\] must be a finite number"),
        (_edit_body(k_scale=[1.0, 0.5]), "k_scale has 2 entries for 3 layers"),
        (_edit_body(v_scale=[1.0, 1.0, 1.0, 1.0]), "v_scale has 4 entries for 3 layers"),
        (_edit_body(layers=0), "layers must be an integer"),
        (_edit_body(layers="3"), "layers must be an integer"),
        (_edit_body(k_scale=None), "lacks or mistypes a field"),
        (_edit_body(fingerprint="x" * 300), "fingerprint must be a string"),
        (_drop_from_body("layers"), r"lacks or mistypes a field: KeyError\('layers'\)"),
        (lambda doc: json.dumps(doc).replace("2.25", "NaN"), "not plain JSON"),
    ],
)
def test_damaged_calibration_files_name_the_problem(tmp_path: Path, damage: Any, match: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(damage(_doc(sample_calibration())))
    with pytest.raises(CalibrationError, match=match) as raised:
        Calibration.load(path)
    assert not isinstance(raised.value, CalibrationMismatch)
    if "checksum" in match or "JSON" in match or "format" in match or "body" in match:
        assert str(path) in str(raised.value)  # the file is named


def test_unreadable_and_oversized_calibration_files(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="cannot read codec calibration"):
        Calibration.load(tmp_path / "missing.json")
    with pytest.raises(CalibrationError, match="cannot read codec calibration"):
        Calibration.load(tmp_path)  # a directory
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(5 << 20)  # sparse
    with pytest.raises(CalibrationError, match="too large"):
        Calibration.load(big)
    with pytest.raises(CalibrationError, match=r"unreadable JSON"):
        Calibration.from_json(b"\xff\xfe\x00garbage")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", 0, (), ()), "layers must be"),
        (("", 1025, (1.0,) * 1025, (1.0,) * 1025), "layers must be"),
        (("", True, (1.0,), (1.0,)), "layers must be"),
        (("", 2, (1.0,), (1.0, 1.0)), "k_scale has 1 entries for 2 layers"),
        (("", 1, (math.nan,), (1.0,)), "finite"),
        (("", 1, (1.0,), (math.inf,)), "finite"),
        (("", 1, (1 / 17,), (1.0,)), "outside"),
        ((None, 1, (1.0,), (1.0,)), "fingerprint"),
    ],
)
def test_bad_calibrations_are_refused(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        Calibration(*args)


def test_digest_names_what_decoding_depends_on() -> None:
    cal = sample_calibration()
    same = [
        replace(cal, text="another text"),
        replace(cal, created="2030-12-31T00:00:00"),
        replace(cal, stats={}),
        replace(cal, model="renamed"),
        Calibration(cal.fingerprint, cal.layers, cal.k_scale, cal.v_scale),
        Calibration(cal.fingerprint, cal.layers, tuple(s + 1e-9 for s in cal.k_scale), cal.v_scale),  # rounds
    ]
    assert all(c.digest == cal.digest for c in same)
    digests = {cal.digest}
    for name in ("k_scale", "v_scale"):
        for i in range(cal.layers):
            scales = list(getattr(cal, name))
            scales[i] = scales[i] * 0.999 if scales[i] > 1 else scales[i] * 1.001
            digests.add(replace(cal, **{name: tuple(scales)}).digest)
    digests.add(replace(cal, fingerprint="fp-other").digest)
    digests.add(replace(cal, fingerprint="").digest)
    digests.add(replace(cal, k_scale=cal.v_scale, v_scale=cal.k_scale).digest)  # swapped
    digests.add(Calibration.uniform(2).digest)
    digests.add(Calibration.uniform(3).digest)
    assert len(digests) == 1 + 2 * cal.layers + 5
    assert all(len(d) == 16 for d in digests)


# --- golden bytes of format v2 ----------------------------------------------------------------------------

GOLDEN_CAL = Calibration("", 2, (1.0, 0.5), (0.5, 2.0))
# Pinned unconditionally (independent of the zstd library): the frame prefix and the start of the header,
# the whole header, and the payload's sections before the entropy stage. The compressed bytes are also
# pinned, but only under the libzstd that wrote them: another zstd version may write another (equally
# valid) frame for the same payload, which changes no decoded value; the format is what the other pins hold.
GOLDEN_ZSTD = (1, 5, 7)
GOLDEN_GTC2 = {
    "head64": (
        "474b560002000100e00100007b2263616c6962726174696f6e223a2235366634"
        "316562343439363132636663222c22636f6465635f6964223a22677463322e76"
    ),
    "header_sha256": "8954c6dd4605afa70096f1eba644ce3e0158708eb111f0d023c344cdd8f6a1b9",
    "payload_sha256": "bc86a0e9cfb6e257f24f19303df56aa81b9688408faec3027cbb28ea6d5048f3",
    "blob_len": 2624,
    "blob_sha256": "88188288db8145708e968ce0b977b7258ea8e7be49c52c8a16887b94eb9a5fa4",
}
GOLDEN_GEAR2_ZSTD = {
    "head64": (
        "474b560002000100a40100007b22636f6465635f6964223a2267656172322e7a"
        "7374642e7632222c22636f6e666967223a7b22656e74726f7079223a227a7374"
    ),
    "header_sha256": "8797e8478e2a5b7e7c22d57ccc8d0393bd90231df3a40988943b8d2d434fa5c4",
    "payload_sha256": "54364498fe77f02900d7979aa97f2acc4aece568d97e361047704045f4cfaae8",
    "blob_len": 2101,
    "blob_sha256": "3f5b9b1637fc9a32ead7f15859f93bb751d6f640288181840d8d143db1b2817b",
}


def golden_layers() -> list[KV]:
    i = torch.arange(2 * 8 * 64, dtype=torch.float32).view(1, 2, 8, 64)
    out = []
    for layer in range(2):
        k = ((i * 37 + 5 * layer) % 17 - 8) / 4
        v = ((i * 11 + 3 * layer) % 13 - 6) / 8
        v[0, 1, 5] = 1.5 * (layer + 1)  # a flat token: its rotation is one large channel (an escape)
        out.append((k.half(), v.half()))
    return out


def golden_facts(blob: bytes) -> dict[str, Any]:
    _, start, _, _ = read_frame(blob)
    return {
        "head64": blob[:64].hex(),
        "header_sha256": hashlib.sha256(blob[:start]).hexdigest(),
        "payload_sha256": hashlib.sha256(payload_of(blob)).hexdigest(),
        "blob_len": len(blob),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
    }


def assert_golden(blob: bytes, golden: dict[str, Any]) -> None:
    facts = golden_facts(blob)
    for name in ("head64", "header_sha256", "payload_sha256"):
        assert facts[name] == golden[name], name
    if zstandard.ZSTD_VERSION == GOLDEN_ZSTD:
        assert (facts["blob_len"], facts["blob_sha256"]) == (golden["blob_len"], golden["blob_sha256"])


def test_golden_bytes_v2_gtc2() -> None:
    layers = golden_layers()
    codec = Codec.from_preset("gtc2", calibration=GOLDEN_CAL)
    blob = codec.encode(layers)
    assert header_of(blob)["escapes"] == [0, 1]  # the escape sections are part of what is pinned
    assert_golden(blob, GOLDEN_GTC2)
    out = decode(blob, calibration=GOLDEN_CAL)
    for (k, v), (k2, v2) in zip(layers, out, strict=True):
        assert torch.equal(k2[:, :, 0], k[:, :, 0]) and torch.equal(v2[:, :, 0], v[:, :, 0])
        assert rel_err(k2, k) < 0.3 and rel_err(v2, v) < 0.6
    # the escape is the flat token's one large rotated channel (8x its mean), kept at 16 bits
    assert float(out[0][1][0, 1, 5].float().mean()) == pytest.approx(1.5, abs=2e-3)


def test_golden_bytes_v2_gear2_zstd() -> None:
    layers = golden_layers()
    blob = Codec.from_preset("gear2", entropy="zstd").encode(layers)
    assert_golden(blob, GOLDEN_GEAR2_ZSTD)
    assert payload_of(blob) == payload_of(Codec.from_preset("gear2").encode(layers))
