"""The codec's error tree.

::

    GearKVError (gearkv.api.errors), ValueError
     └── CodecError                  anything the codec rejects
          ├── InvalidInput           tensors that cannot be encoded (rank, shapes, dtype, NaN/Inf, empty)
          ├── UnsupportedConfig      a CodecConfig field outside what format v1 can store
          │    └── BackendUnavailable    backend="triton" where its kernels cannot run
          ├── CorruptBlob            bad magic, truncated, checksum mismatch, inconsistent header
          ├── UnsupportedFormatVersion   a blob written by a newer (or unknown) format version
          └── CalibrationError       a codec calibration file that is unreadable, damaged or malformed
               └── CalibrationMismatch   a calibration missing, or not the one a blob or model needs

Every message names the field or section at fault and the limit it broke. The codec's errors are its
own tree: they share only the root ``GearKVError`` of the API contract (gearkv.api.errors) with the
SDK's, never a class of ``gearkv.client``.
"""

from __future__ import annotations

from gearkv.api.errors import GearKVError  # plain exceptions only: no grpc, protobuf or redis import

__all__ = [
    "BackendUnavailable",
    "CalibrationError",
    "CalibrationMismatch",
    "CodecError",
    "CorruptBlob",
    "InvalidInput",
    "UnsupportedConfig",
    "UnsupportedFormatVersion",
]


class CodecError(GearKVError, ValueError):
    """Base class of every error the codec raises on bad input, config or blobs."""


class InvalidInput(CodecError):
    """The tensors handed to ``encode`` cannot be encoded."""


class UnsupportedConfig(CodecError):
    """A codec setting is outside what the wire format can store."""


class BackendUnavailable(UnsupportedConfig):
    """``backend="triton"`` was asked for where its kernels cannot run (no triton, or CPU tensors without
    ``TRITON_INTERPRET=1``)."""


class CorruptBlob(CodecError):
    """A blob is truncated, corrupted (checksum mismatch) or internally inconsistent."""


class UnsupportedFormatVersion(CodecError):
    """A blob's format version is not one this codec can read."""

    def __init__(self, version: int, supported: tuple[int, ...]) -> None:
        super().__init__(f"unsupported codec format version {version}; this codec reads {list(supported)}")
        self.version = version
        self.supported = supported


class CalibrationError(CodecError):
    """A codec calibration file is unreadable, damaged (checksum mismatch) or malformed."""


class CalibrationMismatch(CalibrationError):
    """A blob or model needs another calibration than the one given (or one where none was given):
    decoding under another calibration would return wrong tensors, so it is refused."""
