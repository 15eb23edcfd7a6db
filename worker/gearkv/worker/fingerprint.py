"""Model fingerprints: KV is only ever reused under an identical model, config, dtype and tokenizer.

The fingerprint is ``<model name>:<hash>``, where the hash covers everything that changes the KV a
prompt produces: the attention geometry (layers, KV heads, head_dim), rope settings, sliding windows,
the dtype, a sample of the weights (two fine-tunes of one architecture differ there) and the
tokenizer (its vocabulary and special tokens decide which ids a prompt becomes).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import torch
from gearkv.client.keys import Namespace

__all__ = ["config_digest", "model_fingerprint", "namespace_for", "tokenizer_digest", "weights_digest"]

_CONFIG_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_size",
    "vocab_size",
    "max_position_embeddings",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "partial_rotary_factor",
    "sliding_window",
    "layer_types",
    "attention_bias",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
)
_NAME_RE = re.compile(r"[^0-9A-Za-z._\-]+")
_WEIGHT_SAMPLE = 16384


def _h(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def config_digest(config: Any, dtype: torch.dtype) -> str:
    """Hash of the config fields that shape the KV, plus the dtype the model runs in."""
    fields = {name: getattr(config, name, None) for name in _CONFIG_FIELDS}
    canon = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return _h(canon.encode(), str(dtype).encode())


def tokenizer_digest(tokenizer: Any) -> str:
    """Hash of the vocabulary (token -> id) and the special tokens."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    canon = json.dumps([vocab, specials], ensure_ascii=False, separators=(",", ":"))
    return _h(canon.encode())


def weights_digest(model: Any) -> str:
    """Hash of a small sample of the first and last parameters (cheap, tells fine-tunes apart)."""
    params = list(model.parameters())
    parts = []
    for p in (params[:2] + params[-1:]) if params else []:
        flat = p.detach().reshape(-1)[:_WEIGHT_SAMPLE].to("cpu", torch.float32).contiguous()
        parts.append(flat.numpy().tobytes())
    return _h(*parts)


def model_fingerprint(loaded: Any) -> str:
    """``<name>:<hash24>``, valid as a Namespace fingerprint (1-128 chars of [0-9A-Za-z._:-])."""
    name = _NAME_RE.sub("-", str(loaded.name)).strip("-")[-80:] or "model"
    digest = _h(
        config_digest(loaded.model.config, loaded.dtype).encode(),
        tokenizer_digest(loaded.tokenizer).encode(),
        weights_digest(loaded.model).encode(),
    )
    return f"{name}:{digest[:24]}"


def namespace_for(fingerprint: str, codec_id: str, chunk_size: int) -> Namespace:
    return Namespace(fingerprint=fingerprint, codec_id=codec_id, chunk_size=chunk_size)
