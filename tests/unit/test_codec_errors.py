"""Bad input, bad configs and the pure-function pairs the codec is built from (CPU, no network)."""

from __future__ import annotations

import pytest
import torch
from gearkv.api.errors import GearKVError
from gearkv.codec import (
    PRESETS,
    CalibrationError,
    CalibrationMismatch,
    Codec,
    CodecConfig,
    CodecError,
    CorruptBlob,
    InvalidInput,
    UnsupportedConfig,
    UnsupportedFormatVersion,
    decode,
)
from gearkv.codec._hadamard import hadamard
from gearkv.codec._lowrank import apply_lowrank, lowrank_residual
from gearkv.codec._outliers import merge_outliers, split_outliers
from gearkv.codec._pack import pack_bits, packed_size, unpack_bits
from gearkv.codec._quant import dequantize_groups, quantize_groups


def kv(*shape: int, dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(*shape).to(dtype), torch.randn(*shape).to(dtype)


def test_error_tree() -> None:
    for cls in (InvalidInput, CorruptBlob, UnsupportedConfig, UnsupportedFormatVersion, CalibrationError):
        assert issubclass(cls, CodecError)
    assert issubclass(CalibrationMismatch, CalibrationError)
    assert issubclass(CodecError, ValueError) and issubclass(CodecError, GearKVError)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([], "empty"),
        ([(torch.zeros(2, 3, 4),) * 2], "rank 4"),
        ([(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 5, 8))], "differ in batch, kv_heads or tokens"),
        ([(torch.zeros(1, 2, 0, 8), torch.zeros(1, 2, 0, 8))], "empty"),
        ([(torch.zeros(1, 2, 4, 8, dtype=torch.int32),) * 2], "dtype"),
        ([(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8, dtype=torch.float16))], "dtype"),
        ([kv(1, 2, 4, 8), kv(1, 2, 5, 8)], "layers\\[1\\]"),
        ([(torch.zeros(1, 2, 4, 8), "x")], "torch.Tensor"),
        ([torch.zeros(1, 2, 4, 8)], "pair"),
        (torch.zeros(1, 2, 4, 8), "sequence"),
    ],
)
def test_bad_inputs_raise_invalid_input(layers: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        Codec.from_preset("gear3").encode(layers)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("preset", ["gear3", "fp16", "raw"])
def test_nan_and_inf_are_rejected(bad: float, preset: str) -> None:
    k, v = kv(1, 2, 4, 8, dtype=torch.float32)
    v[0, 1, 2, 3] = bad
    with pytest.raises(InvalidInput, match=r"layers\[1\] values contain NaN or Inf"):
        Codec.from_preset(preset).encode([kv(1, 2, 4, 8, dtype=torch.float32), (k, v)])


def test_fp16_preset_rejects_values_beyond_float16() -> None:
    k = torch.full((1, 1, 2, 8), 1e6)
    with pytest.raises(InvalidInput, match="float16 range"):
        Codec.from_preset("fp16").encode([(k, k)])
    assert torch.equal(decode(Codec.from_preset("raw").encode([(k, k)]))[0][0], k)


def test_bad_start() -> None:
    for start in (-1, 1.5, True):
        with pytest.raises(InvalidInput, match="start"):
            Codec.from_preset("gear3").encode([kv(1, 1, 2, 8)], start=start)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"k_bits": 5}, "k_bits must be one of"),
        ({"v_bits": 1}, "v_bits"),
        ({"k_group": 48}, "k_group"),
        ({"param_bits": 4}, "param_bits"),
        ({"mode": "zip"}, "mode"),
        ({"k_outliers": 0.001}, "multiple of 1/256"),
        ({"v_outliers": 0.5}, "v_outliers"),
        ({"k_rank": -1}, "k_rank"),
        ({"power_iters": 0}, "power_iters"),
        ({"sink_tokens": 1000}, "sink_tokens"),
        ({"rotate": 1}, "rotate"),
        ({"entropy": "gzip"}, "entropy must be one of"),
        ({"k_step": -0.5}, "k_step must be a number"),
        ({"v_step": 9.0}, "v_step must be a number"),
        ({"k_step": True}, "k_step"),
        ({"mode": "gtc"}, "k_step must be > 0 for mode 'gtc'"),
        ({"mode": "gtc", "k_step": 0.5}, "v_step must be > 0"),
    ],
)
def test_bad_configs(fields: dict[str, object], match: str) -> None:
    with pytest.raises(UnsupportedConfig, match=match):
        CodecConfig(**fields)  # type: ignore[arg-type]


def test_unknown_preset_and_config_type() -> None:
    with pytest.raises(UnsupportedConfig, match="gear3"):
        Codec.from_preset("gear9")
    with pytest.raises(UnsupportedConfig):
        Codec({"k_bits": 2})  # type: ignore[arg-type]
    with pytest.raises(UnsupportedConfig, match="unknown codec config fields"):
        CodecConfig.from_dict({"k_bits": 2, "bogus": 1})
    assert set(PRESETS) == {"fp16", "raw", "kivi2", "kivi4", "gear2", "gear3", "gear4", "gtc2", "gtc3"}
    assert {p for p, cfg in PRESETS.items() if cfg.needs_calibration} == {"gtc2", "gtc3"}
    with pytest.raises(UnsupportedConfig, match="entropy must be one of"):
        Codec.from_preset("gear3", entropy="lz4")


def test_bad_output_dtype() -> None:
    blob = Codec.from_preset("gear3").encode([kv(1, 1, 4, 8)])
    with pytest.raises(InvalidInput, match="dtype"):
        decode(blob, dtype=torch.int8)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("count", [1, 3, 8, 9, 31, 1000])
def test_pack_unpack(bits: int, count: int) -> None:
    codes = torch.randint(0, 1 << bits, (count,), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    expected = -(-count // 4) - (-count // 8) if bits == 3 else -(-count * bits // 8)  # 3 bits: two planes
    assert packed.numel() == packed_size(count, bits) == expected
    assert torch.equal(unpack_bits(packed, bits, count), codes)


@pytest.mark.parametrize("dim", [8, 64, 80, 96, 128, 256])
def test_hadamard_is_orthonormal_and_self_inverse(dim: int) -> None:
    h = hadamard(dim, torch.device("cpu"))
    assert torch.allclose(h @ h, torch.eye(dim), atol=1e-5)
    assert torch.equal(h, h.T)


@pytest.mark.parametrize("param_bits", [8, 16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_pair_error_is_within_half_a_stored_step(bits: int, param_bits: int) -> None:
    levels = (1 << bits) - 1
    gen = torch.Generator().manual_seed(100 * bits + param_bits)
    for _ in range(50):  # groups whose ranges differ by orders of magnitude within one head
        x = torch.randn(3, 5, 4, 32, generator=gen) * torch.rand(3, 5, 4, 1, generator=gen) * 10
        codes, params = quantize_groups(x, bits, param_bits, torch.float16)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= levels
        err = (dequantize_groups(codes, params) - x).abs().amax(dim=-1)
        _, scale = params.minimum_and_scale()
        # The stored range covers every group (no clipping): only rounding to the nearest code is left.
        assert bool((err <= scale * 0.5 * (1 + 1e-4) + 1e-6).all())
        step = (x.amax(-1) - x.amin(-1)) / levels
        if param_bits == 16:
            assert bool((err <= step * 0.55 + 1e-3).all())
        else:
            # The u8 grid may widen a group's step by the head's minimum grid step and one log-scale
            # step, or lift it to the head's smallest kept scale (2^lmin): never more.
            assert params.norm is not None
            lo_min_step, lmin, lstep = (params.norm[:, i, None, None] for i in (1, 2, 3))
            widest = torch.maximum((step + lo_min_step / levels) * torch.exp2(lstep), torch.exp2(lmin))
            assert bool((scale <= widest * (1 + 1e-4) + 1e-12).all())


def test_outlier_pair_is_exact() -> None:
    x = torch.randn(2, 8, 3, 64)
    x[1, 5, 2, 7] = 100.0
    rest, offsets, values = split_outliers(x, 2, None)
    assert offsets.shape == (2, 2, 3, 2) and offsets.dtype == torch.uint8
    assert float(rest.abs().max()) < 100.0
    assert torch.equal(merge_outliers(rest.clone(), offsets, values), x)


def test_lowrank_pair_recovers_a_low_rank_matrix() -> None:
    a = torch.randn(4, 50, 3)
    b = torch.randn(4, 3, 64)
    m = a @ b
    fa, fb = lowrank_residual(m, 3, 3)
    assert torch.allclose(apply_lowrank(torch.zeros_like(m), fa, fb), m, atol=1e-3)


def test_codec_imports_neither_grpc_nor_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gearkv.codec\nassert not [m for m in sys.modules if m.startswith(('grpc', 'redis'))]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
