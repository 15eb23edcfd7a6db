"""API keys of the worker's OpenAI-compatible HTTP API, each mapped to a tenant of the store.

A keys spec (a JSON object, from ``--api-keys-file`` or ``GEARKV_API_KEYS``)::

    {"alice": {"api_key": "sk-alice-...", "store_token": "<alice's bearer token in the store>"},
     "bob":   {"api_key_sha256": "<64 hex>", "store_token": "<bob's bearer token in the store>"}}

A request's ``Authorization: Bearer <api key>`` picks the tenant; the worker then reads and writes KV
in the store with that tenant's token, so two tenants never share cached KV. A plain ``api_key`` is
hashed at load and never kept; keys are compared by their sha256. Stdlib only: the CLI parses the
spec before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ApiKey", "hash_api_key", "load_api_keys", "parse_api_keys"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class ApiKey:
    """One tenant of the HTTP API: its name, the sha256 of its API key, its token in the store."""

    name: str
    key_sha256: str
    store_token: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"API key tenant name {self.name!r} must be 1-64 chars of [A-Za-z0-9._-]")
        if not _SHA256.match(self.key_sha256):
            raise ValueError(f"tenant {self.name!r}: api_key_sha256 must be 64 lowercase hex digits")
        if not self.store_token:
            raise ValueError(f"tenant {self.name!r}: store_token must not be empty")

    def __repr__(self) -> str:  # never print the store token
        return f"ApiKey(name={self.name!r}, key_sha256={self.key_sha256[:8]}...)"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """Parse a keys spec; ``ValueError`` names what is wrong (never echoing a key or token)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"API keys spec is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError("API keys spec must be a non-empty JSON object keyed by tenant name")
    keys = tuple(_entry(str(name), spec) for name, spec in data.items())
    seen: dict[str, str] = {}
    for k in keys:
        if k.key_sha256 in seen:
            raise ValueError(f"tenants {seen[k.key_sha256]!r} and {k.name!r} have the same API key")
        seen[k.key_sha256] = k.name
    return keys


def _entry(name: str, spec: Any) -> ApiKey:
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"tenant {name!r}: expected an object with api_key (or api_key_sha256) and store_token"
        )
    if "api_key_sha256" in spec:
        digest = str(spec["api_key_sha256"]).lower()
    elif isinstance(spec.get("api_key"), str) and spec["api_key"]:
        digest = hash_api_key(spec["api_key"])
    else:
        raise ValueError(f"tenant {name!r}: give api_key_sha256 (preferred) or api_key")
    token = spec.get("store_token")
    if not isinstance(token, str) or not token:
        raise ValueError(f"tenant {name!r}: store_token must be a non-empty string")
    return ApiKey(name, digest, token)


def load_api_keys(path: str | None, env: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """The keys from the file at ``path``, else from ``GEARKV_API_KEYS`` in ``env``; () when neither.

    Raises:
        ValueError: the file cannot be read, or the spec is invalid.
    """
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read API keys file {path}: {exc.strerror}") from None
        return parse_api_keys(text)
    if env.get("GEARKV_API_KEYS", "").strip():
        return parse_api_keys(env["GEARKV_API_KEYS"])
    return ()
