"""Frozen store configuration; only the CLI reads flags, files and ``GEARKV_*`` variables into it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gearkv.api.limits import MAX_CHUNK_BYTES, PART_BYTES

MIB = 1024 * 1024
_TENANT_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_PASSWORD = re.compile(r"(?P<head>//[^/@:]*:)[^/@]*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&]*", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """``url`` with its password (``user:pass@`` or ``?password=``) replaced by ``***``, for logs."""
    url = _URL_PASSWORD.sub(r"\g<head>***@", url)
    return _QUERY_PASSWORD.sub(r"\g<head>***", url)


@dataclass(frozen=True)
class TenantConfig:
    """One tenant: its name (part of every Redis key), the sha256 of its token, its byte quota."""

    name: str
    token_sha256: str
    quota_bytes: int = 0

    def __post_init__(self) -> None:
        if not _TENANT_RE.match(self.name):
            raise ValueError("tenant name must be 1-64 chars of [A-Za-z0-9_-]")
        if not _SHA256_RE.match(self.token_sha256):
            raise ValueError(f"tenant {self.name}: token_sha256 must be 64 lowercase hex chars")
        if self.quota_bytes < 0:
            raise ValueError(f"tenant {self.name}: quota_bytes must be >= 0 (0 = unlimited)")


@dataclass(frozen=True)
class StoreConfig:
    """Everything the store needs; validated on construction (``ValueError`` names the field)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Treat redis_url as a Redis Cluster seed even when its scheme is redis:// or rediss://.
    cluster: bool = False
    host: str = "127.0.0.1"
    port: int = 50051
    tenants: tuple[TenantConfig, ...] = ()
    # Without auth every caller is the single tenant "default" (demo / local development only).
    auth: bool = True
    default_chunk_ttl_s: int = 24 * 3600
    max_chunk_ttl_s: int = 7 * 24 * 3600
    default_session_ttl_s: int = 7 * 24 * 3600
    max_session_ttl_s: int = 30 * 24 * 3600
    # Chunks bigger than this are refused (the API allows up to MAX_CHUNK_BYTES, 256 MiB).
    max_chunk_bytes: int = MAX_CHUNK_BYTES
    # gRPC receive/send cap; 8 MiB fits a manifest or a lookup of 1,048,576 token ids (<= 5 B each).
    max_message_bytes: int = 8 * MIB
    # Size of the parts GetChunk streams (the API allows up to PART_BYTES, 1 MiB; grpcio moves
    # 256-512 KiB messages 1.5-2x faster than 1 MiB ones on loopback).
    download_part_bytes: int = 512 * 1024
    max_in_flight: int = 256
    redis_timeout_s: float = 5.0
    # Total time one backend call may spend retrying connection errors, failovers, MOVED/TRYAGAIN.
    redis_retry_budget_s: float = 3.0
    redis_max_connections: int = 64
    grace_s: float = 5.0
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # CA bundle for client certificates: set it to require mutual TLS.
    tls_client_ca: str | None = None
    redis_tls_ca: str | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
            raise ValueError("redis_url must start with redis://, rediss:// or redis+cluster://")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        if self.auth and not self.tenants:
            raise ValueError("auth is on but no tenants are configured (give a tokens file or --no-auth)")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        hashes = [t.token_sha256 for t in self.tenants]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two tenants share one token")
        for name in ("default_chunk_ttl_s", "max_chunk_ttl_s", "default_session_ttl_s", "max_session_ttl_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.default_chunk_ttl_s > self.max_chunk_ttl_s:
            raise ValueError("default_chunk_ttl_s must be <= max_chunk_ttl_s")
        if self.default_session_ttl_s > self.max_session_ttl_s:
            raise ValueError("default_session_ttl_s must be <= max_session_ttl_s")
        if not 1 <= self.max_chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"max_chunk_bytes must be in 1..{MAX_CHUNK_BYTES}")
        if self.max_message_bytes < 2 * MIB:
            raise ValueError("max_message_bytes must be >= 2 MiB (parts are up to 1 MiB)")
        if not 16 * 1024 <= self.download_part_bytes <= PART_BYTES:
            raise ValueError(f"download_part_bytes must be in 16384..{PART_BYTES}")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.redis_timeout_s <= 0 or self.redis_retry_budget_s < 0 or self.grace_s < 0:
            raise ValueError("redis_timeout_s must be > 0; redis_retry_budget_s and grace_s >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")

    @property
    def is_cluster(self) -> bool:
        return self.cluster or "+cluster://" in self.redis_url

    def quota_for(self, tenant: str) -> int:
        for t in self.tenants:
            if t.name == tenant:
                return t.quota_bytes
        return 0
