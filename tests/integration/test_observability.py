"""A real Prometheus on loopback scrapes a real store (``gearkv store --metrics-port``) and a worker's
metrics port through a short multi-turn session; then every PromQL expression of every dashboard is
evaluated through Prometheus's HTTP API (``$job``/``$instance`` substituted, as Grafana's "All" does):
each returns data and no error; every alert rule evaluates without error; ``promtool check metrics``
passes on every endpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gearkv.client import KVStoreClient
from gearkv.store.local import LocalPrometheus, LocalStore, PromQLError, free_port
from gearkv.worker.config import SessionOptions
from gearkv.worker.engine import Engine, SamplingParams
from gearkv.worker.metrics import WorkerMetrics
from gearkv.worker.sessions import Worker
from prometheus_client import CollectorRegistry, start_http_server
from support.redis_procs import RedisServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
# What Grafana sends for "All" of each variable (their allValue) and for the rate window.
SUBSTITUTIONS = {"$job": "gearkv-.*", "$instance": ".+", "$__rate_interval": "1m"}
TURNS = ("Name three colors.", "Which one is the sky?", "And the grass?")


def _require_prometheus() -> None:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip(
            "prometheus/promtool not on PATH and not installable here: scripts/setup.sh installs Debian's "
            "prometheus package when run as root with apt-get"
        )


def _expressions() -> list[tuple[str, str, str]]:
    out = []
    for path in BOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in SUBSTITUTIONS.items():
                    expr = expr.replace(var, value)
                out.append((path.stem, panel["title"], expr))
    return out


@pytest.fixture
def observed(engine: Engine, fingerprint: str, redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    """A store process and an in-process worker, each with a metrics port, after a 3-turn session
    (turn 1 cold, turn 2 from the hot cache, turn 3 on a fresh worker pulled from the store)."""
    _require_prometheus()
    store_metrics = free_port()
    store = LocalStore(redis_server.url, "alice", extra_args=["--metrics-port", str(store_metrics)])
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    worker_metrics = free_port()
    http, _thread = start_http_server(worker_metrics, addr="127.0.0.1", registry=registry)
    try:
        with store, KVStoreClient(store.address, token=store.token, timeout=30) as client:
            options = SessionOptions(codec="gear4", chunk_size=32)
            first = Worker(engine, client, options, metrics, fingerprint=fingerprint)
            fresh = Worker(engine, client, options, metrics, fingerprint=fingerprint)
            for w in (first, fresh):
                metrics.track_hot_cache(w.hot)
            targets = {
                "gearkv-store": [f"127.0.0.1:{store_metrics}"],
                "gearkv-worker": [f"127.0.0.1:{worker_metrics}"],
            }
            with LocalPrometheus(targets, rule_files=[ALERTS], interval_s=1.0) as prom:
                stats = []
                for n, message in enumerate(TURNS):
                    turn = (
                        (first if n < 2 else fresh)
                        .chat("obs-1", message, SamplingParams(max_new_tokens=8))
                        .run()
                    )
                    if turn.push is not None:
                        turn.push.result(timeout=120)
                    stats.append(turn.stats)
                yield {"prom": prom, "stats": stats, "endpoints": [a for t in targets.values() for a in t]}
    finally:
        http.shutdown()


def _wait_for_data(prom: LocalPrometheus, expr: str, timeout: float) -> list[dict[str, Any]]:
    """The expression's result once it is non-empty (gauges refresh every 5 s, scrapes every 1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = prom.query(expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_every_dashboard_expression_and_alert_rule_on_a_real_prometheus(observed: dict[str, Any]) -> None:
    prom: LocalPrometheus = observed["prom"]
    stats = observed["stats"]
    assert [s.source or "none" for s in stats] == ["none", "hot_cache", "store"]
    prom.wait_until_scraped()
    # The savings are visible through Prometheus: held raw > stored > 0, turns of both TTFT paths.
    raw = _wait_for_data(prom, 'gearkv_store_live_raw_bytes{tenant="alice"} > 0', 20)
    assert raw, prom.log_tail()
    time.sleep(2.5)  # two more scrapes, so every rate() over the window has two samples after the turns

    expressions = _expressions()
    assert len(expressions) >= 60
    empty, failed = [], []
    for board, title, expr in expressions:
        try:
            result = _wait_for_data(prom, expr, 10)
        except PromQLError as exc:
            failed.append(f"{board} / {title}: {expr}: {exc}")
            continue
        if not result:
            empty.append(f"{board} / {title}: {expr}")
    assert not failed, "\n".join(failed)
    assert not empty, "no data:\n" + "\n".join(empty)

    # The template variables resolve to both jobs and both instances.
    assert prom.label_values("job", 'up{job=~"gearkv-.*"}') == ["gearkv-store", "gearkv-worker"]
    assert sorted(prom.label_values("instance", 'up{job=~"gearkv-.*"}')) == sorted(observed["endpoints"])

    # What the overview shows, checked against the turns: memory saved and TTFT on both paths.
    held_raw = prom.value('sum(max by (tenant) (gearkv_store_live_raw_bytes{job=~"gearkv-.*"}))')
    held_stored = prom.value('sum(max by (tenant) (gearkv_store_live_stored_bytes{job=~"gearkv-.*"}))')
    assert held_raw is not None and held_stored is not None and held_raw > 2 * held_stored > 0
    assert prom.value('sum(gearkv_worker_ttft_seconds_count{path="cold"})') == 1
    assert prom.value('sum(gearkv_worker_ttft_seconds_count{path="resumed"})') == 2
    assert prom.value('sum(gearkv_worker_tokens_reused_total{source="store"})') == stats[2].tokens_reused

    # Every alert rule was evaluated, without error (and none fires on a healthy stack).
    def evaluated() -> bool:
        return all(r["health"] != "unknown" for r in prom.rules())

    deadline = time.monotonic() + 15
    while not evaluated() and time.monotonic() < deadline:
        time.sleep(0.5)
    rules = prom.rules()
    assert len(rules) == 12
    assert [r["name"] for r in rules if r["health"] != "ok" or r.get("lastError")] == []
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert firing == []


def test_promtool_check_metrics_passes_on_every_endpoint(observed: dict[str, Any]) -> None:
    for address in observed["endpoints"]:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            text = reply.read()
        done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert done.returncode == 0, (address, done.stdout.decode(), done.stderr.decode())
        assert b"gearkv_" in text and b"process_cpu_seconds_total" in text
