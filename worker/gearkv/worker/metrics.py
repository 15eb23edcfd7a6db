"""The worker's Prometheus metrics, on a caller-supplied registry (tests use a fresh one).

Label values are bounded: outcome in {hit, partial, miss}, reason from :data:`REASONS` (anything
else is counted as "other"), never a session id.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gearkv.api.version import package_version
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gearkv.worker.hot_cache import HotCache

__all__ = ["OUTCOMES", "PUSH_RESULTS", "REASONS", "WorkerMetrics", "bounded_reason"]

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
        "calibration_mismatch",
        "namespace_mismatch",
        "prefix_diverged",
        "below_min_reuse",
        "no_store",
        "store_timeout",
        "history_lost",
        "other",
    }
)
OUTCOMES = ("hit", "partial", "miss")
SOURCES = ("none", "hot_cache", "store")
PUSH_RESULTS = (
    "ok",
    "keep_failed",
    "version_conflict",
    "encode_failed",
    "chunk_missing",
    "chunk_corrupt",
    "codec_mismatch",
    "store_timeout",
    "store_unavailable",
    "store_error",
)
DEVICES = ("cpu", "cuda")
# Sub-millisecond (decoding one small chunk) to minutes (a long cold prefill on a CPU).
_LATENCY = (
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
    60.0,
    120.0,
)


def bounded_reason(reason: str) -> str:
    return reason if reason in REASONS else "other"


class WorkerMetrics:
    """All worker metrics; ``gearkv_worker_<name>_<unit>``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if r is not REGISTRY:  # the default registry has them already
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                type(collector)(registry=r)  # process_*, python_info, python_gc_*
        from gearkv.codec import FORMAT_VERSION

        self.build = Info(
            "gearkv_worker_build",
            "The running worker: package version, codec format version, torch version",
            registry=r,
        )
        self.build.info(
            {
                "version": package_version(),
                "codec_format_version": str(FORMAT_VERSION),
                "torch": _torch_version(),
            }
        )
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
        self._hot = _HotCaches()
        r.register(self._hot)
        self._initialise()

    def _initialise(self) -> None:
        """Create every labelled series at 0 for its known label values."""
        for outcome in OUTCOMES:
            for reason in REASONS:
                self.turns.labels(outcome=outcome, reason=reason)
        for reason in REASONS:
            if reason:
                self.faults.labels(reason=reason)
        for source in SOURCES:
            self.tokens_reused.labels(source=source)
        for path in ("cold", "resumed"):
            self.ttft.labels(path=path)
        for dedup in ("false", "true"):
            self.chunks_pushed.labels(deduplicated=dedup)
        for result in PUSH_RESULTS:
            self.pushes.labels(result=result)

    def track_hot_cache(self, hot: HotCache) -> None:
        """Export ``hot``'s bytes, sessions and evictions (with every other hot cache tracked here).

        From the first one on, ``gearkv_worker_hot_cache_bytes`` reads the tracked caches when
        scraped.
        """
        self._hot.add(hot)
        self.hot_cache_bytes.set_function(lambda: float(self._hot.nbytes()))

    def turn(self, outcome: str, reason: str) -> None:
        self.turns.labels(outcome=outcome, reason=bounded_reason(reason)).inc()

    def fault(self, reason: str) -> None:
        self.faults.labels(reason=bounded_reason(reason)).inc()


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


class _HotCaches(Collector):
    """The hot caches of a worker process (the HTTP API runs one worker per tenant), read at scrape."""

    def __init__(self) -> None:
        self._caches: weakref.WeakSet[HotCache] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, hot: HotCache) -> None:
        with self._lock:
            self._caches.add(hot)

    def _all(self) -> list[HotCache]:
        with self._lock:
            return list(self._caches)

    def nbytes(self) -> int:
        return sum(h.nbytes for h in self._all())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        caches = self._all()
        sessions = GaugeMetricFamily(
            "gearkv_worker_hot_cache_sessions", "Sessions whose KV the hot cache holds"
        )
        sessions.add_metric([], sum(len(h) for h in caches))
        yield sessions
        freed = CounterMetricFamily(
            "gearkv_worker_hot_cache_offloaded_bytes",
            "KV bytes freed from host or GPU memory by evicting least recently used (idle) sessions "
            "from the hot cache; their KV stays in the store",
            labels=["device"],
        )
        evicted = {d: 0 for d in DEVICES}
        for h in caches:
            for device, n in h.evicted_bytes.items():
                evicted[device] = evicted.get(device, 0) + n
        for device, n in sorted(evicted.items()):
            freed.add_metric([device], n)
        yield freed
