"""Wire format v1 and v2: one self-describing blob per chunk (no pickle).

::

    offset  size  field
    0       4     magic b"GKV\\x00"
    4       2     u16 format version (little endian): 1, or 2 for gtc and entropy-coded blobs
    6       2     u16 flags: 0; in v2, bit 0 = the payload is one zstd frame (the entropy stage)
    8       4     u32 header length H (a multiple of 4)
    12      H     header: UTF-8 JSON (config, codec id, dtypes, shapes, sink), space padded
    12+H    ...   payload: raw little-endian sections in the order ``section_order`` gives
    end-4   4     u32 CRC-32 (zlib) of every byte before it

A v2 payload with flag bit 0 is the zstd frame of the sections (its content size is checked against
the header's). Sections are ordered by element size (fp32, then 16-bit, then bytes) so each starts aligned.
CRC-32 detects every single corrupted byte and every burst of up to 32 bits; truncation shows as a
length or checksum mismatch.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import torch

from ._config import FORMAT_VERSIONS
from .errors import CodecError, CorruptBlob, UnsupportedFormatVersion

__all__ = ["FLAG_ZSTD", "MAGIC", "order_sections", "pack_blob", "read_header", "section_views"]

MAGIC = b"GKV\x00"
_PREFIX = struct.Struct("<4sHHI")
_CRC = struct.Struct("<I")
_MAX_HEADER = 1 << 20
SUPPORTED_VERSIONS = FORMAT_VERSIONS
FLAG_ZSTD = 1
ZSTD_LEVEL = 1  # measured: higher levels find no matches in quantized codes and only cost time


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - a dependency of gearkv[codec]
        raise CodecError(
            "the entropy stage needs the zstandard package (pip install 'gearkv[codec]')"
        ) from exc
    return zstandard


Section = tuple[str, torch.dtype, tuple[int, ...]]


def order_sections(sections: list[Section]) -> list[Section]:
    """Payload order: widest elements first (stable), so every section is naturally aligned."""
    return sorted(sections, key=lambda s: -s[1].itemsize)


def _nbytes(section: Section) -> int:
    count = 1
    for d in section[2]:
        count *= d
    return count * section[1].itemsize


def pack_blob(
    header: Mapping[str, Any],
    layout: list[Section],
    tensors: Mapping[str, torch.Tensor],
    *,
    version: int = 1,
    entropy: str = "none",
) -> bytes:
    """Serialize ``header`` and the ``tensors`` named by ``layout`` (already in payload order);
    ``entropy="zstd"`` (v2 only) stores the payload as one zstd frame."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    flags = FLAG_ZSTD if entropy == "zstd" else 0
    if flags and version < 2:
        raise RuntimeError("codec bug: an entropy-coded payload needs format v2")
    buf = bytearray(_PREFIX.pack(MAGIC, version, flags, len(text)))
    buf += text
    payload = bytearray() if flags else buf
    for name, dtype, shape in layout:
        t = tensors[name]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise RuntimeError(
                f"codec bug: section {name} is {t.dtype}{tuple(t.shape)}, expected {dtype}{shape}"
            )
        payload += t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data
    if flags:
        buf += _zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(bytes(payload))
    buf += _CRC.pack(zlib.crc32(buf))
    return bytes(buf)


def read_header(blob: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    """Check magic, version and checksum; return the parsed header and the payload's start offset."""
    header, start, _, _ = read_frame(blob)
    return header, start


def read_frame(blob: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int, int, int]:
    """``read_header`` plus the format version and flags: ``(header, start, version, flags)``.

    Raises:
        CorruptBlob: truncated, bad magic, checksum mismatch or unreadable header.
        UnsupportedFormatVersion: a version this codec does not read.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptBlob(f"a codec blob must be bytes, got {type(blob).__name__}")
    view = memoryview(blob)
    if len(view) < _PREFIX.size + _CRC.size:
        raise CorruptBlob(
            f"blob truncated: {len(view)} bytes, shorter than the {_PREFIX.size + _CRC.size}-byte frame"
        )
    magic, version, flags, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CorruptBlob(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not a GearKV codec blob")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedFormatVersion(version, SUPPORTED_VERSIONS)
    (stored_crc,) = _CRC.unpack_from(view, len(view) - _CRC.size)
    if zlib.crc32(view[: len(view) - _CRC.size]) != stored_crc:
        raise CorruptBlob(f"checksum mismatch over {len(view)} bytes: the blob is corrupted or truncated")
    if flags & ~(FLAG_ZSTD if version >= 2 else 0):
        raise CorruptBlob(f"unknown flags {flags:#x} in a format v{version} blob")
    start = _PREFIX.size + header_len
    if header_len > _MAX_HEADER or start > len(view) - _CRC.size:
        raise CorruptBlob(f"header length {header_len} does not fit in a {len(view)}-byte blob")
    try:
        header = json.loads(bytes(view[_PREFIX.size : start]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptBlob(f"unreadable header: {exc}") from exc
    if not isinstance(header, dict):
        raise CorruptBlob("header is not a JSON object")
    return header, start, version, flags


def section_views(
    blob: bytes | bytearray | memoryview,
    start: int,
    layout: list[Section],
    device: torch.device,
    flags: int = 0,
) -> dict[str, torch.Tensor]:
    """Tensors for every section of ``layout`` (payload order), copied once to ``device``."""
    size = sum(_nbytes(s) for s in layout)
    body = memoryview(blob)[start : len(blob) - _CRC.size]
    if flags & FLAG_ZSTD:
        zstd = _zstd()
        try:
            params = zstd.get_frame_parameters(body)
            if params.content_size != size:
                raise CorruptBlob(
                    f"payload size mismatch: header implies {size} bytes, the zstd frame holds "
                    f"{params.content_size}"
                )
            plain = bytearray(
                zstd.ZstdDecompressor().decompress(body, max_output_size=size, allow_extra_data=False)
            )
        except zstd.ZstdError as exc:
            raise CorruptBlob(f"entropy-coded payload does not decode: {exc}") from exc
        if len(plain) != size:
            raise CorruptBlob(f"payload size mismatch: header implies {size} bytes, decoded {len(plain)}")
    else:
        expected = start + size + _CRC.size
        if expected != len(blob):
            raise CorruptBlob(f"payload size mismatch: header implies {expected} bytes, blob has {len(blob)}")
        plain = bytearray(body)
    raw = torch.frombuffer(plain, dtype=torch.uint8) if plain else torch.empty(0, dtype=torch.uint8)
    raw = raw.to(device)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for section in layout:
        name, dtype, shape = section
        size = _nbytes(section)
        out[name] = raw[offset : offset + size].view(dtype).view(shape)
        offset += size
    return out
