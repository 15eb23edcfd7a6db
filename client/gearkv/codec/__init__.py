"""GEAR/KIVI compression of attention KV caches: pure compute on torch tensors, no I/O.

``Codec.from_preset("gear3").encode(layers) -> bytes`` and ``decode(blob, device, dtype)`` are the whole
round trip; ``decode_into(blob, keys, values)`` decodes into caller-owned buffers; ``inspect(blob)`` reads
what a blob holds without decoding it. ``backend=`` ("auto", "torch", "triton") picks the PyTorch path or
the fused Triton kernels (``gearkv[kernels]``); both write the same blobs. See docs/codec.md.
"""

from __future__ import annotations

from ._api import BACKENDS, Backend, BlobInfo, Codec, decode, decode_into, inspect
from ._config import FORMAT_VERSION, PRESETS, CodecConfig
from .errors import (
    BackendUnavailable,
    CodecError,
    CorruptBlob,
    InvalidInput,
    UnsupportedConfig,
    UnsupportedFormatVersion,
)

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "PRESETS",
    "Backend",
    "BackendUnavailable",
    "BlobInfo",
    "Codec",
    "CodecConfig",
    "CodecError",
    "CorruptBlob",
    "InvalidInput",
    "UnsupportedConfig",
    "UnsupportedFormatVersion",
    "decode",
    "decode_into",
    "inspect",
]
