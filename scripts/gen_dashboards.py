"""Generate the Grafana dashboards under deploy/grafana/dashboards/ from code (grafanalib).

Usage: python scripts/gen_dashboards.py [--check]

Two dashboards: ``gearkv-overview.json`` (what GearKV saves: memory held raw vs stored, ratio, dedup,
tokens reused vs prefilled, TTFT resumed vs cold, hit/partial/miss with reasons) and
``gearkv-operations.json`` (RPC rates, latencies and errors, Redis, integrity, quotas and load
shedding, the worker's push/pull/compress/decompress, processes). The committed JSON is what Grafana
provisions (deploy/grafana/provisioning/dashboards/gearkv.yml); --check regenerates in memory and fails
if it differs, so a hand edit or a stale file is caught (tests/unit/test_deploy_dashboards.py).

Conventions every panel follows (the tests check them): a description, a unit, a legend with a legend
format per query, ``$job`` and ``$instance`` in every selector. Labelled series exist at 0 from the
start (see the metrics modules), so a panel reads 0 while nothing happened and shows its "no data"
text only when nothing is scraped. Gauges read from Redis are the same on every store replica: they
are aggregated with ``max by (tenant)`` before any ``sum``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import attr
from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    Stat,
    Target,
    Template,
    Templating,
    Threshold,
    Time,
    TimeSeries,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy/grafana/dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"
NO_TARGET = "no data: no store or worker scraped (down, or $job/$instance match none)"


def q(expr: str, legend: str) -> Target:
    return Target(expr=expr, legendFormat=legend, datasource=DATASOURCE)


def hq(quantile: str, metric: str, by: str = "") -> str:
    """``histogram_quantile`` of ``metric``'s buckets over the rate window, grouped by ``by``."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))"


def _lettered(targets: list[Target]) -> list[Target]:
    return [attr.evolve(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]


class Layout:
    """Places panels left to right on a 24-column grid, wrapping to a new row."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0

    def at(self, w: int, h: int) -> GridPos:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos


def _no_value(text: str) -> dict[str, Any]:
    return {"fieldConfig": {"defaults": {"noValue": text}}}


def series(
    lay: Layout,
    title: str,
    description: str,
    unit: str,
    targets: list[Target],
    *,
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    no_value: str = NO_TARGET,
) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_lettered(targets),
        unit=unit,
        gridPos=lay.at(w, h),
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        stacking={"mode": "normal" if stack else "none", "group": "A"},
        fillOpacity=20 if stack else 10,
        extraJson=_no_value(no_value),
    )


def stat(
    lay: Layout,
    title: str,
    description: str,
    unit: str,
    targets: list[Target],
    *,
    w: int = 4,
    h: int = 4,
    no_value: str = NO_TARGET,
    decimals: int | None = None,
) -> Stat:
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_lettered(targets),
        format=unit,
        gridPos=lay.at(w, h),
        reduceCalc="lastNotNull",
        graphMode="area",
        textMode="value_and_name" if len(targets) > 1 else "auto",
        noValue=no_value,
        decimals=decimals,
        thresholds=[Threshold("green", 0, 0.0)],
        extraJson={"options": {"legend": {"showLegend": True}}},
    )


def templating() -> Templating:
    job = Template(
        name="job",
        label="job",
        query='label_values(up{job=~"gearkv-.*"}, job)',
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue="gearkv-.*",
        default="$__all",
        refresh=2,
        sort=1,
    )
    instance = Template(
        name="instance",
        label="instance",
        query='label_values(up{job=~"$job"}, instance)',
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".+",
        default="$__all",
        refresh=2,
        sort=1,
    )
    return Templating(list=[job, instance])


def _held(metric: str) -> str:
    """A store gauge read from Redis: the same on every replica, so max across them, then sum tenants."""
    return f"sum(max by (tenant) ({metric}{{{SEL}}}))"


def overview() -> Dashboard:
    lay = Layout()
    raw, stored = _held("gearkv_store_live_raw_bytes"), _held("gearkv_store_live_stored_bytes")
    panels: list[Any] = [
        stat(
            lay,
            "KV held now, 16-bit equivalent",
            "What the live sessions' KV would take uncompressed (fp16/bf16): the sum over tenants of the "
            "raw bytes of every live chunk in Redis, refreshed by the store every 5 s.",
            "bytes",
            [q(raw, "raw")],
        ),
        stat(
            lay,
            "KV held now, stored",
            "Payload bytes the live chunks really take in Redis after GEAR compression (every tenant).",
            "bytes",
            [q(stored, "stored")],
        ),
        stat(
            lay,
            "Memory saved now",
            "16-bit-equivalent bytes minus stored bytes of the live KV: what compression saves right now.",
            "bytes",
            [q(f"{raw} - {stored}", "saved")],
        ),
        stat(
            lay,
            "Compression ratio now",
            "Raw over stored bytes of the live KV. Undefined until something is stored: the panel then "
            "says so instead of reading 0.",
            "none",
            [q(f"{raw} / ({stored} > 0)", "ratio")],
            no_value="nothing stored yet (or no store scraped)",
            decimals=2,
        ),
        stat(
            lay,
            "Saved by deduplication now",
            "Stored bytes that prefix deduplication keeps out of Redis: the live sessions' stored bytes "
            "(each counting every chunk it references) minus the live chunks' bytes (a lower bound).",
            "bytes",
            [q(_held("gearkv_store_dedup_saved_bytes"), "dedup saved")],
        ),
        stat(
            lay,
            "Sessions / chunks live",
            "Live sessions and chunks in the store, every tenant (expired ones are released within seconds).",
            "short",
            [
                q(_held("gearkv_store_live_sessions"), "sessions"),
                q(_held("gearkv_store_live_chunks"), "chunks"),
            ],
        ),
        series(
            lay,
            "KV held over time, raw vs stored, per tenant",
            "16-bit-equivalent and stored bytes of the live KV of each tenant; the gap is the memory saved.",
            "bytes",
            [
                q(f"max by (tenant) (gearkv_store_live_raw_bytes{{{SEL}}})", "{{tenant}} raw (16-bit)"),
                q(f"max by (tenant) (gearkv_store_live_stored_bytes{{{SEL}}})", "{{tenant}} stored"),
            ],
        ),
        series(
            lay,
            "Memory saved over time",
            "Bytes saved now by compression (raw minus stored) and by deduplication, every tenant.",
            "bytes",
            [
                q(f"{raw} - {stored}", "compression"),
                q(_held("gearkv_store_dedup_saved_bytes"), "deduplication"),
            ],
            stack=True,
        ),
        series(
            lay,
            "Tokens reused vs prefilled",
            "Prompt tokens per second whose KV was reused (from the worker's hot cache or pulled from the "
            "store) versus recomputed by prefill.",
            "short",
            [
                q(
                    "sum by (source) (rate(gearkv_worker_tokens_reused_total"
                    f'{{{SEL}, source!="none"}}[{RATE}]))',
                    "reused from {{source}}",
                ),
                q(f"sum(rate(gearkv_worker_tokens_prefilled_total{{{SEL}}}[{RATE}]))", "prefilled"),
            ],
            stack=True,
        ),
        series(
            lay,
            "Time to first token: resumed vs cold",
            "p50 and p95 of the time to first token of turns that reused stored or cached KV (resumed) "
            "and of turns that prefilled everything (cold), side by side. Gaps: no turn in the window.",
            "s",
            [
                q(
                    hq("0.5", "gearkv_worker_ttft_seconds", "path"),
                    "p50 {{path}}",
                ),
                q(
                    hq("0.95", "gearkv_worker_ttft_seconds", "path"),
                    "p95 {{path}}",
                ),
            ],
        ),
        series(
            lay,
            "Turns by resume outcome",
            "Turns per second by outcome: hit (the whole history reused), partial, miss.",
            "reqps",
            [q(f"sum by (outcome) (rate(gearkv_worker_turns_total{{{SEL}}}[{RATE}]))", "{{outcome}}")],
            stack=True,
        ),
        series(
            lay,
            "Partial hits and misses by reason",
            "Why turns were not full hits (new session, chunk missing or corrupt, store unavailable, "
            "prefix diverged, ...), turns per second; every reason reads 0 until it happens.",
            "reqps",
            [
                q(
                    f'sum by (reason) (rate(gearkv_worker_turns_total{{{SEL}, outcome!="hit"}}[{RATE}]))',
                    "{{reason}}",
                )
            ],
        ),
        series(
            lay,
            "Store prefix lookups",
            "LookupPrefix answers per second by outcome and why a lookup stopped short.",
            "reqps",
            [
                q(
                    f"sum by (outcome, reason) (rate(gearkv_store_lookups_total{{{SEL}}}[{RATE}]))",
                    "{{outcome}} ({{reason}})",
                )
            ],
        ),
        series(
            lay,
            "Bytes written: raw vs stored",
            "16-bit-equivalent and stored bytes per second of newly stored chunks (deduplicated uploads "
            "write nothing).",
            "Bps",
            [
                q(f"sum(rate(gearkv_store_raw_bytes_total{{{SEL}}}[{RATE}]))", "raw (16-bit)"),
                q(f"sum(rate(gearkv_store_stored_bytes_total{{{SEL}}}[{RATE}]))", "stored"),
            ],
        ),
        series(
            lay,
            "Worker hot cache and memory freed",
            "KV bytes each worker keeps in its hot cache, and bytes per second freed by evicting idle "
            "sessions from it (their KV stays in the store), by device.",
            "bytes",
            [
                q(f"sum by (instance) (gearkv_worker_hot_cache_bytes{{{SEL}}})", "hot cache {{instance}}"),
                q(
                    f"sum by (device) (rate(gearkv_worker_hot_cache_offloaded_bytes_total{{{SEL}}}[{RATE}]))",
                    "freed/s {{device}}",
                ),
            ],
        ),
        series(
            lay,
            "Chunks written, deduplicated and expired",
            "Chunks per second newly written, found already stored (deduplicated), and released after "
            "their TTL expired (or Redis evicted them).",
            "short",
            [
                q(f"sum(rate(gearkv_store_chunks_written_total{{{SEL}}}[{RATE}]))", "written"),
                q(f"sum(rate(gearkv_store_chunks_deduplicated_total{{{SEL}}}[{RATE}]))", "deduplicated"),
                q(
                    f"sum by (kind) (rate(gearkv_store_expired_total{{{SEL}}}[{RATE}]))",
                    "expired {{kind}}",
                ),
            ],
        ),
    ]
    return Dashboard(
        title="GearKV overview",
        uid="gearkv-overview",
        description="What GearKV saves: KV memory held raw vs stored, dedup, reuse and time to first token.",
        tags=["gearkv"],
        panels=panels,
        templating=templating(),
        time=Time("now-1h", "now"),
        refresh="10s",
        timezone="browser",
    ).auto_panel_ids()


SERVER_ERRORS = 'code=~"INTERNAL|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED|UNKNOWN"'


def operations() -> Dashboard:
    lay = Layout()
    dur = "gearkv_store_request_duration_seconds"
    panels: list[Any] = [
        stat(
            lay,
            "Targets up",
            "Stores and workers Prometheus scrapes right now (1 = up).",
            "short",
            [q(f"sum by (job) (up{{{SEL}}})", "{{job}}")],
            w=6,
        ),
        stat(
            lay,
            "Redis up",
            "1 when every store's health probe (PING every 2 s) reaches Redis.",
            "short",
            [q(f"min(gearkv_store_redis_up{{{SEL}}})", "redis up")],
            w=6,
        ),
        stat(
            lay,
            "Server error ratio",
            "Share of store RPCs answered INTERNAL, UNAVAILABLE, DATA_LOSS or DEADLINE_EXCEEDED over the "
            "window (0 when idle).",
            "percentunit",
            [
                q(
                    f"sum(rate(gearkv_store_requests_total{{{SEL}, {SERVER_ERRORS}}}[{RATE}])) / "
                    f"clamp_min(sum(rate(gearkv_store_requests_total{{{SEL}}}[{RATE}])), 1e-9)",
                    "errors",
                )
            ],
            w=6,
        ),
        stat(
            lay,
            "In flight",
            "Store RPCs being handled and worker turns being generated right now.",
            "short",
            [
                q(f"sum(gearkv_store_requests_in_flight{{{SEL}}})", "store RPCs"),
                q(f"sum(gearkv_worker_turns_in_flight{{{SEL}}})", "worker turns"),
            ],
            w=6,
        ),
        series(
            lay,
            "Store RPC rate by method",
            "KVStore RPCs per second by method (all status codes).",
            "reqps",
            [q(f"sum by (method) (rate(gearkv_store_requests_total{{{SEL}}}[{RATE}]))", "{{method}}")],
        ),
        series(
            lay,
            "Store RPC errors by code",
            "Non-OK answers per second by status code; every code reads 0 until it happens.",
            "reqps",
            [
                q(
                    f'sum by (code) (rate(gearkv_store_requests_total{{{SEL}, code!="OK"}}[{RATE}]))',
                    "{{code}}",
                )
            ],
        ),
        series(
            lay,
            "Store latency p50 by method",
            "Median RPC handling time by method. Gaps: no call of that method in the window.",
            "s",
            [
                q(
                    hq("0.5", dur, "method"),
                    "p50 {{method}}",
                )
            ],
        ),
        series(
            lay,
            "Store latency p99 by method",
            "99th percentile RPC handling time by method (buckets from 0.1 ms to 30 s).",
            "s",
            [
                q(
                    hq("0.99", dur, "method"),
                    "p99 {{method}}",
                )
            ],
        ),
        series(
            lay,
            "Store errors by method",
            "Non-OK answers per second by method.",
            "reqps",
            [
                q(
                    f'sum by (method) (rate(gearkv_store_requests_total{{{SEL}, code!="OK"}}[{RATE}]))',
                    "{{method}}",
                )
            ],
        ),
        series(
            lay,
            "Redis memory",
            "Redis used_memory against maxmemory (0 = no limit), and the bytes the live chunks' payloads "
            "would need times the sampled MEMORY USAGE overhead.",
            "bytes",
            [
                q(f"max(gearkv_store_redis_used_memory_bytes{{{SEL}}})", "used_memory"),
                q(f"max(gearkv_store_redis_maxmemory_bytes{{{SEL}}})", "maxmemory"),
                q(
                    f"{_held('gearkv_store_live_stored_bytes')} * "
                    f"max(gearkv_store_redis_chunk_memory_ratio{{{SEL}}})",
                    "chunks (stored x overhead)",
                ),
            ],
        ),
        series(
            lay,
            "Redis latency and errors",
            "p50/p99 of the store's PING to Redis (seconds, left) and Redis errors per second by kind "
            "(each retry attempt counts).",
            "s",
            [
                q(
                    hq("0.5", "gearkv_store_redis_ping_seconds"),
                    "PING p50",
                ),
                q(
                    hq("0.99", "gearkv_store_redis_ping_seconds"),
                    "PING p99",
                ),
                q(
                    f"sum by (kind) (rate(gearkv_store_redis_errors_total{{{SEL}}}[{RATE}]))",
                    "errors/s {{kind}}",
                ),
            ],
        ),
        series(
            lay,
            "Integrity failures",
            "Chunks or manifests that failed a digest or format check, per second, by where they were "
            "caught (upload, storage, manifest). Anything above 0 is corruption detected and refused.",
            "short",
            [
                q(
                    f"sum by (where) (rate(gearkv_store_integrity_failures_total{{{SEL}}}[{RATE}]))",
                    "{{where}}",
                )
            ],
        ),
        series(
            lay,
            "Quota rejections and load shedding",
            "Writes refused per second because a tenant's byte quota is reached, and requests shed "
            "because too many were in flight; Redis evictions per second.",
            "reqps",
            [
                q(
                    f"sum by (tenant) (rate(gearkv_store_quota_rejections_total{{{SEL}}}[{RATE}]))",
                    "quota {{tenant}}",
                ),
                q(f"sum(rate(gearkv_store_shed_requests_total{{{SEL}}}[{RATE}]))", "shed"),
                q(f"max(deriv(gearkv_store_redis_evicted_keys{{{SEL}}}[{RATE}]))", "Redis evictions"),
            ],
        ),
        series(
            lay,
            "Worker push and pull bytes",
            "Chunk bytes per second workers push to the store and pull from it, and bytes the store serves.",
            "Bps",
            [
                q(f"sum(rate(gearkv_worker_pushed_bytes_total{{{SEL}}}[{RATE}]))", "pushed"),
                q(f"sum(rate(gearkv_worker_pulled_bytes_total{{{SEL}}}[{RATE}]))", "pulled"),
                q(f"sum(rate(gearkv_store_served_bytes_total{{{SEL}}}[{RATE}]))", "served by the store"),
            ],
        ),
        series(
            lay,
            "Worker pushes by result",
            "Background pushes per second by result (ok, or why the turn's KV was not stored).",
            "reqps",
            [q(f"sum by (result) (rate(gearkv_worker_pushes_total{{{SEL}}}[{RATE}]))", "{{result}}")],
        ),
        series(
            lay,
            "Worker chunks pushed",
            "Chunks per second pushed by workers: new, or already stored (deduplicated).",
            "short",
            [
                q(
                    f"sum by (deduplicated) (rate(gearkv_worker_chunks_pushed_total{{{SEL}}}[{RATE}]))",
                    "deduplicated={{deduplicated}}",
                )
            ],
        ),
        series(
            lay,
            "Worker pull, decompress, compress p50 / p99",
            "Time to pull and rebuild a stored prefix, to decode pulled chunks and to encode a turn's new "
            "chunks (buckets from 0.5 ms to 120 s). Gaps: nothing pulled or pushed in the window.",
            "s",
            [
                q(
                    hq(p, f"gearkv_worker_{name}_seconds"),
                    f"{name} p{int(float(p) * 100)}",
                )
                for name in ("pull", "decompress", "compress")
                for p in ("0.5", "0.99")
            ],
        ),
        series(
            lay,
            "Process CPU and memory",
            "CPU seconds per second and resident memory of each store and worker process.",
            "short",
            [
                q(f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "CPU {{instance}}"),
                q(f"process_resident_memory_bytes{{{SEL}}} / 2^30", "RSS GiB {{instance}}"),
            ],
        ),
        series(
            lay,
            "Build",
            "Versions running: package version, store chunk format and worker codec format versions.",
            "short",
            [
                q(
                    f"count by (version, chunk_format_version) (gearkv_store_build_info{{{SEL}}})",
                    "store {{version}} chunk format {{chunk_format_version}}",
                ),
                q(
                    f"count by (version, codec_format_version) (gearkv_worker_build_info{{{SEL}}})",
                    "worker {{version}} codec format {{codec_format_version}}",
                ),
            ],
        ),
    ]
    return Dashboard(
        title="GearKV operations",
        uid="gearkv-operations",
        description="Running GearKV: RPCs, latency and errors, Redis, integrity, quotas, worker transfers.",
        tags=["gearkv"],
        panels=panels,
        templating=templating(),
        time=Time("now-1h", "now"),
        refresh="10s",
        timezone="browser",
    ).auto_panel_ids()


def _fix_base_threshold(node: Any) -> Any:
    """grafanalib writes the base threshold step's value as the string "null"; Grafana wants null."""
    if isinstance(node, dict):
        if node.get("value") == "null" and "color" in node:
            node["value"] = None
        for value in node.values():
            _fix_base_threshold(value)
    elif isinstance(node, list):
        for value in node:
            _fix_base_threshold(value)
    return node


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for name, board in (("gearkv-overview.json", overview()), ("gearkv-operations.json", operations())):
        data = _fix_base_threshold(json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder)))
        out[name] = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        stale = [n for n, text in rendered.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        if stale:
            print(
                f"stale dashboards (run python scripts/gen_dashboards.py): {', '.join(stale)}",
                file=sys.stderr,
            )
            return 1
        print("dashboards are up to date")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text)
        print(f"wrote {(OUT / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
