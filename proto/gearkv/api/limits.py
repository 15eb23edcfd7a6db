"""Every limit of the KVStore API, and the pure checks that enforce them.

Written once and read by both sides: the SDK refuses a bad call before sending it, the store refuses
it again (not every caller uses the SDK). The ``.proto`` comments state the same numbers. Each check
raises :class:`~gearkv.api.errors.InvalidField` naming the field and the limit; the SDK and the store
map it to their own ``InvalidArgument``. No grpc, protobuf or I/O here.

Example::

    check_session_id("chat 42")      # InvalidField: session_id must be 1-128 chars of [A-Za-z0-9._:-]
    check_uint(page, "page_size", MAX_PAGE_SIZE, low=1)
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Sequence

from gearkv.api.errors import InvalidField

__all__ = [
    "DEFAULT_LEASE_MS",
    "DEFAULT_PAGE_SIZE",
    "KEY_HEX_LEN",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTES_BYTES",
    "MAX_ATTRIBUTE_KEY",
    "MAX_ATTRIBUTE_VALUE",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_SIZE",
    "MAX_ID_LEN",
    "MAX_LEASE_MS",
    "MAX_MESSAGES",
    "MAX_MESSAGES_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_RAW_BYTES",
    "MAX_ROLE",
    "MAX_SESSION_ID_LEN",
    "MAX_TOKENS",
    "MAX_U32",
    "MAX_U64",
    "MIN_LEASE_MS",
    "PART_BYTES",
    "SESSION_ID_RE",
    "check_id",
    "check_key",
    "check_lease_ms",
    "check_session_id",
    "check_token_count",
    "check_token_ids",
    "check_uint",
    "is_valid_id",
    "is_valid_key",
    "is_valid_session_id",
]

MAX_U32 = 2**32 - 1  # token ids, chunk starts/ends, TTLs in seconds
MAX_U64 = 2**64 - 1  # versions and byte counts on the wire

PART_BYTES = 1024 * 1024  # one stream part; also the most PutSmallChunk / GetSmallChunk carry
MAX_CHUNK_BYTES = 256 * 1024 * 1024  # one chunk's payload (PutChunkHeader.total_bytes)
MAX_RAW_BYTES = 1 << 40  # a chunk's raw/stored_bytes: far above any real chunk, sums over MAX_TOKENS fit u64
MAX_CHUNK_SIZE = 65536  # Namespace.chunk_size: tokens per full chunk
MAX_TOKENS = 1_048_576  # token ids in a lookup or a manifest

KEY_HEX_LEN = 64  # a chunk key: blake2b-256 as lowercase hex (gearkv.api.keys)
MAX_SESSION_ID_LEN = 128
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_ID_LEN = 64  # commit_id, lease holder, lease_id: printable ASCII without spaces

MAX_ATTRIBUTES = 64  # Manifest.attributes entries
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_VALUE = 65536
MAX_ATTRIBUTES_BYTES = 256 * 1024  # all of a manifest's attribute keys and values together
MAX_ROLE = 64  # ChatMessage.role
MAX_MESSAGES = 65536  # Manifest.messages entries
MAX_MESSAGES_BYTES = 4 * 1024 * 1024  # all of a manifest's message roles and contents (UTF-8) together

MAX_PAGE_SIZE = 1000  # ListSessions.page_size
DEFAULT_PAGE_SIZE = 100  # what the store uses for page_size 0

MIN_LEASE_MS = 100  # BeginTurn.lease_ms
MAX_LEASE_MS = 600_000
DEFAULT_LEASE_MS = 30_000  # what the store uses for lease_ms 0

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is shaped like a chunk key: 64 lowercase hex chars."""
    return bool(_KEY_RE.fullmatch(key))


def is_valid_session_id(session_id: str) -> bool:
    """Whether ``session_id`` is 1-128 chars of ``[A-Za-z0-9._:-]``."""
    return bool(SESSION_ID_RE.fullmatch(session_id))


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a valid commit id, lease holder or lease id (1-64 printable ASCII, no spaces)."""
    return bool(_ID_RE.fullmatch(value))


def check_key(value: str, field: str = "key") -> str:
    if not isinstance(value, str) or not is_valid_key(value):
        raise InvalidField(f"{field} must be {KEY_HEX_LEN} lowercase hex chars (a chunk content address)")
    return value


def check_session_id(value: str, field: str = "session_id") -> str:
    if not isinstance(value, str) or not is_valid_session_id(value):
        raise InvalidField(f"{field} must be 1-{MAX_SESSION_ID_LEN} chars of [A-Za-z0-9._:-]")
    return value


def check_id(value: str, field: str) -> str:
    """A commit id, lease holder or lease id: 1-64 printable ASCII chars without spaces."""
    if not isinstance(value, str) or not is_valid_id(value):
        raise InvalidField(f"{field} must be 1-{MAX_ID_LEN} printable ASCII chars without spaces")
    return value


def check_uint(value: int, field: str, limit: int, low: int = 0) -> int:
    """An integer (not a bool) in ``low..limit``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= limit:
        raise InvalidField(f"{field} must be an integer in {low}..{limit}")
    return value


def check_token_count(n: int, field: str, limit: int = MAX_TOKENS) -> None:
    if n > limit:
        raise InvalidField(f"{field} has {n} entries; the limit is {limit}")


def check_token_ids(token_ids: Sequence[int], field: str, limit: int = MAX_TOKENS) -> list[int]:
    """At most ``limit`` token ids, each an integer in 0..MAX_U32; returns them as a list."""
    ids = list(token_ids)
    check_token_count(len(ids), field, limit)
    try:
        array("I", ids)  # C-speed range and type check (uint32, as gearkv.api.keys packs them)
    except (OverflowError, TypeError) as err:
        raise InvalidField(f"{field} entries must be integers in 0..{MAX_U32}") from err
    return ids


def check_lease_ms(value: int) -> int:
    """A turn lease's lifetime: ``MIN_LEASE_MS..MAX_LEASE_MS``, or 0 for the store's default."""
    ok = not isinstance(value, bool) and isinstance(value, int)
    if not ok or not (value == 0 or MIN_LEASE_MS <= value <= MAX_LEASE_MS):
        raise InvalidField(f"lease_ms must be {MIN_LEASE_MS}-{MAX_LEASE_MS} (0 = {DEFAULT_LEASE_MS})")
    return value
