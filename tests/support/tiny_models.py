"""Shared settings of the tiny random-weight transformers configs the worker's unit tests build."""

from __future__ import annotations

from typing import Any

VOCAB = 128


def common_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments every tiny config shares (GQA: 4 query heads over 2 KV heads, head_dim 16)."""
    base: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    base.update(overrides)
    return base
