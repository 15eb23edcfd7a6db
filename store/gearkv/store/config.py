"""Frozen store configuration; only the CLI reads flags, files and ``GEARKV_*`` variables into it.

Each field the CLI sets declares its flag, variable and help here, next to its one default
(:func:`gearkv.api.options.option`); ``gearkv store --help`` is generated from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gearkv.api.limits import MAX_CHUNK_BYTES, PART_BYTES
from gearkv.api.options import option, size

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
    """One tenant: its name (part of every Redis key), the sha256 of its token, its byte quota and
    its share of the store's requests."""

    name: str
    token_sha256: str
    quota_bytes: int = 0
    # This tenant's share (0 = the store's default; see fairness.tenant_limits).
    max_in_flight: int = 0
    rate_per_s: float = 0.0
    burst: int = 0

    def __post_init__(self) -> None:
        if not _TENANT_RE.match(self.name):
            raise ValueError("tenant name must be 1-64 chars of [A-Za-z0-9_-]")
        if not _SHA256_RE.match(self.token_sha256):
            raise ValueError(f"tenant {self.name}: token_sha256 must be 64 lowercase hex chars")
        if self.quota_bytes < 0:
            raise ValueError(f"tenant {self.name}: quota_bytes must be >= 0 (0 = unlimited)")
        if self.max_in_flight < 0 or self.rate_per_s < 0 or self.burst < 0:
            raise ValueError(f"tenant {self.name}: max_in_flight, rate_per_s and burst must be >= 0")


@dataclass(frozen=True)
class StoreConfig:
    """Everything the store needs; validated on construction (``ValueError`` names the field)."""

    redis_url: str = option(
        "redis://127.0.0.1:6379/0",
        flag="--redis-url",
        env="GEARKV_REDIS_URL",
        help="redis://[user:pass@]host:port/db, rediss:// for TLS, "
        "redis+cluster://host:port for Redis Cluster",
    )
    # Treat redis_url as a Redis Cluster seed even when its scheme is redis:// or rediss://.
    cluster: bool = option(
        False, flag="--cluster", env="GEARKV_REDIS_CLUSTER", help="treat --redis-url as a Redis Cluster seed"
    )
    host: str = option(
        "127.0.0.1", flag="--host", env="GEARKV_HOST", help="interface to bind the gRPC port on"
    )
    port: int = option(50051, flag="--port", env="GEARKV_PORT", help="gRPC port (0 = any free port)")
    tenants: tuple[TenantConfig, ...] = ()
    # Without auth every caller is the single tenant "default" (demo / local development only).
    auth: bool = True
    default_chunk_ttl_s: int = option(
        24 * 3600,
        flag="--chunk-ttl",
        env="GEARKV_CHUNK_TTL_S",
        help="chunk TTL, seconds, when a write asks for none",
    )
    max_chunk_ttl_s: int = option(
        7 * 24 * 3600,
        flag="--max-chunk-ttl",
        env="GEARKV_MAX_CHUNK_TTL_S",
        help="cap on a requested chunk TTL",
    )
    default_session_ttl_s: int = option(
        7 * 24 * 3600,
        flag="--session-ttl",
        env="GEARKV_SESSION_TTL_S",
        help="session TTL, seconds, when a commit asks for none",
    )
    max_session_ttl_s: int = option(
        30 * 24 * 3600, flag="--max-session-ttl", env="GEARKV_MAX_SESSION_TTL_S", help="cap on a session TTL"
    )
    # Chunks bigger than this are refused (the API allows up to MAX_CHUNK_BYTES, 256 MiB).
    max_chunk_bytes: int = option(
        MAX_CHUNK_BYTES,
        flag="--max-chunk-bytes",
        env="GEARKV_MAX_CHUNK_BYTES",
        help="largest accepted chunk",
        parse=size,
    )
    # gRPC receive/send cap; 8 MiB fits a manifest or a lookup of 1,048,576 token ids (<= 5 B each).
    max_message_bytes: int = option(
        8 * MIB,
        flag="--max-message-bytes",
        env="GEARKV_MAX_MESSAGE_BYTES",
        help="gRPC message size cap (send and receive)",
        parse=size,
    )
    # Size of the parts GetChunk streams (the API allows up to PART_BYTES, 1 MiB; grpcio moves
    # 256-512 KiB messages 1.5-2x faster than 1 MiB ones on loopback).
    download_part_bytes: int = option(
        512 * 1024,
        flag="--download-part-bytes",
        env="GEARKV_DOWNLOAD_PART_BYTES",
        help="size of the parts GetChunk streams (16KiB - 1MiB)",
        parse=size,
    )
    max_in_flight: int = option(
        256,
        flag="--max-in-flight",
        env="GEARKV_MAX_IN_FLIGHT",
        help="requests handled at once; more get RESOURCE_EXHAUSTED",
    )
    # A tenant's share (each tenant may override these in the tokens file; see fairness.py).
    tenant_max_in_flight: int = option(
        0,
        flag="--tenant-max-in-flight",
        env="GEARKV_TENANT_MAX_IN_FLIGHT",
        help="requests one tenant may have in flight (0 = half of --max-in-flight when several "
        "tenants share the store, all of it for one); per tenant: max_in_flight in the tokens file",
    )
    tenant_rate_per_s: float = option(
        0.0,
        flag="--tenant-rate",
        env="GEARKV_TENANT_RATE",
        help="requests per second one tenant may send on average (0 = no limit); per tenant: rate_per_s",
    )
    tenant_burst: int = option(
        0,
        flag="--tenant-burst",
        env="GEARKV_TENANT_BURST",
        help="requests a tenant may send at once beyond its rate (0 = one second's worth); per tenant: burst",
    )
    stream_idle_s: float = option(
        30.0,
        flag="--stream-idle-timeout",
        env="GEARKV_STREAM_IDLE_TIMEOUT_S",
        help="end an upload stream that sends nothing for this many seconds (DEADLINE_EXCEEDED)",
    )
    # Uploads are held in memory until their digest is checked: bound them across all requests.
    max_upload_buffer_bytes: int = option(
        1 << 30,
        flag="--max-upload-buffer",
        env="GEARKV_MAX_UPLOAD_BUFFER",
        help="bytes of uploads in flight at once, all requests together; more get RESOURCE_EXHAUSTED",
        parse=size,
    )
    sweep_interval_s: float = option(
        60.0,
        flag="--sweep-interval",
        env="GEARKV_SWEEP_INTERVAL_S",
        help="seconds between sweeps that release the bookkeeping of expired data (quota, session index)",
    )
    redis_timeout_s: float = option(
        2.0,
        flag="--redis-timeout",
        env="GEARKV_REDIS_TIMEOUT_S",
        help="Redis socket timeout, seconds (at most the retry budget is used)",
    )
    # Total time one backend call may spend retrying connection errors, failovers, MOVED/TRYAGAIN.
    redis_retry_budget_s: float = option(
        3.0,
        flag="--redis-retry-budget",
        env="GEARKV_REDIS_RETRY_BUDGET_S",
        help="time one operation may spend retrying Redis errors before UNAVAILABLE, seconds",
    )
    redis_max_connections: int = option(
        64,
        flag="--redis-max-connections",
        env="GEARKV_REDIS_MAX_CONNECTIONS",
        help="Redis connection pool size (per node in a cluster)",
    )
    grace_s: float = option(
        5.0, flag="--grace", env="GEARKV_GRACE_S", help="graceful shutdown period on SIGTERM, seconds"
    )
    metrics_port: int | None = option(
        None, flag="--metrics-port", env="GEARKV_METRICS_PORT", help="serve Prometheus /metrics on this port"
    )
    tls_cert: str | None = option(
        None, flag="--tls-cert", env="GEARKV_TLS_CERT", help="PEM certificate chain for TLS on the gRPC port"
    )
    tls_key: str | None = option(
        None, flag="--tls-key", env="GEARKV_TLS_KEY", help="PEM private key for --tls-cert"
    )
    # CA bundle for client certificates: set it to require mutual TLS.
    tls_client_ca: str | None = option(
        None,
        flag="--tls-client-ca",
        env="GEARKV_TLS_CLIENT_CA",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    redis_tls_ca: str | None = option(
        None,
        flag="--redis-tls-ca",
        env="GEARKV_REDIS_TLS_CA",
        help="CA bundle to verify Redis's TLS certificate",
    )
    log_level: str = option(
        "INFO", flag="--log-level", env="GEARKV_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR"
    )

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
        if self.tenant_max_in_flight < 0 or self.tenant_rate_per_s < 0 or self.tenant_burst < 0:
            raise ValueError("tenant_max_in_flight, tenant_rate_per_s and tenant_burst must be >= 0")
        if self.stream_idle_s <= 0 or self.sweep_interval_s <= 0:
            raise ValueError("stream_idle_s and sweep_interval_s must be > 0")
        if self.max_upload_buffer_bytes < self.max_chunk_bytes:
            raise ValueError("max_upload_buffer_bytes must be >= max_chunk_bytes (one largest upload fits)")
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
