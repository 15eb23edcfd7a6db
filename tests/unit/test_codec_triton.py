"""Triton kernels against the torch path: the same blobs byte for byte, decoded values within rounding.

Triton fixes at its first import, per process, whether kernels run compiled or in its interpreter
(``TRITON_INTERPRET=1`` at that moment). So this module imports triton with ``TRITON_INTERPRET=1``
(set for that import only, then restored) and runs every test on CPU tensors in the interpreter; no
other test uses triton. Under the ``gpu`` marker, ``test_compiled_kernels_on_cuda`` runs the same tests
on CUDA in a child process that imports triton compiled; it is skipped where no CUDA device is present.
Shapes are small: the interpreter runs each kernel program in numpy.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

_COMPILED = os.environ.get("GEARKV_TEST_TRITON_COMPILED") == "1"  # the gpu child process
if not _COMPILED and "triton" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in ("triton.language", "triton.experimental.gluon", "triton.runtime.interpreter"):
            importlib.import_module(name)  # gluon is otherwise imported at the first launch
    except ImportError:
        pass  # not installed: the kernel tests skip
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before

from gearkv.codec import (  # noqa: E402
    PRESETS,
    BackendUnavailable,
    Calibration,
    Codec,
    CodecConfig,
    UnsupportedConfig,
    _api,
    _triton,
    decode,
    decode_into,
    inspect,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

needs_triton = pytest.mark.skipif(not _triton.available(), reason="triton is not installed (gearkv[kernels])")
REPO = Path(__file__).resolve().parents[2]
PATHS = ":".join(str(REPO / p) for p in ("client", "store", "worker", "proto", "bench"))
# The presets the kernels implement (GEAR/KIVI quantization); gtc has no kernels and runs on torch
# under any backend (test_gtc_has_no_kernels_and_runs_on_torch).
KERNEL_PRESETS = sorted(p for p, cfg in PRESETS.items() if cfg.mode == "quant")
# One step of each output dtype relative to a value: decoded values may round one step apart.
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}


@pytest.fixture
def device() -> torch.device:
    """CPU in the interpreter; CUDA (compiled) in the gpu child process."""
    if not _triton.available():
        pytest.skip("triton is not installed (gearkv[kernels])")
    if _COMPILED:
        return torch.device("cuda")
    if not _triton._kernel_set()[0]:
        pytest.fail("triton was imported before this module without TRITON_INTERPRET=1: run it on its own")
    return torch.device("cpu")


def make_layers(
    seed: int, layers: int, heads: int, tokens: int, dk: int, dv: int, dtype: torch.dtype, batch: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        offset = torch.randn(1, heads, 1, dk, generator=gen) * 3  # key channels carry offsets
        k = torch.randn(batch, heads, tokens, dk, generator=gen) + offset
        k[..., 5] *= 8  # an outlier channel
        v = torch.randn(batch, heads, tokens, dv, generator=gen)
        out.append((k.to(dtype), v.to(dtype)))
    return out


def assert_close_decodes(blob: bytes, device: torch.device) -> None:
    """Triton's decode of ``blob`` equals torch's within one rounding of the output dtype.

    The two sum in different orders (the inverse rotation, the low-rank product), so their fp32 results
    differ by fp32 rounding (allowed: 2**-18 of the largest magnitude); the 16-bit outputs may then round
    one step apart.
    """
    info = inspect(blob)
    for dtype in (torch.float32, getattr(torch, info.dtype)):
        want = decode(blob, device, dtype, backend="torch")
        got = decode(blob, device, dtype, backend="triton")
        for (k, v), (k2, v2) in zip(want, got, strict=True):
            for a, b in ((k, k2), (v, v2)):
                assert b.dtype == a.dtype and b.shape == a.shape
                a, b = a.float().cpu(), b.float().cpu()
                tol = EPS[dtype] * torch.maximum(a.abs(), b.abs()) + 2.0**-18 * float(a.abs().max())
                excess = float(((a - b).abs() - tol).max())
                assert excess <= 0, (dtype, excess)


def assert_same_blobs(
    cfg: CodecConfig, layers: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, start: int = 0
) -> bytes:
    on = [(k.to(device), v.to(device)) for k, v in layers]
    want = Codec(cfg, backend="torch").encode(on, start=start)
    got = Codec(cfg, backend="triton").encode(on, start=start)
    assert got == want  # codes, group parameters, outliers, factors, header: byte for byte
    assert_close_decodes(want, device)
    return want


# (config, layers, heads, tokens, dk, dv, dtype, start): presets and the corners the kernels branch on.
CASES = {
    "gear2 late keys, tails": (PRESETS["gear2"], 3, 2, 70, 64, 64, torch.float16, 0),
    "gear3 bf16 hd128": (PRESETS["gear3"], 2, 2, 65, 128, 128, torch.bfloat16, 0),
    "gear4 mid-session": (PRESETS["gear4"], 1, 2, 33, 128, 128, torch.float16, 256),
    "kivi2 bf16 params": (PRESETS["kivi2"], 2, 2, 40, 64, 64, torch.bfloat16, 0),
    "kivi4 hd128 fp16": (PRESETS["kivi4"], 1, 2, 100, 128, 64, torch.float16, 0),
    "8-bit, 3 outliers, low rank": (
        CodecConfig(k_bits=8, v_bits=8, k_outliers=3 / 256, v_outliers=2 / 256, k_rank=2, v_rank=3),
        1, 2, 50, 64, 64, torch.float16, 0,
    ),
    "3/4-bit, groups 16/32, hd96, fp32": (
        CodecConfig(k_bits=3, v_bits=4, k_group=16, v_group=32, k_outliers=2 / 256, v_outliers=1 / 256),
        1, 2, 37, 96, 96, torch.float32, 0,
    ),
    "2-bit fp16 params, hd80, value outliers": (
        CodecConfig(k_bits=2, v_bits=2, param_bits=16, v_outliers=2 / 256, v_group=16), 1, 1, 21, 80, 80,
        torch.float16, 0,
    ),
    "hd256 (rotation after the kernel), group 256": (
        CodecConfig(k_bits=2, v_bits=3, k_group=256, k_outliers=1 / 256), 1, 1, 130, 256, 256,
        torch.bfloat16, 0,
    ),
    "no rotation, outliers, bf16": (
        CodecConfig(k_bits=3, v_bits=3, rotate=False, k_outliers=1 / 256, v_outliers=1 / 256),
        1, 2, 45, 64, 64, torch.bfloat16, 0,
    ),
    "one token after a 4-token sink, 4 outliers": (
        CodecConfig(k_bits=3, v_bits=4, sink_tokens=4, k_outliers=4 / 256), 2, 1, 5, 96, 128,
        torch.bfloat16, 0,
    ),
    "sink only": (PRESETS["gear3"], 1, 2, 1, 64, 64, torch.float16, 0),
    "two tokens, batch 2": (PRESETS["gear2"], 1, 1, 2, 64, 64, torch.float16, 3),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_blobs_are_identical_and_decodes_agree(case: str, device: torch.device) -> None:
    cfg, n_layers, heads, tokens, dk, dv, dtype, start = CASES[case]
    batch = 2 if "batch 2" in case or "sink, 4" in case else 1
    layers = make_layers(len(case), n_layers, heads, tokens, dk, dv, dtype, batch=batch)
    assert_same_blobs(cfg, layers, device, start)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    preset=st.sampled_from(KERNEL_PRESETS),
    tokens=st.sampled_from([3, 17, 63, 64, 65, 129]),
    dk=st.sampled_from([64, 128]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_give_identical_blobs(
    preset: str, tokens: int, dk: int, dtype: torch.dtype, seed: int, device: torch.device
) -> None:
    assert_same_blobs(PRESETS[preset], make_layers(seed, 1, 2, tokens, dk, dk, dtype), device)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_code_width(bits: int, device: torch.device) -> None:
    cfg = CodecConfig(k_bits=bits, v_bits=bits, k_outliers=1 / 256)
    assert_same_blobs(cfg, make_layers(bits, 1, 2, 47, 64, 128, torch.float16), device)


def test_constant_and_tied_groups(device: torch.device) -> None:
    """Zero-range groups code as 0 without NaN; tied outlier scores pick the first position as torch."""
    k = torch.zeros(1, 2, 70, 64, dtype=torch.float16)
    k[:, 1] = 0.75  # constant: every outlier score ties
    k[0, 0, 10:20] = -0.0  # signed zeros must not change a stored byte
    v = torch.full((1, 2, 70, 64), -2.5, dtype=torch.float16)
    v[0, 1, :, 7] = 4.0
    for cfg in (PRESETS["gear3"], replace(PRESETS["kivi2"], k_outliers=2 / 256, v_outliers=1 / 256)):
        blob = assert_same_blobs(cfg, [(k, v)], device)
        ((k2, v2),) = decode(blob, device, backend="triton")
        assert torch.isfinite(k2).all() and torch.isfinite(v2).all()


def test_cross_decoding_and_decode_into(device: torch.device) -> None:
    """A blob written on one backend decodes on the other, also into a token range of a larger buffer."""
    layers = make_layers(5, 2, 2, 40, 64, 64, torch.float16)
    on = [(k.to(device), v.to(device)) for k, v in layers]
    for preset in ("gear2", "kivi4"):
        from_triton = Codec.from_preset(preset, backend="triton").encode(on)
        from_torch = Codec.from_preset(preset, backend="torch").encode(on)
        assert from_triton == from_torch
        want = decode(from_triton, device, torch.float32, backend="torch")
        big_k = torch.full((2, 1, 2, 50, 64), 7.0, device=device)
        big_v = big_k.clone()
        decode_into(from_torch, big_k[:, :, :, 3:43], big_v[:, :, :, 3:43], backend="triton")
        for i, (k, v) in enumerate(want):
            torch.testing.assert_close(big_k[i, :, :, 3:43], k, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(big_v[i, :, :, 3:43], v, rtol=1e-5, atol=1e-5)
        assert bool((big_k[..., :3, :] == 7).all() and (big_k[..., 43:, :] == 7).all())


def test_gtc_has_no_kernels_and_runs_on_torch(device: torch.device) -> None:
    """backend="triton" accepts the gtc presets and writes/reads them on torch (the same bytes, the same
    tensors); the entropy stage on a GEAR preset compresses the kernels' sections, as torch's."""
    assert set(KERNEL_PRESETS) == {"gear2", "gear3", "gear4", "kivi2", "kivi4"}
    layers = make_layers(3, 2, 2, 40, 64, 64, torch.float16)
    on = [(k.to(device), v.to(device)) for k, v in layers]
    cal = Calibration.uniform(2)
    for preset in ("gtc2", "gtc3"):
        want = Codec.from_preset(preset, backend="torch", calibration=cal).encode(on)
        got = Codec.from_preset(preset, backend="triton", calibration=cal).encode(on)
        assert got == want
        a = decode(want, device, backend="torch", calibration=cal)
        b = decode(want, device, backend="triton", calibration=cal)
        for (k, v), (k2, v2) in zip(a, b, strict=True):
            assert torch.equal(k, k2) and torch.equal(v, v2)
    assert_same_blobs(replace(PRESETS["gear3"], entropy="zstd"), layers, device)


@needs_triton
def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_triton, "_kernel_set", lambda: (False, {}))  # triton imported compiled
    layers = make_layers(1, 1, 1, 8, 64, 64, torch.float16)
    blob = Codec.from_preset("gear3", backend="torch").encode(layers)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        Codec.from_preset("gear3", backend="triton").encode(layers)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        decode(blob, backend="triton")
    # auto never picks the kernels for CPU tensors, and plain presets need no kernels at all
    assert decode(blob)[0][0].shape == layers[0][0].shape
    assert Codec.from_preset("fp16", backend="triton").encode(layers)


def test_backend_names_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnsupportedConfig, match="backend must be one of"):
        Codec.from_preset("gear3", backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedConfig, match="backend must be one of"):
        decode(b"", backend="gpu")  # type: ignore[arg-type]
    assert Codec.from_preset("gear3").backend == "auto"
    assert repr(Codec.from_preset("gear3", backend="torch")) == "Codec(gear3.v1, backend='torch')"
    assert not _api._use_triton("auto", torch.device("cpu"))
    assert not _api._use_triton("torch", torch.device("cuda"))
    monkeypatch.setattr(_triton, "import_error", lambda: "ImportError: No module named 'triton'")
    assert not _api._use_triton("auto", torch.device("cuda"))  # auto falls back to torch
    with pytest.raises(BackendUnavailable, match=r"gearkv\[kernels\]"):
        Codec.from_preset("gear3", backend="triton")


def test_codec_works_without_triton_installed() -> None:
    """With ``import triton`` failing, the codec imports, encodes and decodes on torch."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from gearkv.codec import BackendUnavailable, Codec, decode
        layers = [(torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64))]
        blob = Codec.from_preset("gear3").encode(layers)
        assert decode(blob)[0][0].shape == (1, 2, 40, 64)
        try:
            Codec.from_preset("gear3", backend="triton")
        except BackendUnavailable as exc:
            assert "gearkv[kernels]" in str(exc), exc
        else:
            raise SystemExit("backend='triton' without triton did not raise")
        """
    )
    env = {"PYTHONPATH": PATHS, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=99
    )
    assert result.returncode == 0, result.stderr


def test_bench_throughput_runs_on_cpu(tmp_path: Path) -> None:
    from gearkv.bench.codec import main

    out = tmp_path / "speed.json"
    argv = ["--throughput", "--layout", "2x2x16x64", "--reps", "1", "--presets", "gear3", "kivi2", "--json"]
    assert main([*argv, str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["preset"], r["backend"]) for r in result["rows"]] == [("gear3", "torch"), ("kivi2", "torch")]
    assert all(r["ratio"] > 3 and r["compress_gbps"] > 0 and r["decode_gbps"] > 0 for r in result["rows"])
    assert result["bandwidth"]["copy_gbps"] > 0
    assert any("Triton kernels were not measured" in n for n in result["notes"])


def test_bench_on_cuda_says_when_there_is_none(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from gearkv.bench.codec import main

    assert main(["--device", "cuda"]) == 2
    assert "no CUDA device is present" in capsys.readouterr().err


@pytest.mark.gpu
def test_compiled_kernels_on_cuda() -> None:
    """This module's tests on CUDA with the compiled kernels, in a process that imports triton compiled."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not _triton.available():
        pytest.skip("triton is not installed (gearkv[kernels])")
    if _COMPILED:
        pytest.skip("this is the child process")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(GEARKV_TEST_TRITON_COMPILED="1", PYTHONPATH=PATHS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not on_cuda"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
