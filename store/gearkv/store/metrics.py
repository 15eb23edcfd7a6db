"""Store metrics (Prometheus), all on an explicit registry; labels take bounded values only.

Never a session id, chunk key or tenant token as a label value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StoreMetrics:
    """Every metric the store exports, registered on ``registry`` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
            buckets=_LATENCY_BUCKETS,
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


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
    """Expose ``registry`` at http://host:port/metrics from a daemon thread."""
    start_http_server(port, addr=host, registry=registry)
