"""Chunk addresses, under the SDK's public name: a re-export of :mod:`gearkv.api.keys`.

``from gearkv.client import keys`` then ``keys.chain(ns, token_ids)`` names the chunks of a session;
the functions and classes here are the contract's own (``gearkv.client.keys.Namespace is
gearkv.api.keys.Namespace``), so the SDK and the store can never disagree on a key.
"""

from __future__ import annotations

from gearkv.api.keys import (
    KEY_HEX_LEN,
    MAX_CHUNK_SIZE,
    MAX_TOKEN_ID,
    SESSION_ID_RE,
    ChunkSpan,
    Namespace,
    chain,
    chunk_key,
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
