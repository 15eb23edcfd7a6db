"""Request validation: pure checks that raise ``InvalidArgument`` naming the field and the limit.

The API's limits and the checks the SDK runs too (keys, session ids, commit and lease ids, token
counts, lease lifetimes) are the contract's (:mod:`gearkv.api.limits`); this module raises their
``InvalidField`` as the store's ``InvalidArgument`` and adds what only the store checks (whole
headers and manifests, the chain of keys, defaults for 0). Also the manifest's stored form (a
checksummed envelope around the ``Manifest`` protobuf).
"""

from __future__ import annotations

import hashlib
import struct

from gearkv.api import limits
from gearkv.api.digest import DIGEST_BYTES
from gearkv.api.errors import raising_as
from gearkv.api.keys import Namespace, chunk_key
from gearkv.api.limits import (
    DEFAULT_LEASE_MS,
    DEFAULT_PAGE_SIZE,
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_BYTES,
    MAX_MESSAGES,
    MAX_MESSAGES_BYTES,
    MAX_PAGE_SIZE,
    MAX_RAW_BYTES,
    MAX_ROLE,
)
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.store.chunk_format import ChunkMeta
from gearkv.store.errors import DataLoss, InvalidArgument

_MANIFEST_MAGIC = b"GKVM"
_MANIFEST_PREFIX = struct.Struct("<4sH16s")

key = raising_as(InvalidArgument, limits.check_key)
session_id = raising_as(InvalidArgument, limits.check_session_id)
token_count = raising_as(InvalidArgument, limits.check_token_count)
_id = raising_as(InvalidArgument, limits.check_id)
_lease_ms = raising_as(InvalidArgument, limits.check_lease_ms)


def namespace(msg: pb.Namespace, has: bool, field: str = "namespace") -> Namespace:
    if not has:
        raise InvalidArgument(f"{field} is required")
    try:
        ns = Namespace(msg.fingerprint, msg.codec_id, msg.chunk_size)
    except ValueError as exc:
        raise InvalidArgument(f"{field}.{str(exc).removeprefix('namespace.')}") from None
    return ns


def commit_id(value: str, field: str = "commit_id") -> str:
    """A commit id (or a lease holder, a lease id): 1-64 printable ASCII chars without spaces."""
    return _id(value, field)


def optional_id(value: str, field: str) -> str:
    """A lease holder or lease id: empty, or shaped like a commit id."""
    return commit_id(value, field) if value else ""


def lease_ms(value: int) -> int:
    """The lease lifetime to use: ``value``, or the default for 0."""
    return _lease_ms(value) or DEFAULT_LEASE_MS


def ttl_ms(ttl_s: int, default_s: int, max_s: int) -> int:
    return min(ttl_s or default_s, max_s) * 1000


def page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be in 1..{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")
    return value


def put_header(h: pb.PutChunkHeader, max_chunk_bytes: int, tenant: str) -> ChunkMeta:
    """Check a PutChunk header, including that ``key`` is the chain hash of its token ids."""
    key(h.key, "header.key")
    if h.parent_key:
        key(h.parent_key, "header.parent_key")
    ns = namespace(h.namespace, h.HasField("namespace"), "header.namespace")
    size = ns.chunk_size
    if h.start % size:
        raise InvalidArgument(f"header.start must be a multiple of namespace.chunk_size ({size})")
    if not h.start < h.end <= h.start + size:
        raise InvalidArgument(f"header.end must be in start+1..start+{size} (chunk_size)")
    if len(h.token_ids) != h.end - h.start:
        raise InvalidArgument(f"header.token_ids must have end - start = {h.end - h.start} entries")
    if (h.start == 0) != (h.parent_key == ""):
        raise InvalidArgument("header.parent_key must be empty exactly when header.start is 0")
    if not 1 <= h.total_bytes <= max_chunk_bytes:
        raise InvalidArgument(f"header.total_bytes must be in 1..{max_chunk_bytes}")
    if h.raw_bytes > MAX_RAW_BYTES:
        raise InvalidArgument(f"header.raw_bytes must be <= {MAX_RAW_BYTES}")
    if len(h.digest) != DIGEST_BYTES:
        raise InvalidArgument(f"header.digest must be {DIGEST_BYTES} bytes (XXH3-128)")
    if chunk_key(ns, h.parent_key, h.start, h.token_ids) != h.key:
        raise InvalidArgument("header.key does not match parent_key, start and token_ids")
    return ChunkMeta(
        tenant=tenant,
        key=h.key,
        namespace=ns,
        start=h.start,
        end=h.end,
        raw_bytes=h.raw_bytes,
        stored_bytes=h.total_bytes,
        digest=bytes(h.digest),
    )


def manifest(m: pb.Manifest) -> Namespace:
    """Check a manifest to commit: ids, sizes, and that its chunks chain over its token ids."""
    session_id(m.session_id, "manifest.session_id")
    ns = namespace(m.namespace, m.HasField("namespace"), "manifest.namespace")
    token_count(len(m.token_ids), "manifest.token_ids")
    if len(m.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(
            f"manifest.attributes has {len(m.attributes)} entries; the limit is {MAX_ATTRIBUTES}"
        )
    total = 0
    for name, value in m.attributes.items():
        if not 1 <= len(name) <= MAX_ATTRIBUTE_KEY or len(value) > MAX_ATTRIBUTE_VALUE:
            raise InvalidArgument(
                f"manifest.attributes keys must be 1-{MAX_ATTRIBUTE_KEY} chars, "
                f"values <= {MAX_ATTRIBUTE_VALUE}"
            )
        total += len(name.encode()) + len(value.encode())
    if total > MAX_ATTRIBUTES_BYTES:
        raise InvalidArgument(
            f"manifest.attributes hold {total} bytes; the limit is {MAX_ATTRIBUTES_BYTES} for all together"
        )
    if len(m.messages) > MAX_MESSAGES:
        raise InvalidArgument(f"manifest.messages has {len(m.messages)} entries; the limit is {MAX_MESSAGES}")
    total = 0
    for i, msg in enumerate(m.messages):
        if not 1 <= len(msg.role) <= MAX_ROLE:
            raise InvalidArgument(f"manifest.messages[{i}].role must be 1-{MAX_ROLE} chars")
        total += len(msg.role.encode()) + len(msg.content.encode())
    if total > MAX_MESSAGES_BYTES:
        raise InvalidArgument(
            f"manifest.messages hold {total} bytes of text; the limit is {MAX_MESSAGES_BYTES} in all"
        )
    size = ns.chunk_size
    tokens = m.token_ids
    parent = ""
    end = 0
    for i, c in enumerate(m.chunks):
        field = f"manifest.chunks[{i}]"
        key(c.key, f"{field}.key")
        if c.start != end:
            raise InvalidArgument(f"{field}.start must be {end} (chunks are contiguous from 0)")
        if end % size:
            raise InvalidArgument(f"{field}: only the last chunk may be shorter than chunk_size ({size})")
        if not c.start < c.end <= c.start + size:
            raise InvalidArgument(f"{field}.end must be in start+1..start+{size} (chunk_size)")
        if c.raw_bytes > MAX_RAW_BYTES or c.stored_bytes > MAX_RAW_BYTES:
            raise InvalidArgument(f"{field}.raw_bytes and .stored_bytes must be <= {MAX_RAW_BYTES}")
        if c.end > len(tokens):
            raise InvalidArgument(f"{field}.end must be <= len(manifest.token_ids) ({len(tokens)})")
        if chunk_key(ns, parent, c.start, tokens[c.start : c.end]) != c.key:
            raise InvalidArgument(f"{field}.key does not match the token ids it covers")
        parent, end = c.key, c.end
    return ns


def encode_manifest(m: pb.Manifest) -> bytes:
    body = m.SerializeToString(deterministic=True)
    return _MANIFEST_PREFIX.pack(_MANIFEST_MAGIC, 1, hashlib.blake2b(body, digest_size=16).digest()) + body


def decode_manifest(value: bytes) -> pb.Manifest:
    """Parse a stored manifest. Raises DataLoss when the value is damaged."""
    n = _MANIFEST_PREFIX.size
    if len(value) < n:
        raise DataLoss("stored manifest is corrupt")
    magic, version, check = _MANIFEST_PREFIX.unpack_from(value)
    body = value[n:]
    if magic != _MANIFEST_MAGIC or version != 1 or hashlib.blake2b(body, digest_size=16).digest() != check:
        raise DataLoss("stored manifest is corrupt")
    m = pb.Manifest()
    try:
        m.ParseFromString(body)
    except Exception:  # protobuf's DecodeError; the checksum makes this unreachable in practice
        raise DataLoss("stored manifest is corrupt") from None
    return m
