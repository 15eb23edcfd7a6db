"""Calibrating the gtc codecs for a model: per-layer step scales chosen against next-token KL.

For each layer and each of keys and values, that part alone is quantized with the gtc reference steps
(the gtc2 preset, scale 1) and the KL divergence of the next-token distributions it causes is measured
on calibration windows (the prefix's KV quantized, the continuation teacher-forced on it, against the
same run on 16-bit KV). A part whose error costs more KL gets a finer step, one that costs less a coarser
one: scale = (KL / geometric mean of its kind) ** -POWER, clamped to SCALE_CLAMP. With quantization
error ~ step^2, equal KL per bit would take POWER = 0.5; 0.3 measured best on SmolLM2 (the per-layer KLs
are noisy estimates, and shrinking them toward the mean pays; see docs/codec.md).
"""

from __future__ import annotations

import math
import os
import sysconfig
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from gearkv.codec import PRESETS as CODEC_PRESETS
from gearkv.codec import Calibration, CalibrationError, Codec, CodecConfig, decode
from gearkv.worker import hf_cache

__all__ = [
    "DEFAULT_TEXT_MODULES",
    "POWER",
    "SCALE_CLAMP",
    "calibrate_codec",
    "continuation_logprobs",
    "default_calibration_path",
    "default_text",
    "ensure_calibration",
    "next_token_kl",
    "scales_from_kl",
]

POWER = 0.3
SCALE_CLAMP = (0.5, 2.0)
# Python's own source (on every machine with Python), none of the modules `gearkv bench codec`
# evaluates on: calibration text never overlaps the evaluation windows.
DEFAULT_TEXT_MODULES = ("collections/__init__.py", "json/decoder.py", "logging/__init__.py",
                        "http/client.py", "email/message.py", "tarfile.py")  # fmt: skip
Progress = Callable[[int, int, str], None]  # (done, total, what)


def default_text() -> tuple[str, str]:
    """``(text, description)``: the default calibration text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = [(stdlib / m).read_text(encoding="utf-8") for m in DEFAULT_TEXT_MODULES if (stdlib / m).is_file()]
    return "\n\n".join(parts), "python-stdlib:" + ",".join(DEFAULT_TEXT_MODULES)


def default_calibration_path(fingerprint: str) -> Path:
    """Where ``ensure_calibration`` caches a model's calibration (``$GEARKV_CACHE_DIR`` or ~/.cache)."""
    root = Path(os.environ.get("GEARKV_CACHE_DIR") or Path.home() / ".cache" / "gearkv")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in fingerprint)
    return root / "codec-calibration" / f"{safe}.json"


def scales_from_kl(kl: Sequence[float], power: float = POWER) -> list[float]:
    """Per-layer step scales from the KL each layer's error costs (geometric mean -> 1)."""
    floor = 1e-9
    logs = [math.log(max(k, floor)) for k in kl]
    mean = sum(logs) / len(logs)
    lo, hi = SCALE_CLAMP
    return [min(hi, max(lo, math.exp(-power * (x - mean)))) for x in logs]


def _windows(tokenizer: Any, text: str, count: int, prefix: int, cont: int) -> torch.Tensor:
    ids = tokenizer(text)["input_ids"]
    need = prefix + cont + 1
    if len(ids) < need:
        raise ValueError(f"calibration text has {len(ids)} tokens; one window needs {need}")
    span = len(ids) - need
    starts = [(span * i) // max(count - 1, 1) for i in range(count)]
    return torch.tensor([ids[s : s + need] for s in starts], dtype=torch.long)


def continuation_logprobs(
    model: Any, ids: torch.Tensor, prefix: int, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Log-probabilities [batch, len - prefix - 1, vocab] of teacher-forcing ``ids[:, prefix:-1]`` on
    the prefix's KV ``layers`` (converted to the model's dtype)."""
    dtype = next(model.parameters()).dtype
    cache = hf_cache.import_kv([(k.to(dtype), v.to(dtype)) for k, v in layers])
    with torch.inference_mode():
        logits = model(input_ids=ids[:, prefix:-1], **hf_cache.forward_kwargs(model, cache)).logits
    return torch.log_softmax(logits.float(), dim=-1)


def next_token_kl(base: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(base || logp) per position [batch, positions], in nats, from log-probabilities."""
    return (base.exp() * (base - logp)).sum(-1)


def calibrate_codec(
    loaded: Any,
    *,
    fingerprint: str,
    text: str | None = None,
    text_name: str = "",
    windows: int = 4,
    prefix: int = 512,
    cont: int = 64,
    max_seconds: float = 300.0,
    reference: str = "gtc2",
    progress: Progress | None = None,
) -> Calibration:
    """Measure each layer's KL cost under the reference gtc steps and derive per-layer scales.

    Layers not measured within ``max_seconds`` keep scale 1 (``stats["measured"]`` says how many were).
    """
    started = time.perf_counter()
    if text is None:
        text, text_name = default_text()
    model = loaded.model
    ids = _windows(loaded.tokenizer, text, windows, prefix, cont)
    cache = hf_cache.new_cache(model.config)
    with torch.inference_mode():
        model(input_ids=ids[:, :prefix], **hf_cache.forward_kwargs(model, cache))
    kv16 = [(k.to(torch.float16), v.to(torch.float16)) for k, v in hf_cache.export_kv(cache)]
    layers = len(kv16)
    base = continuation_logprobs(model, ids, prefix, kv16)
    ref: CodecConfig = CODEC_PRESETS[reference]
    one = Calibration.uniform(1)
    codec = Codec(ref, calibration=one)
    total = 2 * layers
    kl: dict[str, list[float | None]] = {"k": [None] * layers, "v": [None] * layers}
    done = 0
    for part in ("k", "v"):
        for i in range(layers):
            if time.perf_counter() - started > max_seconds:
                break
            k, v = kv16[i]
            dk, dv = decode(codec.encode([(k, v)]), calibration=one)[0]
            trial = list(kv16)
            trial[i] = (dk, v) if part == "k" else (k, dv)
            logp = continuation_logprobs(model, ids, prefix, trial)
            kl[part][i] = float(next_token_kl(base, logp).mean())
            done += 1
            if progress is not None:
                progress(done, total, f"{'keys' if part == 'k' else 'values'} of layer {i}")

    def scales(values: list[float | None]) -> list[float]:
        measured = [x for x in values if x is not None]
        if not measured:
            return [1.0] * layers
        fill = math.exp(sum(math.log(max(x, 1e-9)) for x in measured) / len(measured))
        return scales_from_kl([fill if x is None else x for x in values])

    return Calibration(
        fingerprint=fingerprint,
        layers=layers,
        k_scale=tuple(scales(kl["k"])),
        v_scale=tuple(scales(kl["v"])),
        model=getattr(loaded, "name", ""),
        text=text_name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        stats={
            "reference": reference,
            "windows": windows,
            "prefix_tokens": prefix,
            "continuation_tokens": cont,
            "measured": done,
            "of": total,
            "power": POWER,
            "seconds": round(time.perf_counter() - started, 1),
            "k_kl": [None if x is None else round(x, 7) for x in kl["k"]],
            "v_kl": [None if x is None else round(x, 7) for x in kl["v"]],
        },
    )


def ensure_calibration(
    loaded: Any, fingerprint: str, path: Path | None = None, *, progress: Progress | None = None
) -> Calibration:
    """The cached calibration of this model, made (and cached) on first use."""
    target = path or default_calibration_path(fingerprint)
    if target.is_file():
        try:
            cal = Calibration.load(target)
            if cal.fingerprint == fingerprint:
                return cal
        except CalibrationError:
            pass  # a damaged cache file is replaced below
    # lighter than the CLI's defaults: this runs inside `gearkv demo` on first use
    cal = calibrate_codec(loaded, fingerprint=fingerprint, windows=2, prefix=384, cont=64, progress=progress)
    cal.save(target)
    return cal
