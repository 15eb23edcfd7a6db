"""The chunk-key and payload-digest spec in kvstore.proto's header, checked against the code.

The test vectors are read out of the .proto text itself, so the comment that other languages implement
from and the Python code (gearkv.api.keys, gearkv.api.digest) cannot drift apart silently; a second,
independent implementation written from the comment's prose (hashlib + struct, nothing from gearkv)
is compared with the code on generated inputs.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash
from gearkv.api.digest import payload_digest
from gearkv.api.keys import Namespace, chain, chunk_key
from hypothesis import given, settings
from hypothesis import strategies as st

PROTO = Path(__file__).resolve().parents[2] / "proto/gearkv/api/v1/kvstore.proto"

_KEY_VECTOR = re.compile(
    r"^//\s+key vector: fingerprint=(\S+) codec_id=(\S+) chunk_size=(\d+) token_ids=([\d,]+)\n"
    r"//\s+ns_digest\s+([0-9a-f]{64})\n"
    r"((?://\s+\[\d+,\d+\) key\s+[0-9a-f]{64}\n)+)",
    re.MULTILINE,
)
_KEY_LINE = re.compile(r"\[(\d+),(\d+)\) key\s+([0-9a-f]{64})")
_DIGEST_VECTOR = re.compile(r"^//\s+digest vector: (.+?)\s+([0-9a-f]{32})$", re.MULTILINE)


@dataclass(frozen=True)
class KeyVector:
    ns: Namespace
    token_ids: tuple[int, ...]
    ns_digest: str
    chunks: tuple[tuple[int, int, str], ...]


def _header() -> str:
    text = PROTO.read_text()
    return text[: text.index("service KVStore")]


def key_vectors() -> list[KeyVector]:
    out = []
    for fp, codec_id, size, ids, ns_digest, lines in _KEY_VECTOR.findall(_header()):
        chunks = tuple((int(a), int(b), k) for a, b, k in _KEY_LINE.findall(lines))
        token_ids = tuple(int(t) for t in ids.split(","))
        out.append(KeyVector(Namespace(fp, codec_id, int(size)), token_ids, ns_digest, chunks))
    return out


def _payload(description: str) -> bytes:
    """The payload a digest vector describes: ``ascii "..."`` or ``bytes 0x00 0x01 ... 0xff (256 B)``."""
    if m := re.fullmatch(r'ascii "([ -~]*)"', description):
        return m.group(1).encode("ascii")
    if re.fullmatch(r"bytes 0x00 0x01 \.\.\. 0xff \(256 B\)", description):
        return bytes(range(256))
    raise AssertionError(f"digest vector payload not understood: {description!r}")


def digest_vectors() -> list[tuple[bytes, str]]:
    return [(_payload(d), h) for d, h in _DIGEST_VECTOR.findall(_header())]


# ---- the spec, implemented from the comment's prose alone -------------------------------------------


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def spec_ns_digest(fingerprint: str, codec_id: str, chunk_size: int) -> bytes:
    return _h(b"gearkv/ns/v1\0" + fingerprint.encode() + b"\0" + codec_id.encode() + b"\0" + _u32(chunk_size))


def spec_keys(fingerprint: str, codec_id: str, chunk_size: int, token_ids: list[int]) -> list[str]:
    parent = spec_ns_digest(fingerprint, codec_id, chunk_size)
    keys = []
    for start in range(0, len(token_ids), chunk_size):
        ids = token_ids[start : start + chunk_size]
        parent = _h(parent + _u32(start) + _u32(len(ids)) + b"".join(map(_u32, ids)))
        keys.append(parent.hex())
    return keys


# ---- tests ------------------------------------------------------------------------------------------


def test_the_proto_carries_vectors() -> None:
    vectors = key_vectors()
    assert len(vectors) >= 3 and sum(len(v.chunks) for v in vectors) >= 5
    assert any(max(v.token_ids) == 2**32 - 1 for v in vectors)  # the u32 and endianness edge
    assert any(len(v.token_ids) % v.ns.chunk_size for v in vectors)  # a tail chunk
    assert len(digest_vectors()) >= 3


@pytest.mark.parametrize("vector", key_vectors(), ids=lambda v: v.ns.fingerprint)
def test_key_vectors_match_the_code(vector: KeyVector) -> None:
    assert vector.ns.digest().hex() == vector.ns_digest
    spans = chain(vector.ns, vector.token_ids)
    assert [(s.start, s.end, s.key) for s in spans] == list(vector.chunks)
    parent = ""
    for start, end, key in vector.chunks:
        assert chunk_key(vector.ns, parent, start, vector.token_ids[start:end]) == key
        parent = key


@pytest.mark.parametrize("vector", key_vectors(), ids=lambda v: v.ns.fingerprint)
def test_key_vectors_match_the_prose(vector: KeyVector) -> None:
    ns = vector.ns
    assert spec_ns_digest(ns.fingerprint, ns.codec_id, ns.chunk_size).hex() == vector.ns_digest
    assert spec_keys(ns.fingerprint, ns.codec_id, ns.chunk_size, list(vector.token_ids)) == [
        k for _, _, k in vector.chunks
    ]


@pytest.mark.parametrize(("payload", "expected"), digest_vectors())
def test_digest_vectors(payload: bytes, expected: str) -> None:
    assert payload_digest(payload).hex() == expected
    # the prose: XXH3-128, seed 0, high 64 bits first
    assert xxhash.xxh3_128_intdigest(payload).to_bytes(16, "big").hex() == expected


@settings(max_examples=60, deadline=None)
@given(
    fingerprint=st.from_regex(r"[0-9A-Za-z._:\-]{1,40}", fullmatch=True),
    codec_id=st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True),
    chunk_size=st.integers(1, 9),
    token_ids=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40),
)
def test_prose_and_code_agree(fingerprint: str, codec_id: str, chunk_size: int, token_ids: list[int]) -> None:
    ns = Namespace(fingerprint, codec_id, chunk_size)
    assert [s.key for s in chain(ns, token_ids)] == spec_keys(fingerprint, codec_id, chunk_size, token_ids)
