"""The worker's Prometheus metrics, on a caller-supplied registry (tests use a fresh one).

Label values are bounded: outcome in {hit, partial, miss}, reason from :data:`REASONS` (anything
else is counted as "other"), never a session id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["REASONS", "WorkerMetrics", "bounded_reason"]

REASONS = frozenset(
    {
        "",
        "new_session",
        "store_unavailable",
        "store_error",
        "chunk_missing",
        "chunk_corrupt",
        "fingerprint_mismatch",
        "sharing_mismatch",
        "codec_mismatch",
        "namespace_mismatch",
        "prefix_diverged",
        "below_min_reuse",
        "no_store",
        "store_timeout",
        "history_lost",
        "other",
    }
)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def bounded_reason(reason: str) -> str:
    return reason if reason in REASONS else "other"


class WorkerMetrics:
    """All worker metrics; ``gearkv_worker_<name>_<unit>``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.turns = Counter(
            "gearkv_worker_turns_total",
            "Turns served by resume outcome and reason",
            ["outcome", "reason"],
            registry=r,
        )
        self.faults = Counter(
            "gearkv_worker_resume_faults_total",
            "Store faults that made a turn recompute",
            ["reason"],
            registry=r,
        )
        self.tokens_reused = Counter(
            "gearkv_worker_tokens_reused_total", "Prompt tokens whose KV was reused", ["source"], registry=r
        )
        self.tokens_prefilled = Counter(
            "gearkv_worker_tokens_prefilled_total", "Prompt tokens recomputed", registry=r
        )
        self.tokens_generated = Counter(
            "gearkv_worker_tokens_generated_total", "Tokens generated", registry=r
        )
        self.ttft = Histogram(
            "gearkv_worker_ttft_seconds", "Time to first token", ["path"], buckets=_LATENCY, registry=r
        )
        self.pull = Histogram(
            "gearkv_worker_pull_seconds",
            "Pulling and rebuilding a stored prefix",
            buckets=_LATENCY,
            registry=r,
        )
        self.decompress = Histogram(
            "gearkv_worker_decompress_seconds", "Decoding pulled chunks", buckets=_LATENCY, registry=r
        )
        self.compress = Histogram(
            "gearkv_worker_compress_seconds", "Encoding a turn's new chunks", buckets=_LATENCY, registry=r
        )
        self.bytes_pulled = Counter("gearkv_worker_pulled_bytes_total", "Chunk bytes pulled", registry=r)
        self.bytes_pushed = Counter("gearkv_worker_pushed_bytes_total", "Chunk bytes pushed", registry=r)
        self.raw_pushed = Counter(
            "gearkv_worker_pushed_raw_bytes_total", "16-bit size of the KV pushed", registry=r
        )
        self.chunks_pushed = Counter(
            "gearkv_worker_chunks_pushed_total", "Chunks pushed", ["deduplicated"], registry=r
        )
        self.pushes = Counter(
            "gearkv_worker_pushes_total", "Background pushes by result", ["result"], registry=r
        )
        self.hot_cache_bytes = Gauge(
            "gearkv_worker_hot_cache_bytes", "Bytes of KV in the hot cache", registry=r
        )
        self.turns_in_flight = Gauge("gearkv_worker_turns_in_flight", "Turns being generated", registry=r)

    def turn(self, outcome: str, reason: str) -> None:
        self.turns.labels(outcome=outcome, reason=bounded_reason(reason)).inc()

    def fault(self, reason: str) -> None:
        self.faults.labels(reason=bounded_reason(reason)).inc()
