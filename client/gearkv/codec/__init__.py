"""GEAR/KIVI compression of attention KV caches: pure compute on torch tensors, no I/O.

``Codec.from_preset("gear3").encode(layers) -> bytes`` and ``decode(blob, device, dtype)`` are the whole
round trip; ``decode_into(blob, keys, values)`` decodes into caller-owned buffers; ``inspect(blob)`` reads
what a blob holds without decoding it. ``backend=`` ("auto", "torch", "triton") picks the PyTorch path or
the fused Triton kernels (``gearkv[kernels]``); both write the same blobs. The gtc presets (format v2,
entropy-coded) need a ``Calibration`` of the model: ``Codec.from_preset("gtc2", calibration=cal)`` and
``decode(blob, calibration=cal)``. See docs/codec.md.
"""

from __future__ import annotations

from ._api import BACKENDS, Backend, BlobInfo, Codec, decode, decode_into, inspect
from ._calibration import Calibration
from ._config import FORMAT_VERSION, PRESETS, CodecConfig, split_codec_id
from .errors import (
    BackendUnavailable,
    CalibrationError,
    CalibrationMismatch,
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
    "Calibration",
    "CalibrationError",
    "CalibrationMismatch",
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
    "split_codec_id",
]
