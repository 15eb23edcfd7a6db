"""The one adapter between GearKV and transformers' Cache API.

Everything else in the worker sees KV as plain tensors: a list with one ``(K, V)`` pair per layer, each
``[batch, kv_heads, tokens, head_dim]``. transformers v5 removed ``key_cache``/``value_cache`` and the
legacy tuple caches; what survives, and all this module uses, is ``DynamicCache``,
``layers[i].keys/.values``, ``update(k, v, layer_idx)``, ``get_seq_length()`` and ``crop()``.
A model's ``forward`` takes the cache as ``cache`` in later 5.x releases (where ``past_key_values``
warns that it will be removed) and as ``past_key_values`` before: :func:`forward_kwargs` picks the
keyword the installed model accepts.

Sliding-window models (Mistral, Gemma 2/3 style) get a cache of full layers: the model still applies
its window through the attention mask, and the cache keeps every position so that a session can be
exported, stored and resumed at any length (a windowed layer forgets the tokens a later resume needs).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

KVPair = tuple[torch.Tensor, torch.Tensor]
KVLayers = list[KVPair]

__all__ = [
    "KVLayers",
    "KVPair",
    "UnsupportedCacheError",
    "cache_length",
    "concat_kv",
    "crop_cache",
    "crop_kv",
    "export_kv",
    "forward_kwargs",
    "import_kv",
    "kv_nbytes",
    "kv_tokens",
    "new_cache",
]


class UnsupportedCacheError(ValueError):
    """The cache cannot be exported losslessly (a windowed layer dropped tokens, a non-KV layer, ...)."""


def new_cache(config: Any = None) -> DynamicCache:
    """An empty cache for a model with ``config``: full ``DynamicLayer`` s that keep every position.

    ``config`` is accepted for symmetry with :func:`import_kv` and deliberately not passed on:
    a config-derived cache would use windowed layers for sliding-attention models (see module doc).
    """
    del config
    return DynamicCache()


def forward_kwargs(model: Any, cache: DynamicCache) -> dict[str, Any]:
    """Keyword arguments that hand ``cache`` to ``model(...)`` and have it update the cache.

    Returns:
        ``{"cache": cache, "use_cache": True}`` where ``model.forward`` takes ``cache`` (transformers
        5.x releases that deprecate ``past_key_values`` with a ``FutureWarning``), else
        ``{"past_key_values": cache, "use_cache": True}``.
    """
    return {_cache_keyword(model.__class__): cache, "use_cache": True}


@functools.cache
def _cache_keyword(model_type: Any) -> str:
    """``"cache"`` or ``"past_key_values"``: the name ``model_type.forward`` gives the cache."""
    params = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def export_kv(cache: DynamicCache, start: int = 0, end: int | None = None) -> KVLayers:
    """Per-layer ``(K, V)`` for positions ``[start, end)`` of ``cache``, as views (no copy).

    Returns:
        One pair per layer, each ``[batch, kv_heads, end - start, head_dim]``.

    Raises:
        UnsupportedCacheError: a layer is not a plain KV layer or no longer holds every position.
        ValueError: ``start``/``end`` outside the cached length.
    """
    total = cache_length(cache)
    end = total if end is None else end
    if not 0 <= start <= end <= total:
        raise ValueError(f"export range [{start}, {end}) outside the cached 0..{total} tokens")
    out: KVLayers = []
    for idx, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise UnsupportedCacheError(f"cache layer {idx} ({type(layer).__name__}) holds no K/V tensors")
        if keys.dim() != 4 or keys.shape[-2] != total or values.shape[-2] != total:
            raise UnsupportedCacheError(
                f"cache layer {idx} ({type(layer).__name__}) holds {keys.shape[-2]} of {total} positions"
            )
        out.append((keys[:, :, start:end, :], values[:, :, start:end, :]))
    return out


def import_kv(kv: Sequence[KVPair], config: Any = None, *, copy: bool = False) -> DynamicCache:
    """A cache holding ``kv`` (one ``(K, V)`` per layer, ``[batch, kv_heads, tokens, head_dim]``).

    Without ``copy`` the cache adopts the given tensors (a resumed 2k-token cache is ~100 MB in fp32;
    copying it costs tens of ms on the critical path). That is safe because a dynamic layer never
    writes into its tensors: it grows by concatenation into new ones, so ``kv`` is never modified.

    Raises:
        ValueError: layers disagree on the token count, or ``config`` names another layer count.
    """
    layers = getattr(config, "num_hidden_layers", None) if config is not None else None
    if layers is not None and len(kv) != layers:
        raise ValueError(f"kv has {len(kv)} layers, the model has {layers}")
    lengths = {t.shape[-2] for pair in kv for t in pair}
    if len(lengths) > 1:
        raise ValueError(f"kv layers hold different token counts: {sorted(lengths)}")
    cache = new_cache(config)
    for idx, (keys, values) in enumerate(kv):
        if copy:
            cache.update(keys, values, idx)
            continue
        cache.update(keys[:, :, :0], values[:, :, :0], idx)  # initializes the layer (dtype, device)
        layer: Any = cache.layers[idx]
        layer.keys, layer.values = keys, values
    return cache


def cache_length(cache: DynamicCache) -> int:
    """Number of positions the cache holds (0 when empty)."""
    return int(cache.get_seq_length()) if len(cache.layers) else 0


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep only the first ``length`` positions of every layer (in place)."""
    total = cache_length(cache)
    if not 0 <= length <= total:
        raise ValueError(f"crop length {length} outside 0..{total}")
    if length < total:
        cache.crop(length - total)  # negative = tokens to remove: the one form every v4.5x/v5 accepts


def crop_kv(kv: Sequence[KVPair], length: int) -> KVLayers:
    """The first ``length`` positions of each layer, as views."""
    return [(k[:, :, :length, :], v[:, :, :length, :]) for k, v in kv]


def concat_kv(parts: Sequence[Sequence[KVPair]]) -> KVLayers:
    """Join consecutive token ranges layer by layer (``parts`` in token order)."""
    if not parts:
        return []
    if len(parts) == 1:
        return list(parts[0])
    n_layers = len(parts[0])
    if any(len(p) != n_layers for p in parts):
        raise ValueError("kv parts have different layer counts")
    return [
        (
            torch.cat([p[i][0] for p in parts], dim=-2),
            torch.cat([p[i][1] for p in parts], dim=-2),
        )
        for i in range(n_layers)
    ]


def kv_tokens(kv: Sequence[KVPair]) -> int:
    """Positions held by ``kv`` (0 for no layers)."""
    return int(kv[0][0].shape[-2]) if kv else 0


def kv_nbytes(kv: Sequence[KVPair], bytes_per_element: int | None = None) -> int:
    """Bytes of ``kv`` at its own element size, or at ``bytes_per_element`` (2 = the 16-bit figure)."""
    total = 0
    for k, v in kv:
        for t in (k, v):
            total += t.numel() * (bytes_per_element or t.element_size())
    return total
