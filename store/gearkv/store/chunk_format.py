"""One Redis value per chunk: a self-describing, checksummed header followed by the payload.

    magic b"GKVC" | u16 format version | u32 header length | XXH3-128(header) | header | payload

The header is compact JSON: tenant, key, namespace, token range, raw and stored sizes, and the
XXH3-128 digest of the payload (the digest the API carries, see ``gearkv.api.digest``; format
version 1 values, written before, carry blake2b-256 and are still read). ``decode_value`` checks
everything (header checksum, the tenant and key it was asked for, the payload length and digest) so a
flipped byte, a truncated value or a value swapped under another key or tenant is detected before a
byte is served. The payload is hashed once per read and never copied here. Pure functions, no I/O.

This envelope is the store's own, not part of the API contract: only the store writes and reads Redis
values (clients see ChunkInfo and the payload), so it lives here and not in ``gearkv.api``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, replace

from gearkv.api.digest import DIGEST_BYTES, payload_digest
from gearkv.api.keys import Namespace

__all__ = ["DIGEST_BYTES", "ChunkMeta", "CorruptValue", "decode_value", "encode_header", "payload_digest"]

MAGIC = b"GKVC"
FORMAT_VERSION = 2
_LEGACY_BLAKE2B = 1  # format 1: blake2b-128 header check, blake2b-256 payload digest
_PREFIX = struct.Struct("<4sHI16s")  # magic, version, header length, header digest


class CorruptValue(Exception):
    """A stored chunk value failed a check; the message names which (no payload bytes in it)."""


@dataclass(frozen=True)
class ChunkMeta:
    """What the store knows about a chunk besides its bytes."""

    tenant: str
    key: str
    namespace: Namespace
    start: int
    end: int
    raw_bytes: int
    stored_bytes: int
    digest: bytes


def _header_check(header: bytes | memoryview, version: int) -> bytes:
    if version == _LEGACY_BLAKE2B:
        return hashlib.blake2b(header, digest_size=16).digest()
    return payload_digest(header)


def encode_header(meta: ChunkMeta) -> bytes:
    """The value's prefix (everything before the payload); append exactly ``meta.stored_bytes`` bytes."""
    header = json.dumps(
        {
            "t": meta.tenant,
            "k": meta.key,
            "fp": meta.namespace.fingerprint,
            "codec": meta.namespace.codec_id,
            "cs": meta.namespace.chunk_size,
            "s": meta.start,
            "e": meta.end,
            "raw": meta.raw_bytes,
            "n": meta.stored_bytes,
            "d": meta.digest.hex(),
        },
        separators=(",", ":"),
    ).encode()
    check = _header_check(header, FORMAT_VERSION)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), check) + header


def encode_value(meta: ChunkMeta, payload: bytes | bytearray | memoryview) -> bytes:
    return b"".join((encode_header(meta), payload))


def decode_value(value: bytes, expected_tenant: str, expected_key: str) -> tuple[ChunkMeta, memoryview]:
    """Parse and verify a stored value; returns the metadata and a zero-copy view of the payload.

    Raises:
        CorruptValue: any check failed (bad magic or version, header checksum, wrong key,
            payload length or digest mismatch).
    """
    view = memoryview(value)
    if len(view) < _PREFIX.size:
        raise CorruptValue("value shorter than its fixed prefix")
    magic, version, header_len, check = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CorruptValue("bad magic")
    if version not in (FORMAT_VERSION, _LEGACY_BLAKE2B):
        raise CorruptValue(f"unsupported chunk format version {version}")
    header_end = _PREFIX.size + header_len
    if len(view) < header_end:
        raise CorruptValue("value truncated inside its header")
    header = view[_PREFIX.size : header_end]
    if _header_check(header, version) != check:
        raise CorruptValue("header checksum mismatch")
    try:
        fields = json.loads(bytes(header))
        meta = ChunkMeta(
            tenant=str(fields["t"]),
            key=str(fields["k"]),
            namespace=Namespace(str(fields["fp"]), str(fields["codec"]), int(fields["cs"])),
            start=int(fields["s"]),
            end=int(fields["e"]),
            raw_bytes=int(fields["raw"]),
            stored_bytes=int(fields["n"]),
            digest=bytes.fromhex(str(fields["d"])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptValue("header does not parse") from exc
    if meta.key != expected_key or meta.tenant != expected_tenant:
        raise CorruptValue("value belongs to another key or tenant")
    payload = view[header_end:]
    if len(payload) != meta.stored_bytes:
        raise CorruptValue("payload length mismatch")
    if version == _LEGACY_BLAKE2B:
        if hashlib.blake2b(payload, digest_size=32).digest() != meta.digest:
            raise CorruptValue("payload digest mismatch")
        return replace(meta, digest=payload_digest(payload)), payload  # what the API reports now
    if payload_digest(payload) != meta.digest:
        raise CorruptValue("payload digest mismatch")
    return meta, payload
