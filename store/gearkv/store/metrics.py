"""Store metrics (Prometheus), all on an explicit registry; labels take bounded values only.

Never a session id, chunk key or tenant token as a label value. Tenant names are a label (tenants are
few and configured). Every labelled series is created at 0 for its known label values, so a panel or an
alert reads 0 while nothing happened and "no data" only when the store is not scraped.

Two kinds of series:
- counters and histograms recorded as requests are served (``requests``, ``duration``, ...);
- gauges of what is held *now* (live bytes raw and stored per tenant, sessions, chunks, Redis memory),
  refreshed every few seconds by the server from Redis (``StoreServer`` runs the refresh). Every
  store replica reads the same Redis, so these are the same on each replica: aggregate them with
  ``max by (tenant)``, never ``sum`` across instances.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

import grpc
from gearkv.api.version import package_version
from gearkv.store.chunk_format import FORMAT_VERSION
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "CODES",
    "LATENCY_BUCKETS",
    "LOOKUP_OUTCOMES",
    "LOOKUP_REASONS",
    "METHODS",
    "REDIS_ERROR_KINDS",
    "StoreMetrics",
    "add_standard_collectors",
    "serve_metrics",
]

# Sub-millisecond (a Redis round trip on loopback) to tens of seconds (a stalled backend).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# The KVStore v1 RPCs (tests/unit/test_deploy_metrics.py checks this against the proto).
METHODS = (
    "PutChunk",
    "GetChunk",
    "PutSmallChunk",
    "GetSmallChunk",
    "LookupPrefix",
    "BeginTurn",
    "EndTurn",
    "CommitTurn",
    "GetSession",
    "ListSessions",
    "DeleteSession",
    "GetStats",
)
# Every status the interceptor can record (gearkv.store.errors, INTERNAL, CANCELLED).
CODES = tuple(
    c.name
    for c in (
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAUTHENTICATED,
    )
)
INTEGRITY_WHERE = ("manifest", "upload", "storage")
REDIS_ERROR_KINDS = ("timeout", "connection", "cluster", "failover", "oom", "other")
LOOKUP_OUTCOMES = ("hit", "partial", "miss")
LOOKUP_REASONS = ("none", "namespace_mismatch", "chunk_missing", "not_stored")
EXPIRED_KINDS = ("chunk", "session")


def add_standard_collectors(registry: CollectorRegistry) -> None:
    """``process_*``, ``python_info`` and ``python_gc_*`` on a private registry (the global one has them)."""
    if registry is REGISTRY:  # it has them already
        return
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class StoreMetrics:
    """Every metric the store exports, registered on ``registry`` (a fresh one per test).

    ``tenants`` are the configured tenant names: their per-tenant series exist from the start.
    """

    def __init__(self, registry: CollectorRegistry, tenants: Iterable[str] = ()) -> None:
        self.registry = registry
        add_standard_collectors(registry)
        self.build = Info(
            "gearkv_store_build",
            "The running store: package version, chunk envelope format version, Python version.",
            registry=registry,
        )
        self.build.info(
            {
                "version": package_version(),
                "chunk_format_version": str(FORMAT_VERSION),
                "python": platform.python_version(),
            }
        )
        self.requests = Counter(
            "gearkv_store_requests_total",
            "RPCs handled, by method and final status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "gearkv_store_request_duration_seconds",
            "RPC handling time, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gearkv_store_requests_in_flight",
            "KVStore RPCs being handled right now (what the load shedding limit counts).",
            registry=registry,
        )
        self.raw_bytes = Counter(
            "gearkv_store_raw_bytes_total",
            "Uncompressed 16-bit bytes of the KV in newly stored chunks.",
            registry=registry,
        )
        self.stored_bytes = Counter(
            "gearkv_store_stored_bytes_total",
            "Payload bytes of newly stored chunks (what Redis holds).",
            registry=registry,
        )
        self.chunks_written = Counter(
            "gearkv_store_chunks_written_total", "Chunks newly stored.", registry=registry
        )
        self.chunks_deduplicated = Counter(
            "gearkv_store_chunks_deduplicated_total",
            "Chunk uploads that found the chunk already stored (TTL refreshed, nothing written).",
            registry=registry,
        )
        self.bytes_served = Counter(
            "gearkv_store_served_bytes_total", "Chunk payload bytes sent to clients.", registry=registry
        )
        self.integrity_failures = Counter(
            "gearkv_store_integrity_failures_total",
            "Digest or format check failures, by where they were caught.",
            ["where"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "gearkv_store_redis_errors_total",
            "Errors from Redis (each attempt), by kind.",
            ["kind"],
            registry=registry,
        )
        self.lookups = Counter(
            "gearkv_store_lookups_total",
            "Prefix lookups by outcome (hit, partial, miss) and reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.shed = Counter(
            "gearkv_store_shed_requests_total",
            "Requests rejected with RESOURCE_EXHAUSTED because too many were in flight.",
            registry=registry,
        )
        self.quota_rejections = Counter(
            "gearkv_store_quota_rejections_total",
            "Writes refused with RESOURCE_EXHAUSTED because the tenant's byte quota was reached.",
            ["tenant"],
            registry=registry,
        )
        self.expired = Counter(
            "gearkv_store_expired_total",
            "Chunks and sessions whose bytes were released because their TTL expired (or Redis evicted "
            "them), by kind.",
            ["kind"],
            registry=registry,
        )
        # -- what is held now (refreshed from Redis by the server) --------------------------------
        self.live_raw_bytes = Gauge(
            "gearkv_store_live_raw_bytes",
            "16-bit-equivalent bytes of the KV in live chunks (what it would take uncompressed), "
            "per tenant. Same on every replica: aggregate with max by (tenant).",
            ["tenant"],
            registry=registry,
        )
        self.live_stored_bytes = Gauge(
            "gearkv_store_live_stored_bytes",
            "Stored (compressed) payload bytes of live chunks, per tenant.",
            ["tenant"],
            registry=registry,
        )
        self.live_manifest_bytes = Gauge(
            "gearkv_store_live_manifest_bytes",
            "Bytes of live session manifests (token ids, messages, attributes), per tenant.",
            ["tenant"],
            registry=registry,
        )
        self.live_chunks = Gauge(
            "gearkv_store_live_chunks", "Live chunks, per tenant.", ["tenant"], registry=registry
        )
        self.live_sessions = Gauge(
            "gearkv_store_live_sessions", "Live sessions, per tenant.", ["tenant"], registry=registry
        )
        self.dedup_saved_bytes = Gauge(
            "gearkv_store_dedup_saved_bytes",
            "Stored bytes that prefix deduplication keeps out of Redis now: the live sessions' stored "
            "bytes (each counting every chunk it references) minus the live chunks' bytes, at least 0 "
            "(a lower bound while superseded tail chunks wait for their TTL).",
            ["tenant"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "gearkv_store_redis_up",
            "1 when the last health probe of Redis answered, else 0.",
            registry=registry,
        )
        self.redis_ping = Histogram(
            "gearkv_store_redis_ping_seconds",
            "Round trip of the health probe's PING to Redis (every 2 s).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.redis_used_memory = Gauge(
            "gearkv_store_redis_used_memory_bytes",
            "Redis INFO used_memory (all primaries of a cluster together).",
            registry=registry,
        )
        self.redis_maxmemory = Gauge(
            "gearkv_store_redis_maxmemory_bytes",
            "Redis maxmemory (all primaries together; 0 = no limit).",
            registry=registry,
        )
        self.redis_evicted_keys = Gauge(
            "gearkv_store_redis_evicted_keys",
            "Redis INFO evicted_keys: keys evicted by maxmemory since Redis started.",
            registry=registry,
        )
        self.redis_chunk_overhead = Gauge(
            "gearkv_store_redis_chunk_memory_ratio",
            "MEMORY USAGE of a sample of chunk values divided by their length: Redis bytes per stored "
            "byte (1.0 = no overhead; 0 while no chunk is stored).",
            registry=registry,
        )
        self.refresh_timestamp = Gauge(
            "gearkv_store_live_refresh_timestamp_seconds",
            "When the live gauges were last refreshed from Redis (unix time).",
            registry=registry,
        )
        self._initialise(tuple(tenants))

    def _initialise(self, tenants: tuple[str, ...]) -> None:
        """Create every labelled series at 0 for its known label values."""
        for method in METHODS:
            self.duration.labels(method=method)
            for code in CODES:
                self.requests.labels(method=method, code=code)
        for where in INTEGRITY_WHERE:
            self.integrity_failures.labels(where=where)
        for kind in REDIS_ERROR_KINDS:
            self.redis_errors.labels(kind=kind)
        for outcome in LOOKUP_OUTCOMES:
            for reason in LOOKUP_REASONS:
                self.lookups.labels(outcome=outcome, reason=reason)
        for kind in EXPIRED_KINDS:
            self.expired.labels(kind=kind)
        for tenant in tenants:
            self.quota_rejections.labels(tenant=tenant)
            for gauge in (
                self.live_raw_bytes,
                self.live_stored_bytes,
                self.live_manifest_bytes,
                self.live_chunks,
                self.live_sessions,
                self.dedup_saved_bytes,
            ):
                gauge.labels(tenant=tenant)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
    """Expose ``registry`` at http://host:port/metrics from a daemon thread."""
    start_http_server(port, addr=host, registry=registry)
