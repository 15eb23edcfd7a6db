"""The metrics' contract: every labelled series exists at 0 before anything happened, the exposition
passes ``promtool check metrics``, the alert rules pass ``promtool check rules``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from gearkv.api.v1 import kvstore_pb2
from gearkv.store.metrics import CODES, LOOKUP_OUTCOMES, METHODS, REDIS_ERROR_KINDS, StoreMetrics
from gearkv.worker.hot_cache import HotCache, HotEntry
from gearkv.worker.metrics import PUSH_RESULTS, REASONS, WorkerMetrics
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip(
            "promtool is not on PATH: scripts/setup.sh installs Debian's prometheus package when run as "
            "root with apt-get (apt-get install prometheus)"
        )
    return exe


def test_store_methods_are_the_proto_methods() -> None:
    service = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"]
    assert set(METHODS) == {m.name for m in service.methods}


def test_store_error_series_exist_at_zero_before_anything_happened() -> None:
    m = StoreMetrics(CollectorRegistry(), tenants=["alice", "bob"])
    get = m.registry.get_sample_value
    for method in METHODS:
        for code in CODES:
            assert get("gearkv_store_requests_total", {"method": method, "code": code}) == 0.0
        assert get("gearkv_store_request_duration_seconds_count", {"method": method}) == 0.0
    for kind in REDIS_ERROR_KINDS:
        assert get("gearkv_store_redis_errors_total", {"kind": kind}) == 0.0
    for where in ("manifest", "upload", "storage"):
        assert get("gearkv_store_integrity_failures_total", {"where": where}) == 0.0
    for outcome in LOOKUP_OUTCOMES:
        assert get("gearkv_store_lookups_total", {"outcome": outcome, "reason": "none"}) == 0.0
    for tenant in ("alice", "bob"):
        assert get("gearkv_store_quota_rejections_total", {"tenant": tenant}) == 0.0
        assert get("gearkv_store_live_raw_bytes", {"tenant": tenant}) == 0.0
    assert get("gearkv_store_expired_total", {"kind": "chunk"}) == 0.0
    text = generate_latest(m.registry).decode()
    assert "gearkv_store_build_info{" in text and "process_cpu_seconds_total" in text
    assert "python_info{" in text


def test_histogram_buckets_resolve_sub_millisecond_to_tens_of_seconds() -> None:
    m = StoreMetrics(CollectorRegistry())
    w = WorkerMetrics(CollectorRegistry())
    for name, labels, registry in (
        ("gearkv_store_request_duration_seconds_bucket", {"method": "GetChunk"}, m.registry),
        ("gearkv_worker_decompress_seconds_bucket", {}, w.registry),
        ("gearkv_worker_ttft_seconds_bucket", {"path": "resumed"}, w.registry),
    ):
        assert registry.get_sample_value(name, {**labels, "le": "0.001"}) == 0.0, name
        assert registry.get_sample_value(name, {**labels, "le": "30.0"}) == 0.0, name


def test_worker_series_exist_at_zero_and_build_info() -> None:
    w = WorkerMetrics(CollectorRegistry())
    get = w.registry.get_sample_value
    for reason in REASONS - {""}:
        assert get("gearkv_worker_resume_faults_total", {"reason": reason}) == 0.0
        assert get("gearkv_worker_turns_total", {"outcome": "miss", "reason": reason}) == 0.0
    for result in PUSH_RESULTS:
        assert get("gearkv_worker_pushes_total", {"result": result}) == 0.0
    for path in ("cold", "resumed"):
        assert get("gearkv_worker_ttft_seconds_count", {"path": path}) == 0.0
    text = generate_latest(w.registry).decode()
    assert 'gearkv_worker_build_info{codec_format_version="' in text
    assert "process_resident_memory_bytes" in text


def _entry(tokens: int) -> HotEntry:
    kv = [(torch.zeros(1, 1, tokens, 8), torch.zeros(1, 1, tokens, 8))]
    return HotEntry(tuple(range(tokens)), kv)


def test_hot_cache_evictions_are_counted_as_memory_freed() -> None:
    w = WorkerMetrics(CollectorRegistry())
    one = _entry(16).nbytes
    hot = HotCache(2 * one)
    w.track_hot_cache(hot)
    hot.put("a", _entry(16))
    hot.put("b", _entry(16))
    hot.put("a", _entry(16))  # a replacement, not an eviction
    get = w.registry.get_sample_value
    assert get("gearkv_worker_hot_cache_offloaded_bytes_total", {"device": "cpu"}) == 0.0
    hot.put("c", _entry(16))  # evicts b, the least recently used
    assert get("gearkv_worker_hot_cache_offloaded_bytes_total", {"device": "cpu"}) == one
    assert get("gearkv_worker_hot_cache_bytes") == 2 * one
    assert get("gearkv_worker_hot_cache_sessions") == 2


def test_expositions_pass_promtool_check_metrics() -> None:
    exe = promtool()
    for registry in (StoreMetrics(CollectorRegistry(), ["t"]).registry, WorkerMetrics().registry):
        done = subprocess.run(
            [exe, "check", "metrics"], input=generate_latest(registry), capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_alert_rules_pass_promtool_check_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"SUCCESS" in done.stdout
