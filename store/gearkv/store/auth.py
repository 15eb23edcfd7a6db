"""Bearer-token authentication: tokens are kept only as sha256 hashes and compared in constant time.

Token specs (a JSON object, from ``--tokens-file`` or ``GEARKV_TOKENS``)::

    {"alice": {"token_sha256": "<64 hex>", "quota_bytes": 1073741824},
     "bob":   {"token": "plain-token", "max_in_flight": 16, "rate_per_s": 200, "burst": 50}}

A plain ``token`` is hashed at load and never kept. ``GEARKV_TOKENS`` also accepts the short form
``alice=token1,bob=token2``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from gearkv.store.config import TenantConfig
from gearkv.store.errors import Unauthenticated

DEFAULT_TENANT = "default"
_MAX_TOKEN_LEN = 4096


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tenants(text: str) -> tuple[TenantConfig, ...]:
    """Parse a token spec (JSON object or ``name=token,...``); ``ValueError`` names what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("token spec is empty")
    if not text.startswith("{"):
        pairs: dict[str, Any] = {}
        for item in text.split(","):
            name, sep, token = item.strip().partition("=")
            if not sep or not token:
                raise ValueError("short token spec must be name=token[,name=token...]")
            pairs[name] = {"token": token}
        return _from_mapping(pairs)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"token spec is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("token spec must be a JSON object keyed by tenant name")
    return _from_mapping(data)


def _from_mapping(data: dict[str, Any]) -> tuple[TenantConfig, ...]:
    tenants = []
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise ValueError(f"tenant {name!r}: expected an object with token or token_sha256")
        if "token_sha256" in spec:
            digest = str(spec["token_sha256"]).lower()
        elif "token" in spec and str(spec["token"]):
            digest = hash_token(str(spec["token"]))
        else:
            raise ValueError(f"tenant {name!r}: give token_sha256 (preferred) or token")

        def number(
            field: str, kinds: type | tuple[type, ...] = int, spec: dict[str, Any] = spec, name: str = name
        ) -> Any:
            value = spec.get(field, 0)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(f"tenant {name!r}: {field} must be a number")
            return value

        tenants.append(
            TenantConfig(
                name=str(name),
                token_sha256=digest,
                quota_bytes=number("quota_bytes"),
                max_in_flight=number("max_in_flight"),
                rate_per_s=float(number("rate_per_s", (int, float))),
                burst=number("burst"),
            )
        )
    return tuple(tenants)


class Authenticator:
    """Resolves ``authorization: Bearer <token>`` metadata to a tenant name."""

    def __init__(self, tenants: Sequence[TenantConfig], *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._tenants = [(bytes.fromhex(t.token_sha256), t.name) for t in tenants]

    def tenant_for(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """The caller's tenant. Raises Unauthenticated (the message never echoes the token)."""
        if not self._enabled:
            return DEFAULT_TENANT
        header = None
        for name, value in metadata or ():
            if name.lower() == "authorization":
                header = value.decode("latin-1") if isinstance(value, bytes) else value
                break
        if header is None:
            raise Unauthenticated("missing authorization metadata (expected 'Bearer <token>')")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LEN:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for expected, tenant in self._tenants:  # compare with every tenant: no early exit
            if hmac.compare_digest(digest, expected):
                found = tenant
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found
