"""`gearkv bench store`: the store through the SDK against raw Redis, same payloads, same Redis, one run.

Throughput: push (SET / the SDK's put_chunk) and pull (GET / get_chunk) of 1 MiB and 4 MiB values
with a few requests in flight, reported as store / raw ratios; raw and store phases alternate in
short segments so both sides see the same background load, and each round's ratio is paired.
Latency: 1, 16 and 64 concurrent sessions each pulling 1 MiB chunks, p50/p99 for AsyncKVStoreClient
against redis.asyncio under the same load.

The command starts its own redis-server (unless ``--redis-url``) and runs the store as a child process
(``--store-mode process``, the default) so the store's event loop does not share this process's GIL
with the load generator; ``--store-mode thread`` runs it in-process for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aredis
from gearkv.client import AsyncKVStoreClient, Namespace, RetryPolicy, keys
from gearkv.store.local import LocalRedis, LocalStore

from .progress import progress

MIB = 1024 * 1024
TENANT = "bench"
LATENCY_LEVELS = (1, 16, 64)
TARGET_RATIO = 0.60
TARGET_P99_FACTOR = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures; ``quick()`` is a smoke-sized variant for CI."""

    sizes_mib: tuple[int, ...] = (1, 4)
    # Bytes moved per size and direction, and requests kept in flight while doing it.
    volume_mib: int = 256
    in_flight: int = 4
    # Pulls per session at each latency level (1 session pulls more to get a stable p99).
    pulls_per_session: dict[int, int] = field(default_factory=lambda: {1: 200, 16: 25, 64: 10})
    rounds: int = 3
    # Raw and store phases alternate in this many segments per round (see measure_throughput).
    segments: int = 4

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(volume_mib=32, pulls_per_session={1: 40, 16: 5, 64: 3}, rounds=1)

    @property
    def steps(self) -> int:
        """Progress steps of a run: one per round of each chunk size and of each latency level."""
        return self.rounds * (len(self.sizes_mib) + (0 if 1 in self.sizes_mib else 1) + len(LATENCY_LEVELS))


def bench_config(
    quick: bool, rounds: int | None = None, volume_mib: int | None = None, in_flight: int | None = None
) -> BenchConfig:
    """The run's config: the full or quick one, with what the user gave on top (None: not given).

    Raises:
        ValueError: a given figure below 1.
    """
    cfg = BenchConfig.quick() if quick else BenchConfig()
    given = {"rounds": rounds, "volume_mib": volume_mib, "in_flight": in_flight}
    for name, value in given.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return replace(
        cfg,
        rounds=cfg.rounds if rounds is None else rounds,
        volume_mib=cfg.volume_mib if volume_mib is None else volume_mib,
        in_flight=cfg.in_flight if in_flight is None else in_flight,
    )


# --------------------------------------------------------------------------------------------------
# Pure figures


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def mb_per_s(total_bytes: int, seconds: float) -> float:
    return total_bytes / MIB / seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Measurements


async def _run_bounded(fn: Callable[[T], Awaitable[object]], args: Sequence[T], in_flight: int) -> float:
    """Await ``fn(arg)`` for every arg with at most ``in_flight`` at once; return the wall time (s)."""
    queue = list(reversed(args))

    async def worker() -> None:
        while queue:
            await fn(queue.pop())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Sample:
    """One timed phase: MB/s and CPU milliseconds per MiB moved, per process."""

    mb_s: float
    cpu_ms_per_mib: dict[str, float]


@dataclass
class Tally:
    """Wall time, bytes and CPU seconds per process accumulated over the segments of one phase."""

    secs: float = 0.0
    nbytes: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)

    def sample(self) -> Sample:
        mib = self.nbytes / MIB
        return Sample(mb_per_s(self.nbytes, self.secs), {n: s * 1e3 / mib for n, s in self.cpu_s.items()})


async def timed_phase(
    fn: Callable[[T], Awaitable[object]],
    args: Sequence[T],
    in_flight: int,
    nbytes: int,
    pids: dict[str, int],
    into: Tally | None = None,
) -> Sample:
    """Run one phase and say what it cost ("bench" is this process: load generator + SDK).

    With ``into`` the figures are added to that tally, and the returned sample is the running total.
    """
    tally = into if into is not None else Tally()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    c0 = time.process_time()
    tally.secs += await _run_bounded(fn, args, in_flight)
    tally.nbytes += nbytes
    tally.cpu_s["bench"] = tally.cpu_s.get("bench", 0.0) + time.process_time() - c0
    for name, pid in pids.items():
        start, end = before[name], cpu_seconds(pid)
        if start is not None and end is not None:
            tally.cpu_s[name] = tally.cpu_s.get(name, 0.0) + end - start
    return tally.sample()


PHASES = ("raw_push", "push", "raw_pull", "pull")


@dataclass
class Throughput:
    """Samples of the four phases at one chunk size; figures are medians over the rounds."""

    size_mib: int
    count: int
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def mb_s(self, phase: str) -> float:
        return statistics.median(s.mb_s for s in self.samples[phase]) if self.samples[phase] else 0.0

    def cpu_ms_per_mib(self, phase: str) -> dict[str, float]:
        names = {n for s in self.samples[phase] for n in s.cpu_ms_per_mib}
        return {
            n: round(statistics.median(s.cpu_ms_per_mib.get(n, 0.0) for s in self.samples[phase]), 2)
            for n in sorted(names)
        }

    def ratio(self, phase: str) -> float:
        """Store / raw: the median of each round's own ratio (its raw and store segments interleave,
        so they saw the same background load); the ratio of the medians when rounds do not pair up."""
        store, raw = self.samples[phase], self.samples[f"raw_{phase}"]
        if store and len(store) == len(raw) and all(r.mb_s for r in raw):
            return statistics.median(s.mb_s / r.mb_s for s, r in zip(store, raw, strict=True))
        raw_mb_s = self.mb_s(f"raw_{phase}")
        return self.mb_s(phase) / raw_mb_s if raw_mb_s else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "size_mib": self.size_mib,
            "count": self.count,
            **{f"{p}_mb_s": round(self.mb_s(p), 1) for p in PHASES},
            "push_ratio": round(self.ratio("push"), 3),
            "pull_ratio": round(self.ratio("pull"), 3),
            "cpu_ms_per_mib": {p: self.cpu_ms_per_mib(p) for p in PHASES},
        }


async def measure_throughput(
    cfg: BenchConfig,
    size_mib: int,
    raw: aredis.Redis,
    store: AsyncKVStoreClient,
    ns: Namespace,
    run: str,
    pids: dict[str, int],
    tick: Callable[[str], None] = lambda _: None,
) -> tuple[Throughput, list[str]]:
    size = size_mib * MIB
    count = max(cfg.in_flight, cfg.volume_mib // size_mib)
    payload = os.urandom(size)
    result = Throughput(size_mib=size_mib, count=count)

    def check_pull(data: object) -> None:
        if not isinstance(data, bytes) or len(data) != size:
            raise RuntimeError("benchmark pull returned the wrong size")

    async def raw_set(k: str) -> None:
        await raw.set(k, payload)

    async def store_put(t: list[int]) -> None:
        await store.put_chunk(ns, "", t, payload, start=0, raw_bytes=4 * size)

    async def raw_get(k: str) -> None:
        check_pull(await raw.get(k))

    async def store_get(k: str) -> None:
        check_pull(await store.get_chunk(k))

    n = cfg.in_flight
    store_keys: list[str] = []
    # Raw and store phases alternate in short segments (ABBA order), so both sides see the same
    # background load; each round's figure is the total over its segments.
    seg = max(n, -(-count // cfg.segments))
    for r in range(cfg.rounds):  # fresh keys per round, or later pushes would be deduplicated
        raw_keys = [f"bench:{run}:{size_mib}:{r}:{i}" for i in range(count)]
        token_ids = [[size_mib, r, i] for i in range(count)]
        store_keys = [keys.chunk_key(ns, "", 0, t) for t in token_ids]
        tallies = {p: Tally() for p in PHASES}
        for direction, raw_fn, raw_args, store_fn, store_args in (
            ("push", raw_set, raw_keys, store_put, token_ids),
            ("pull", raw_get, raw_keys, store_get, store_keys),
        ):
            for k, lo in enumerate(range(0, count, seg)):
                sides: list[tuple[str, Callable[[Any], Awaitable[None]], Sequence[Any]]] = [
                    (f"raw_{direction}", raw_fn, raw_args),
                    (direction, store_fn, store_args),
                ]
                for phase, fn, args in sides if k % 2 == 0 else reversed(sides):
                    part = args[lo : lo + seg]
                    await timed_phase(fn, part, n, size * len(part), pids, tallies[phase])
        for phase in PHASES:
            result.samples[phase].append(tallies[phase].sample())
        if await store.get_chunk(store_keys[-1]) != payload or await raw.get(raw_keys[-1]) != payload:
            raise RuntimeError("benchmark payload did not round-trip bit-exact")
        await raw.delete(*raw_keys)
        tick(f"throughput {size_mib} MiB, round {r + 1}/{cfg.rounds}")
    return result, store_keys


@dataclass
class Latency:
    """Pooled per-request latencies of one side at one concurrency, over all rounds."""

    sessions: int
    samples: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def pulls(self) -> int:
        return len(self.samples)

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples, 50) * 1e3

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples, 99) * 1e3

    @property
    def mb_s(self) -> float:
        return mb_per_s(self.pulls * MIB, self.wall_s)


async def measure_latency(
    into: Latency, pulls: int, fetch: Callable[[int], Awaitable[object]], n_keys: int
) -> None:
    """``into.sessions`` tasks each pull ``pulls`` chunks in turn; every request's latency is kept."""

    async def session(sid: int) -> None:
        for i in range(pulls):
            t0 = time.perf_counter()
            await fetch((sid * 7919 + i) % n_keys)
            into.samples.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(session(s) for s in range(into.sessions)))
    into.wall_s += time.perf_counter() - t0


async def run_bench(
    cfg: BenchConfig,
    redis_url: str,
    address: str,
    token: str,
    pids: dict[str, int],
    tick: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run every phase of ``cfg``; ``tick(what)`` is called after each of its ``cfg.steps`` steps."""
    run = secrets.token_hex(4)
    ns = Namespace(fingerprint=f"bench-{run}", codec_id="raw/v1", chunk_size=8)
    raw = aredis.Redis.from_url(redis_url, max_connections=max(LATENCY_LEVELS) + 8)
    store = AsyncKVStoreClient(address, token=token, timeout=60.0, retry=RetryPolicy.none())
    try:
        await raw.ping()
        await store.stats()
        throughput = []
        one_mib_keys: list[str] = []
        for size in cfg.sizes_mib:
            tp, store_keys = await measure_throughput(cfg, size, raw, store, ns, run, pids, tick)
            throughput.append(tp)
            if size == 1:
                one_mib_keys = store_keys
        if not one_mib_keys:
            _, one_mib_keys = await measure_throughput(cfg, 1, raw, store, ns, run + "l", pids, tick)
        payload = os.urandom(MIB)
        raw_lat_keys = [f"bench:{run}:lat:{i}" for i in range(len(one_mib_keys))]
        for k in raw_lat_keys:
            await raw.set(k, payload)

        async def raw_fetch(i: int) -> None:
            await raw.get(raw_lat_keys[i])

        async def store_fetch(i: int) -> None:
            await store.get_chunk(one_mib_keys[i])

        latency: dict[str, dict[str, Latency]] = {"raw": {}, "store": {}}
        fetchers = {"raw": raw_fetch, "store": store_fetch}
        for level in LATENCY_LEVELS:
            pulls = cfg.pulls_per_session.get(level, 10)
            for side, fetch in fetchers.items():  # warm connections and the channel
                await measure_latency(Latency(min(level, 4)), 2, fetch, len(one_mib_keys))
                latency[side][str(level)] = Latency(level)
            for r in range(cfg.rounds):  # alternate sides so both see the same background load
                for side, fetch in fetchers.items():
                    await measure_latency(latency[side][str(level)], pulls, fetch, len(one_mib_keys))
                tick(f"latency, {level} sessions, round {r + 1}/{cfg.rounds}")
        await raw.delete(*raw_lat_keys)
    finally:
        await store.close()
        await raw.aclose()
    return summarize(cfg, throughput, latency)


def summarize(
    cfg: BenchConfig, throughput: list[Throughput], latency: dict[str, dict[str, Latency]]
) -> dict[str, Any]:
    """The JSON document: headline ratios (1 MiB), per-size figures and latency per concurrency."""
    head = next((t for t in throughput if t.size_mib == 1), throughput[0])
    levels = [str(level) for level in LATENCY_LEVELS]
    p99 = {k: round(latency["store"][k].p99_ms, 2) for k in levels}
    raw_p99 = {k: round(latency["raw"][k].p99_ms, 2) for k in levels}
    return {
        "pull_ratio": round(head.ratio("pull"), 3),
        "push_ratio": round(head.ratio("push"), 3),
        "p50_ms": {k: round(latency["store"][k].p50_ms, 2) for k in levels},
        "p99_ms": p99,
        "raw_p50_ms": {k: round(latency["raw"][k].p50_ms, 2) for k in levels},
        "raw_p99_ms": raw_p99,
        "p99_factor": {k: round(p99[k] / raw_p99[k], 2) if raw_p99[k] else None for k in levels},
        "pull_mb_s": {k: round(latency["store"][k].mb_s, 1) for k in levels},
        "raw_pull_mb_s": {k: round(latency["raw"][k].mb_s, 1) for k in levels},
        "throughput": [t.as_json() for t in throughput],
        "targets": {
            "pull_ratio_min": TARGET_RATIO,
            "push_ratio_min": TARGET_RATIO,
            "p99_factor_max_at_64": TARGET_P99_FACTOR,
            "met": head.ratio("pull") >= TARGET_RATIO
            and head.ratio("push") >= TARGET_RATIO
            and p99["64"] <= TARGET_P99_FACTOR * raw_p99["64"],
        },
        "config": {**asdict(cfg), "pulls_per_session": {str(k): v for k, v in cfg.pulls_per_session.items()}},
    }


# --------------------------------------------------------------------------------------------------
# Output


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tp = Table(title="Throughput: store via SDK vs raw Redis (same payloads, same Redis)")
    for col in ("chunk", "raw SET MB/s", "store push MB/s", "push ratio", "raw GET MB/s", "store pull MB/s"):
        tp.add_column(col, justify="right")
    tp.add_column("pull ratio", justify="right")
    for t in result["throughput"]:
        tp.add_row(
            f"{t['size_mib']} MiB",
            f"{t['raw_push_mb_s']:.0f}",
            f"{t['push_mb_s']:.0f}",
            f"{t['push_ratio']:.0%}",
            f"{t['raw_pull_mb_s']:.0f}",
            f"{t['pull_mb_s']:.0f}",
            f"{t['pull_ratio']:.0%}",
        )
    console.print(tp)
    cpu = Table(title="CPU ms per MiB moved (median over rounds; bench = load generator + SDK)")
    procs = sorted({n for t in result["throughput"] for c in t["cpu_ms_per_mib"].values() for n in c})
    for col in ("chunk", "phase", *procs):
        cpu.add_column(col, justify="right")
    for t in result["throughput"]:
        for phase, per in t["cpu_ms_per_mib"].items():
            cpu.add_row(f"{t['size_mib']} MiB", phase, *(f"{per.get(n, 0.0):.2f}" for n in procs))
    console.print(cpu)
    lat = Table(title="Latency pulling 1 MiB chunks: AsyncKVStoreClient vs redis.asyncio")
    for col in ("sessions", "raw p50 ms", "raw p99 ms", "store p50 ms", "store p99 ms", "p99 factor"):
        lat.add_column(col, justify="right")
    lat.add_column("store MB/s", justify="right")
    for k in result["p99_ms"]:
        lat.add_row(
            k,
            f"{result['raw_p50_ms'][k]:.1f}",
            f"{result['raw_p99_ms'][k]:.1f}",
            f"{result['p50_ms'][k]:.1f}",
            f"{result['p99_ms'][k]:.1f}",
            f"{result['p99_factor'][k]:.2f}x",
            f"{result['pull_mb_s'][k]:.0f}",
        )
    console.print(lat)
    met = "met" if result["targets"]["met"] else "NOT met"
    goal = f"pull and push >= {TARGET_RATIO:.0%} of raw, p99 at 64 sessions <= {TARGET_P99_FACTOR:.0f}x raw"
    console.print(f"targets ({goal}): {met}")


def main(argv: Sequence[str], prog: str = "gearkv bench store") -> int:
    from gearkv.cli import HelpFormatter

    full, quick = BenchConfig(), BenchConfig.quick()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small, fast run (smoke test): {quick.volume_mib} MiB, {quick.rounds} round",
    )
    parser.add_argument(
        "--store-mode",
        choices=("process", "thread"),
        default="process",
        help="run the store as a child process (own GIL) or in this process",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="throughput and latency rounds (medians reported; ratios paired per round) "
        f"(default: {full.rounds}, with --quick {quick.rounds})",
    )
    parser.add_argument(
        "--volume-mib",
        type=int,
        help=f"MiB moved per chunk size and direction (default: {full.volume_mib}, with --quick "
        f"{quick.volume_mib})",
    )
    parser.add_argument(
        "--in-flight", type=int, help=f"requests in flight in the throughput runs (default: {full.in_flight})"
    )
    args = parser.parse_args(list(argv))
    try:
        cfg = bench_config(args.quick, args.rounds, args.volume_mib, args.in_flight)
    except ValueError as exc:
        parser.error(str(exc))
    pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            local_redis = stack.enter_context(LocalRedis())
            redis_url, pids["redis"] = local_redis.url, local_redis.pid or 0
        store = stack.enter_context(LocalStore(redis_url, TENANT, in_process=args.store_mode == "thread"))
        if not store.in_process:
            pids["store"] = store.pid
        try:
            with progress(cfg.steps) as tick:
                result = asyncio.run(run_bench(cfg, redis_url, store.address, store.token, pids, tick))
        except BaseException:
            print(store.log_tail(), file=sys.stderr)
            raise
    result["config"]["store_mode"] = args.store_mode
    result["config"]["redis"] = "own redis-server" if not args.redis_url else "given"
    result["config"]["cpus"] = os.cpu_count()
    render(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
