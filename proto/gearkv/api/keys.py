"""Content addresses of KV chunks: a blake2b chain over the namespace and every token id.

Pure functions shared by the SDK (which names the chunks it writes), the store (which verifies a
written key and walks the chain in LookupPrefix) and the worker; the SDK re-exports this module as
``gearkv.client.keys``, its public name. A chunk's key depends on the model fingerprint, the codec
id, the chunk size and *all* token ids from the session start to the chunk's end, so equal prefixes
give equal keys (deduplication) and nothing else does.

    ns   = H("gearkv/ns/v1" 0x00 fingerprint 0x00 codec_id 0x00 u32(chunk_size))
    k_0  = H(ns      u32(0)     u32(n) u32(token id)...)     n = tokens in the chunk
    k_i  = H(k_{i-1} u32(start) u32(n) u32(token id)...)     keys are lowercase hex

H is BLAKE2b with a 32-byte digest (``digest_size=32``, not BLAKE2b-512 cut short); u32 is a
little-endian uint32. Never Python's salted ``hash()``. The normative byte-for-byte spec, for clients
in other languages, is the "Chunk keys" section at the top of ``gearkv/api/v1/kvstore.proto``, with
test vectors that ``tests/unit/test_client_key_spec.py`` reads from there and checks against this code.
"""

from __future__ import annotations

import hashlib
import re
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from gearkv.api.errors import InvalidField
from gearkv.api.limits import (
    KEY_HEX_LEN,
    MAX_CHUNK_SIZE,
    MAX_U32,
    SESSION_ID_RE,
    is_valid_key,
    is_valid_session_id,
)

__all__ = [
    "KEY_HEX_LEN",
    "MAX_CHUNK_SIZE",
    "MAX_TOKEN_ID",
    "SESSION_ID_RE",
    "ChunkSpan",
    "Namespace",
    "chain",
    "chunk_key",
    "is_valid_key",
    "is_valid_session_id",
]

MAX_TOKEN_ID = MAX_U32
_FINGERPRINT_RE = re.compile(r"^[0-9A-Za-z._:\-]{1,128}$")
_CODEC_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class Namespace:
    """What produced a chunk's bytes; KV is reused only under an identical namespace.

    Raises:
        InvalidField (a ValueError): a field is malformed; the message names it and the limit.
    """

    fingerprint: str
    codec_id: str
    chunk_size: int

    def __post_init__(self) -> None:
        if not _FINGERPRINT_RE.fullmatch(self.fingerprint):
            raise InvalidField("namespace.fingerprint must be 1-128 chars of [0-9A-Za-z._:-]")
        if not _CODEC_ID_RE.fullmatch(self.codec_id):
            raise InvalidField("namespace.codec_id must be 1-128 printable ASCII chars without spaces")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidField(f"namespace.chunk_size must be in 1..{MAX_CHUNK_SIZE}")

    def digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=32)
        h.update(b"gearkv/ns/v1\0")
        h.update(self.fingerprint.encode() + b"\0" + self.codec_id.encode() + b"\0")
        h.update(struct.pack("<I", self.chunk_size))
        return h.digest()


def _token_bytes(token_ids: Sequence[int]) -> bytes:
    arr = array("I", token_ids)  # raises OverflowError for ids outside uint32
    if arr.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte "I"
        arr = array("L", token_ids)
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover - big-endian hosts
        arr.byteswap()
    return arr.tobytes()


def chunk_key(ns: Namespace, parent_key: str, start: int, token_ids: Sequence[int]) -> str:
    """Key of the chunk covering ``token_ids`` at ``start``, chained on ``parent_key`` ("" = first)."""
    if parent_key and not is_valid_key(parent_key):
        raise InvalidField("parent_key must be 64 lowercase hex chars or empty")
    if (start == 0) != (parent_key == ""):
        raise InvalidField("parent_key must be empty exactly for the chunk at start 0")
    if not token_ids:
        raise InvalidField("token_ids must not be empty")
    h = hashlib.blake2b(digest_size=32)
    h.update(bytes.fromhex(parent_key) if parent_key else ns.digest())
    h.update(struct.pack("<II", start, len(token_ids)))
    h.update(_token_bytes(token_ids))
    return h.hexdigest()


@dataclass(frozen=True)
class ChunkSpan:
    key: str
    parent_key: str
    start: int
    end: int


def chain(ns: Namespace, token_ids: Sequence[int], *, include_tail: bool = True) -> list[ChunkSpan]:
    """Keys of the aligned chunks covering ``token_ids`` (full chunks, then the partial tail)."""
    spans: list[ChunkSpan] = []
    parent = ""
    size = ns.chunk_size
    stop = len(token_ids) if include_tail else len(token_ids) - len(token_ids) % size
    for start in range(0, stop, size):
        end = min(start + size, stop)
        key = chunk_key(ns, parent, start, token_ids[start:end])
        spans.append(ChunkSpan(key=key, parent_key=parent, start=start, end=end))
        parent = key
    return spans
