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

Layer-wise KV sharing (KVSharer, :func:`share_kv`) also lives here, because it is the other place that
knows transformers' attention internals: a shared layer attends with an earlier owner layer's KV and
skips its own key/value projections, and the cache holds one slot per owner layer only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

KVPair = tuple[torch.Tensor, torch.Tensor]
KVLayers = list[KVPair]

__all__ = [
    "KVLayers",
    "KVPair",
    "KVSharing",
    "UnsupportedCacheError",
    "UnsupportedSharingError",
    "cache_length",
    "concat_kv",
    "crop_cache",
    "crop_kv",
    "decoder_layers",
    "export_kv",
    "forward_kwargs",
    "import_kv",
    "kv_nbytes",
    "kv_sharing",
    "kv_tokens",
    "new_cache",
    "share_kv",
    "unshare_kv",
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


def import_kv(
    kv: Sequence[KVPair], config: Any = None, *, copy: bool = False, layers: int | None = None
) -> DynamicCache:
    """A cache holding ``kv`` (one ``(K, V)`` per layer, ``[batch, kv_heads, tokens, head_dim]``).

    Without ``copy`` the cache adopts the given tensors (a resumed 2k-token cache is ~100 MB in fp32;
    copying it costs tens of ms on the critical path). That is safe because a dynamic layer never
    writes into its tensors: it grows by concatenation into new ones, so ``kv`` is never modified.

    Args:
        layers: the cache layers expected (a model with KV sharing caches only its owner layers);
            default ``config.num_hidden_layers``.

    Raises:
        ValueError: layers disagree on the token count, or ``kv`` holds another layer count.
    """
    if layers is None and config is not None:
        layers = getattr(config, "num_hidden_layers", None)
    if layers is not None and len(kv) != layers:
        raise ValueError(f"kv has {len(kv)} layers, the model caches {layers}")
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


# -- layer-wise KV sharing (KVSharer) -------------------------------------------------------------


class UnsupportedSharingError(ValueError):
    """The model lacks the standard attention layout that KV sharing hooks into, or the map is invalid."""


_SHARING_ATTR = "_gearkv_kv_sharing"
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class KVSharing:
    """KV sharing applied to a model: which layer attends with which owner's KV, and the cache slots.

    ``owners`` maps each shared layer to its owner (an earlier layer that is not shared itself);
    ``slots`` maps each owner layer (every layer not shared) to its cache slot, in layer order, so a
    cache holds ``len(slots)`` layers.
    """

    num_layers: int
    owners: Mapping[int, int]
    slots: Mapping[int, int]

    @property
    def cache_layers(self) -> int:
        return len(self.slots)


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers (``model.model.layers`` in transformers' causal LMs), or []."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def share_kv(model: Any, owners: Mapping[int, int]) -> KVSharing:
    """Make each layer ``i`` in ``owners`` attend with layer ``owners[i]``'s KV (in place; reversible).

    The model must have the standard attention layout: decoder layers whose ``self_attn`` has
    ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and a ``layer_idx``. A shared layer's attention runs
    its own code (query projection and norm, RoPE, mask, scaling, soft-capping...) but its key/value
    projections return zeros without computing anything, and where it would add its keys/values to
    the cache it reads the owner's slot instead: the owner ran earlier in the same forward, so that
    slot already holds this step's keys (after RoPE) and values. Owner layers write to their slot
    (``slots``), so the cache holds only owner layers. A forward needs a cache (``use_cache``).

    Applying the same map again returns the applied sharing; :func:`unshare_kv` undoes it.

    Raises:
        UnsupportedSharingError: not the standard layout, or an invalid map (a layer out of range, an
            owner not earlier than its layer, an owner that is itself shared), or the model already
            shares KV under another map.
    """
    layers = decoder_layers(model)
    if not layers:
        raise UnsupportedSharingError(
            f"{type(model).__name__} has no decoder layers (model.model.layers): KV sharing needs them"
        )
    owners = {int(k): int(v) for k, v in owners.items()}
    for layer, owner in owners.items():
        if not 0 <= owner < layer < len(layers):
            raise UnsupportedSharingError(
                f"layer {layer} cannot share layer {owner}'s KV: an owner must be an earlier layer "
                f"(the model has {len(layers)} layers)"
            )
        if owner in owners:
            raise UnsupportedSharingError(
                f"layer {layer}'s owner {owner} is itself shared: resolve chains to the final owner"
            )
    current: KVSharing | None = getattr(model, _SHARING_ATTR, None)
    if current is not None:
        if dict(current.owners) == owners:
            return current
        raise UnsupportedSharingError("the model already shares KV under another map (unshare_kv it first)")
    attns = [_standard_attention(layer, idx) for idx, layer in enumerate(layers)]
    slots = {idx: n for n, idx in enumerate(i for i in range(len(layers)) if i not in owners)}
    sharing = KVSharing(len(layers), owners, slots)
    if not owners:
        return sharing  # nothing to hook: every layer owns its slot at its own index
    for idx, attn in enumerate(attns):
        if idx in owners:
            attn.forward = _shared_forward(attn.forward, idx, slots[owners[idx]])
            for name in ("k_proj", "v_proj"):
                proj = getattr(attn, name)
                proj.forward = _skipped_projection(_out_features(proj, name, idx))
        else:
            attn.forward = _owner_forward(attn.forward, slots[idx])
    setattr(model, _SHARING_ATTR, sharing)
    return sharing


def unshare_kv(model: Any) -> None:
    """Undo :func:`share_kv` (nothing to do on a model without sharing)."""
    if getattr(model, _SHARING_ATTR, None) is None:
        return
    for layer in decoder_layers(model):
        attn = layer.self_attn
        for module in (attn, attn.k_proj, attn.v_proj):
            module.__dict__.pop("forward", None)
    delattr(model, _SHARING_ATTR)


def kv_sharing(model: Any) -> KVSharing | None:
    """The sharing applied to ``model`` by :func:`share_kv` (None without one)."""
    return getattr(model, _SHARING_ATTR, None)


def _standard_attention(layer: Any, idx: int) -> Any:
    attn = getattr(layer, "self_attn", None)
    missing = [n for n in _PROJECTIONS if not isinstance(getattr(attn, n, None), torch.nn.Module)]
    if attn is None or missing:
        what = "no self_attn" if attn is None else f"self_attn without {', '.join(missing)}"
        raise UnsupportedSharingError(
            f"decoder layer {idx} ({type(layer).__name__}) has {what}: KV sharing needs the standard "
            "attention layout (self_attn with q_proj, k_proj, v_proj, o_proj and a layer_idx)"
        )
    if getattr(attn, "layer_idx", None) != idx:
        raise UnsupportedSharingError(
            f"decoder layer {idx}'s self_attn has layer_idx {getattr(attn, 'layer_idx', None)!r}, "
            f"expected {idx}: KV sharing needs the standard attention layout"
        )
    return attn


def _out_features(proj: Any, name: str, idx: int) -> int:
    out = getattr(proj, "out_features", None)
    if not isinstance(out, int):
        raise UnsupportedSharingError(f"layer {idx}'s self_attn.{name} is not a linear projection")
    return out


def _skipped_projection(out_features: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        # A zero-stride view of the right shape: nothing is computed or allocated for it.
        return hidden.new_zeros(()).expand(*hidden.shape[:-1], out_features)

    return forward


def _cache_arg(kwargs: dict[str, Any]) -> str | None:
    for name in ("cache", "past_key_values"):
        if kwargs.get(name) is not None:
            return name
    return None


def _owner_forward(forward: Callable[..., Any], slot: int) -> Callable[..., Any]:
    def owner_forward(*args: Any, **kwargs: Any) -> Any:
        name = _cache_arg(kwargs)
        if name is not None:
            kwargs[name] = _SlotCache(kwargs[name], slot)
        return forward(*args, **kwargs)

    return owner_forward


def _shared_forward(forward: Callable[..., Any], layer: int, owner_slot: int) -> Callable[..., Any]:
    def shared_forward(*args: Any, **kwargs: Any) -> Any:
        name = _cache_arg(kwargs)
        if name is None:
            raise UnsupportedSharingError(
                f"layer {layer} shares another layer's KV: run the model with a cache (use_cache=True)"
            )
        kwargs[name] = _OwnerView(kwargs[name], owner_slot)
        return forward(*args, **kwargs)

    return shared_forward


class _SlotCache:
    """The cache as an owner layer sees it: its updates go to its slot, not its layer index."""

    def __init__(self, cache: Any, slot: int) -> None:
        self._cache, self._slot = cache, slot

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kw: Any) -> Any:
        del layer_idx
        return self._cache.update(keys, values, self._slot, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


class _OwnerView(_SlotCache):
    """The cache as a shared layer sees it: an update adds nothing and returns the owner's KV."""

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kw: Any) -> Any:
        del keys, values, layer_idx, args, kw
        if self._slot >= len(self._cache.layers):
            raise UnsupportedSharingError(f"the owner's cache slot {self._slot} is empty")
        layer = self._cache.layers[self._slot]
        return layer.keys, layer.values
