"""GearKV client SDK: push and pull KV chunks, look up prefixes and commit turns on a GearKV store.

Example::

    from gearkv.client import KVStoreClient, Namespace, keys

    ns = Namespace(fingerprint="smollm2-135m:3f9a", codec_id="gear4/v1", chunk_size=256)
    with KVStoreClient("127.0.0.1:50051", token="t0k3n") as client:  # or KVStoreClient.from_env()
        put = client.put_chunk(ns, "", token_ids[:256], blob, start=0, raw_bytes=raw)
        match = client.lookup_prefix(ns, token_ids)

Errors live in :mod:`gearkv.client.errors`; chunk addresses in :mod:`gearkv.client.keys` (the API
contract's :mod:`gearkv.api.keys`, re-exported under its public name). Both, and the dataclasses,
import without grpc: the clients (and grpc) load on first access. The SDK depends on the contract
(``gearkv.api``), never the other way round; the store and the codec import nothing from here.

``gearkv.client.__version__`` is the installed ``gearkv`` distribution's version. ``gearkv`` itself is
a namespace package spread over client/, store/, worker/, proto/ and bench/ (no ``gearkv/__init__.py``,
which would hide the other parts), so the version lives here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gearkv.api.version import package_version
from gearkv.client import errors, keys
from gearkv.client._models import (
    ChatMessage,
    ChunkRef,
    Manifest,
    Namespace,
    PrefixMatch,
    PutChunkResult,
    SessionSummary,
    StoreStats,
    TurnStart,
)
from gearkv.client._retry import ExponentialJitterBackoff, RetryPolicy

__version__ = package_version()

if TYPE_CHECKING:
    from gearkv.client._async import AsyncKVStoreClient
    from gearkv.client._options import TLSOptions
    from gearkv.client._sync import KVStoreClient

_LAZY = {
    "AsyncKVStoreClient": "gearkv.client._async",
    "KVStoreClient": "gearkv.client._sync",
    "TLSOptions": "gearkv.client._options",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gearkv.client' has no attribute {name!r}")


__all__ = [
    "AsyncKVStoreClient",
    "ChatMessage",
    "ChunkRef",
    "ExponentialJitterBackoff",
    "KVStoreClient",
    "Manifest",
    "Namespace",
    "PrefixMatch",
    "PutChunkResult",
    "RetryPolicy",
    "SessionSummary",
    "StoreStats",
    "TLSOptions",
    "TurnStart",
    "__version__",
    "errors",
    "keys",
]
