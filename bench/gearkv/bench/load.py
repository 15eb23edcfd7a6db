"""`gearkv bench load`: sessions x turns against the store, ramped until p99 or errors pass a limit.

Each simulated session runs chat turns the way a worker does: ``begin_turn`` (its lease), a
``lookup_prefix`` of its whole token history plus the new prompt, ``get_chunk`` of every matched
chunk (pulls, a few at a time like the SDK's prefetch), ``put_chunk`` of the turn's new 256-token
chunks (pushes: GEAR-compressed KV of a small model, 512 KiB each; 128 KiB with ``--quick``) and
``commit_turn``. After ``max_turns`` turns a session retires and a fresh one takes its place. The
number of concurrent sessions doubles each step (1, 2, 4, ...; a few seconds each) until the p99 of
admitted requests passes ``--p99-limit-ms``, an error other than RESOURCE_EXHAUSTED appears, or
``--max-step`` steps ran. Each step reports turns/s, pushes/s and pulls/s (chunks), MB/s both ways,
p50/p99 of pushes and pulls, and requests shed (RESOURCE_EXHAUSTED) or failed, by gRPC status.

The SDK runs with ``RetryPolicy.none()``, so every shed request is seen; a session whose request is
shed backs off for a few tens of milliseconds and runs the turn again. A last, separate phase runs the
same sessions through a second store on the same Redis whose ``--max-in-flight`` is tiny: it must shed,
and shedding must keep the p99 of the requests it admits under the limit instead of queueing them.
Finally every acknowledged commit is read back: each session's manifest (version, tokens, chunk keys)
and every chunk it names, bytes compared (the SDK also checks each chunk's digest); ``lost`` and
``corrupt_reads`` must be 0.

The command starts its own redis-server (unless ``--redis-url``) and runs the store as a child process
(``--store-mode process``, the default) so its event loop does not share this process's GIL with the
load generator; ``--store-mode thread`` runs it in-process.

Programmatic use (``gearkv bench faults`` puts the result under "load")::

    result = run_load(quick=True)  # synchronous: runs its own event loop; call it outside one

``run_load(*, quick, redis_url=None, progress_tick=None, store_mode="process", p99_limit_ms=None,
max_step=None, max_in_flight=None, config=None) -> dict``: ``progress_tick(what)`` is called after each
step (at most ``LoadConfig.steps`` times); ``config`` replaces the quick/full profile entirely. The
dict: ``steps`` (one per ramp step, then the shedding step, ``phase`` "ramp" or "shed"),
``shedding_begins_at_sessions`` (first ramp step that shed; None if none did), ``sustained`` (the ramp
step with the most chunks/s under the limit and without errors: ``pushes_per_s``, ``pulls_per_s``,
``p99_ms``, ``sessions``), ``shedding`` (the tiny-limit step: ``shed``, ``admitted``, ``p99_ms``,
``bounded``), ``stopped_by``, ``acknowledged_turns``, ``lost``, ``corrupt_reads``, ``verified``,
``seconds`` and ``config``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from gearkv.client import AsyncKVStoreClient, ChunkRef, Manifest, Namespace, RetryPolicy, errors, keys
from gearkv.store.local import LocalRedis, LocalStore

from .progress import progress
from .store import MIB, percentile

KIB = 1024
TENANT = "bench"
SHED_CODE = "RESOURCE_EXHAUSTED"
T = TypeVar("T")
Tick = Callable[[str], None]


@dataclass(frozen=True)
class LoadConfig:
    """What one run does; ``quick()`` is a smoke-sized variant for CI (well under 90 s on 2 cores)."""

    # Concurrent sessions of the first step; each later step doubles them, for at most max_step steps.
    start_sessions: int = 1
    max_step: int = 9
    step_s: float = 6.0
    p99_limit_ms: float = 500.0
    # A turn: chunks_per_turn new chunks of chunk_tokens tokens, chunk_kib KiB each as stored
    # (raw fp16 KV is `compression` times larger); a session retires after max_turns turns.
    chunk_tokens: int = 256
    chunk_kib: int = 512
    compression: float = 4.0
    chunks_per_turn: int = 2
    max_turns: int = 8
    # Pulls of one turn in flight at once (the SDK's prefetch); SDK clients (channels) the sessions share.
    pull_parallel: int = 4
    clients: int = 4
    # The store's --max-in-flight in the ramp (None: the store's default).
    max_in_flight: int | None = None
    # The shedding step: this many sessions through a store with this --max-in-flight.
    shed_sessions: int = 64
    shed_max_in_flight: int = 4
    shed_step_s: float = 6.0
    # A shed or failed turn is run again after a random pause in this range (milliseconds).
    backoff_ms: tuple[float, float] = (20.0, 80.0)
    timeout_s: float = 30.0
    ttl_s: int = 3600

    @classmethod
    def quick(cls) -> LoadConfig:
        return cls(max_step=8, step_s=3.0, chunk_kib=128, max_turns=6, shed_sessions=16, shed_step_s=3.0)

    def __post_init__(self) -> None:
        positive = ("start_sessions", "max_step", "chunk_tokens", "chunk_kib", "chunks_per_turn", "max_turns")
        for name in (*positive, "pull_parallel", "clients", "shed_sessions", "shed_max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.step_s <= 0 or self.shed_step_s <= 0 or self.p99_limit_ms <= 0 or self.timeout_s <= 0:
            raise ValueError("step_s, shed_step_s, p99_limit_ms and timeout_s must be > 0")

    @property
    def levels(self) -> list[int]:
        """Sessions of each ramp step."""
        return [self.start_sessions * 2**k for k in range(self.max_step)]

    @property
    def steps(self) -> int:
        """Progress steps of a full run: each ramp step, the shedding step and the read-back."""
        return self.max_step + 2

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_kib * KIB


def load_config(
    quick: bool,
    *,
    p99_limit_ms: float | None = None,
    max_step: int | None = None,
    max_in_flight: int | None = None,
    step_s: float | None = None,
) -> LoadConfig:
    """The run's config: the full or quick one, with what the user gave on top (None: not given).

    Raises:
        ValueError: a given figure out of range.
    """
    cfg = LoadConfig.quick() if quick else LoadConfig()
    given: dict[str, Any] = {
        "p99_limit_ms": p99_limit_ms,
        "max_step": max_step,
        "max_in_flight": max_in_flight,
        "step_s": step_s,
    }
    return replace(cfg, **{k: v for k, v in given.items() if v is not None})


# --------------------------------------------------------------------------------------------------
# The simulated sessions


@dataclass
class Session:
    """One chat: its committed history as the store acknowledged it (what the read-back checks)."""

    sid: str
    holder: str
    seed: int
    tokens: list[int] = field(default_factory=list)
    refs: list[ChunkRef] = field(default_factory=list)
    version: int = 0
    turns: int = 0

    def new_tokens(self, n: int) -> list[int]:
        """The next turn's prompt + answer tokens (the same again when a turn is retried)."""
        rng = random.Random(self.seed * 1_000_003 + len(self.tokens))
        return [rng.randrange(1, 49_152) for _ in range(n)]


class Payloads:
    """Chunk bytes derived from the chunk's key: a window of one random pool (no copy to push,
    recomputable for the read-back, incompressible)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool = memoryview(os.urandom(4 * size + 4096))

    def __call__(self, key: str) -> memoryview:
        offset = int(key[:12], 16) % (len(self._pool) - self.size)
        return self._pool[offset : offset + self.size]


@dataclass
class Recorder:
    """One step's requests: those completed inside [t0, t_end] count toward rates and latencies;
    failures count whenever they happen (a step's last turns may finish after t_end)."""

    t0: float
    t_end: float
    latency: dict[str, list[float]] = field(default_factory=lambda: {"push": [], "pull": [], "meta": []})
    nbytes: Counter[str] = field(default_factory=Counter)
    turns: int = 0
    acknowledged: int = 0
    shed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def inside(self, t: float) -> bool:
        return self.t0 <= t <= self.t_end

    async def timed(self, kind: str, aw: Awaitable[T], nbytes: int = 0) -> T:
        t0 = time.perf_counter()
        result = await aw
        t1 = time.perf_counter()
        if self.inside(t1):
            self.latency[kind].append(t1 - t0)
            self.nbytes[kind] += nbytes
        return result

    def failed(self, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, errors.KVStoreError) and exc.code else type(exc).__name__
        if isinstance(exc, errors.QuotaExceeded):
            code = f"{code} (quota)"  # a full quota is not load shedding
        if code == SHED_CODE:
            self.shed += 1
        else:
            self.errors[code] += 1


def _ms(samples: list[float], q: float) -> float:
    return round(percentile(samples, q) * 1e3, 2) if samples else 0.0


class Load:
    """The sessions of one run and the turns they take."""

    def __init__(self, cfg: LoadConfig, run: str) -> None:
        self.cfg = cfg
        self.run = run
        self.ns = Namespace(fingerprint=f"load-{run}", codec_id="gear2/v1", chunk_size=cfg.chunk_tokens)
        self.payloads = Payloads(cfg.chunk_bytes)
        self.raw_bytes = int(cfg.chunk_bytes * cfg.compression)
        self.pool: list[Session] = []
        self.retired: list[Session] = []
        self._made = 0

    def _new_session(self) -> Session:
        self._made += 1
        n = self._made
        return Session(sid=f"load-{self.run}-{n}", holder=f"load-{self.run}-h{n}", seed=n)

    def sessions(self, n: int) -> list[int]:
        """Indexes into ``pool`` of the first ``n`` sessions (made as needed)."""
        while len(self.pool) < n:
            self.pool.append(self._new_session())
        return list(range(n))

    async def turn(self, client: AsyncKVStoreClient, s: Session, rec: Recorder) -> None:
        """One chat turn; raises what the store raised (the session keeps its last acknowledged state)."""
        cfg, ns = self.cfg, self.ns
        lease_id = uuid.uuid4().hex
        start = await rec.timed(
            "meta",
            client.begin_turn(s.sid, holder=s.holder, lease_id=lease_id, known_version=s.version),
        )
        if start.version != s.version and start.manifest is not None:
            # A commit whose reply was lost went through after all: continue from what the store has.
            m = start.manifest
            s.tokens, s.refs, s.version, s.turns = list(m.token_ids), list(m.chunks), m.version, m.turns
        prompt = s.tokens + s.new_tokens(cfg.chunks_per_turn * cfg.chunk_tokens)
        match = await rec.timed("meta", client.lookup_prefix(ns, prompt, session_id=s.sid))
        wanted = [c for c in match.chunks if c.end <= match.matched_tokens]
        sem = asyncio.Semaphore(cfg.pull_parallel)

        async def pull(ref: ChunkRef) -> None:
            async with sem:
                data = await rec.timed("pull", client.get_chunk(ref.key), ref.stored_bytes)
            if len(data) != ref.stored_bytes:
                raise errors.ChunkCorrupt(
                    f"chunk {ref.key[:16]}: {len(data)} bytes, expected {ref.stored_bytes}"
                )

        failed = [
            r for r in await asyncio.gather(*map(pull, wanted), return_exceptions=True) if r is not None
        ]
        if failed:
            raise failed[0]
        refs = list(s.refs)
        parent = refs[-1].key if refs else ""
        for at in range(len(s.tokens), len(prompt), cfg.chunk_tokens):
            toks = prompt[at : at + cfg.chunk_tokens]
            key = keys.chunk_key(ns, parent, at, toks)
            data = self.payloads(key)
            put = client.put_chunk(
                ns, parent, toks, data, start=at, raw_bytes=self.raw_bytes, ttl_s=cfg.ttl_s
            )
            await rec.timed("push", put, len(data))
            refs.append(ChunkRef(key, at, at + len(toks), len(data), self.raw_bytes))
            parent = key
        manifest = Manifest(s.sid, ns, token_ids=prompt, chunks=refs, turns=s.turns + 1)
        commit = client.commit_turn(
            manifest, s.version, uuid.uuid4().hex, ttl_s=cfg.ttl_s, holder=s.holder, lease_id=lease_id
        )
        version = await rec.timed("meta", commit)
        s.tokens, s.refs, s.version, s.turns = prompt, refs, version, s.turns + 1
        rec.acknowledged += 1
        if rec.inside(time.perf_counter()):
            rec.turns += 1

    async def drive(self, client: AsyncKVStoreClient, index: int, rec: Recorder) -> None:
        """Session ``pool[index]`` takes turns until the step ends; retired sessions are replaced."""
        lo, hi = self.cfg.backoff_ms
        while time.perf_counter() < rec.t_end:
            s = self.pool[index]
            try:
                await self.turn(client, s, rec)
            except Exception as exc:  # counted by status; the turn runs again after a pause
                rec.failed(exc)
                await asyncio.sleep(random.uniform(lo, hi) / 1e3)
                continue
            if s.turns >= self.cfg.max_turns:
                self.retired.append(s)
                self.pool[index] = self._new_session()

    async def step(
        self,
        clients: Sequence[AsyncKVStoreClient],
        sessions: int,
        seconds: float,
        phase: str,
        limit: int | None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        rec = Recorder(t0, t0 + seconds)
        indexes = self.sessions(sessions)
        await asyncio.gather(*(self.drive(clients[i % len(clients)], i, rec) for i in indexes))
        return self.summarize(rec, sessions, seconds, phase, limit)

    def summarize(
        self, rec: Recorder, sessions: int, seconds: float, phase: str, limit: int | None
    ) -> dict[str, Any]:
        push, pull = rec.latency["push"], rec.latency["pull"]
        admitted = [x for kind in rec.latency.values() for x in kind]
        p99 = _ms(admitted, 99)
        return {
            "phase": phase,
            "sessions": sessions,
            "max_in_flight": limit,
            "seconds": round(seconds, 2),
            "turns_per_s": round(rec.turns / seconds, 2),
            "pushes_per_s": round(len(push) / seconds, 1),
            "pulls_per_s": round(len(pull) / seconds, 1),
            "push_mb_s": round(rec.nbytes["push"] / MIB / seconds, 1),
            "pull_mb_s": round(rec.nbytes["pull"] / MIB / seconds, 1),
            "push_p50_ms": _ms(push, 50),
            "push_p99_ms": _ms(push, 99),
            "pull_p50_ms": _ms(pull, 50),
            "pull_p99_ms": _ms(pull, 99),
            "meta_p99_ms": _ms(rec.latency["meta"], 99),
            "p99_ms": p99,
            "admitted": len(admitted),
            "acknowledged_turns": rec.acknowledged,
            "shed": rec.shed,
            "errors": dict(sorted(rec.errors.items())),
            "over_limit": p99 > self.cfg.p99_limit_ms,
        }

    async def verify(self, client: AsyncKVStoreClient, parallel: int = 8) -> dict[str, int]:
        """Read back every session's last acknowledged commit and every chunk it names."""
        sem = asyncio.Semaphore(parallel)
        tally: Counter[str] = Counter()

        async def chunk(ref: ChunkRef) -> None:
            async with sem:
                try:
                    data = await client.get_chunk(ref.key)
                except errors.ChunkNotFound:
                    tally["lost_chunks"] += 1
                    return
                except errors.DataCorrupt:
                    tally["corrupt_reads"] += 1
                    return
            tally["chunks"] += 1
            if data != self.payloads(ref.key):
                tally["corrupt_reads"] += 1

        async def session(s: Session) -> None:
            async with sem:
                try:
                    m = await client.get_session(s.sid)
                except errors.SessionNotFound:
                    tally["lost_turns"] += 1
                    return
                except errors.DataCorrupt:
                    tally["corrupt_reads"] += 1
                    return
            tally["sessions"] += 1
            same = m.version == s.version and list(m.token_ids) == s.tokens
            if not same or [c.key for c in m.chunks] != [r.key for r in s.refs]:
                tally["lost_turns"] += 1  # the acknowledged turn is not what the store has
            await asyncio.gather(*(chunk(r) for r in s.refs))

        await asyncio.gather(*(session(s) for s in self.pool + self.retired if s.version > 0))
        return {k: tally[k] for k in ("sessions", "chunks", "lost_turns", "lost_chunks", "corrupt_reads")}


# --------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class StoreHandle:
    """A running store: where it listens, the bench tenant's token and the end of its log."""

    address: str
    token: str
    log_tail: Callable[[], str] = lambda: ""


@contextlib.contextmanager
def local_store(redis_url: str, mode: str, max_in_flight: int | None) -> Iterator[StoreHandle]:
    """The store on a free loopback port, as a child process or in this process, with this limit."""
    if mode == "thread":  # LocalStore passes no options to an in-process store: configure it here
        from gearkv.store.auth import hash_token
        from gearkv.store.config import StoreConfig, TenantConfig
        from gearkv.store.local import serve_in_thread

        token = f"gkv-{TENANT}-{secrets.token_urlsafe(18)}"
        tenants = (TenantConfig(TENANT, hash_token(token)),)
        cfg = StoreConfig(redis_url=redis_url, host="127.0.0.1", port=0, tenants=tenants, grace_s=1.0)
        if max_in_flight is not None:
            cfg = replace(cfg, max_in_flight=max_in_flight)
        threaded = serve_in_thread(cfg)
        try:
            yield StoreHandle(threaded.address, token)
        finally:
            threaded.stop()
        return
    extra = ["--max-in-flight", str(max_in_flight)] if max_in_flight is not None else []
    with LocalStore(redis_url, TENANT, extra_args=extra) as store:
        try:
            yield StoreHandle(store.address, store.token, store.log_tail)
        except BaseException:
            print(store.log_tail(), file=sys.stderr)
            raise


def _client(store: StoreHandle, cfg: LoadConfig, retry: RetryPolicy) -> AsyncKVStoreClient:
    return AsyncKVStoreClient(store.address, token=store.token, timeout=cfg.timeout_s, retry=retry)


async def _with_clients(
    store: StoreHandle, cfg: LoadConfig, fn: Callable[[list[AsyncKVStoreClient]], Awaitable[T]]
) -> T:
    clients = [_client(store, cfg, RetryPolicy.none()) for _ in range(cfg.clients)]
    try:
        for c in clients:
            await c.ping()
        return await fn(clients)
    finally:
        for c in clients:
            await c.close()


def sustained(steps: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The ramp step with the most chunks moved per second while under the limit and error-free."""
    good = [s for s in steps if s["phase"] == "ramp" and not s["over_limit"] and not s["errors"]]
    if not good:
        return None
    best = max(good, key=lambda s: s["pushes_per_s"] + s["pulls_per_s"])
    keep = ("sessions", "pushes_per_s", "pulls_per_s", "push_mb_s", "pull_mb_s", "p99_ms")
    return {k: best[k] for k in keep}


async def _run(
    cfg: LoadConfig, redis_url: str, store_mode: str, tick: Tick
) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    """The ramp, then the shedding step on a second store, then the read-back through the first."""
    load = Load(cfg, secrets.token_hex(4))
    steps: list[dict[str, Any]] = []
    with local_store(redis_url, store_mode, cfg.max_in_flight) as store:

        async def ramp(clients: list[AsyncKVStoreClient]) -> str:
            for n in cfg.levels:
                step = await load.step(clients, n, cfg.step_s, "ramp", cfg.max_in_flight)
                steps.append(step)
                tick(f"{n} sessions: p99 {step['p99_ms']:.0f} ms, {step['shed']} shed")
                if step["errors"]:
                    return "errors"
                if step["over_limit"]:
                    return "p99"
            return "max_step"

        stopped_by = await _with_clients(store, cfg, ramp)
        with local_store(redis_url, store_mode, cfg.shed_max_in_flight) as tiny:

            async def shed(clients: list[AsyncKVStoreClient]) -> dict[str, Any]:
                n, limit = cfg.shed_sessions, cfg.shed_max_in_flight
                return await load.step(clients, n, cfg.shed_step_s, "shed", limit)

            steps.append(await _with_clients(tiny, cfg, shed))
        tick(f"shedding: {steps[-1]['shed']} shed, admitted p99 {steps[-1]['p99_ms']:.0f} ms")
        # The read-back must not fail for being shed: retried, with a few reads in flight.
        async with _client(store, cfg, RetryPolicy(attempts=20)) as client:
            verified = await load.verify(client)
        tick(f"read back {verified['sessions']} sessions, {verified['chunks']} chunks")
    return steps, stopped_by, verified


def run_load(
    *,
    quick: bool,
    redis_url: str | None = None,
    progress_tick: Tick | None = None,
    store_mode: str = "process",
    p99_limit_ms: float | None = None,
    max_step: int | None = None,
    max_in_flight: int | None = None,
    config: LoadConfig | None = None,
) -> dict[str, Any]:
    """Run the ramp, the shedding step and the read-back; the JSON document (see the module docstring).

    Starts its own redis-server unless ``redis_url`` is given, and its own stores. Synchronous (it runs
    an event loop of its own). ``config`` replaces the quick/full profile and the three figures after
    ``store_mode``.

    Raises:
        ValueError: a figure out of range, or ``store_mode`` not "process" or "thread".
    """
    if store_mode not in ("process", "thread"):
        raise ValueError(f"store_mode must be 'process' or 'thread', got {store_mode!r}")
    cfg = config or load_config(
        quick, p99_limit_ms=p99_limit_ms, max_step=max_step, max_in_flight=max_in_flight
    )
    tick = progress_tick or (lambda _: None)
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = redis_url or stack.enter_context(LocalRedis()).url
        steps, stopped_by, verified = asyncio.run(_run(cfg, url, store_mode, tick))
    ramp_steps = [s for s in steps if s["phase"] == "ramp"]
    shed_step = steps[-1]
    return {
        "steps": steps,
        "shedding_begins_at_sessions": next((s["sessions"] for s in ramp_steps if s["shed"]), None),
        "sustained": sustained(ramp_steps),
        "shedding": {
            "sessions": shed_step["sessions"],
            "max_in_flight": cfg.shed_max_in_flight,
            "shed": shed_step["shed"],
            "admitted": shed_step["admitted"],
            "p99_ms": shed_step["p99_ms"],
            "p99_limit_ms": cfg.p99_limit_ms,
            "bounded": shed_step["shed"] > 0 and shed_step["admitted"] > 0 and not shed_step["over_limit"],
        },
        "stopped_by": stopped_by,
        "p99_limit_ms": cfg.p99_limit_ms,
        "acknowledged_turns": sum(s["acknowledged_turns"] for s in steps),
        "lost": verified["lost_turns"] + verified["lost_chunks"],
        "corrupt_reads": verified["corrupt_reads"],
        "verified": verified,
        "seconds": round(time.perf_counter() - t_start, 1),
        "config": {
            **asdict(cfg),
            "store_mode": store_mode,
            "redis": "given" if redis_url else "own redis-server",
            "cpus": os.cpu_count(),
        },
    }


# --------------------------------------------------------------------------------------------------
# Output


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    limit = result["p99_limit_ms"]
    table = Table(title=f"Load ramp: sessions x turns (ms: admitted requests; p99 limit {limit:g} ms)")
    cols = ["step", "sessions", "turns/s", "pushes/s", "pulls/s", "MB/s up/down", "push p50/p99"]
    cols += ["pull p50/p99", "p99 ms", "shed", "errors"]
    for col in cols:
        table.add_column(col, justify="right")
    for s in result["steps"]:
        errs = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "-"
        cap = s["max_in_flight"]
        table.add_row(
            s["phase"] + (f" cap {cap}" if cap else ""),
            str(s["sessions"]),
            f"{s['turns_per_s']:.0f}",
            f"{s['pushes_per_s']:.0f}",
            f"{s['pulls_per_s']:.0f}",
            f"{s['push_mb_s']:.0f} / {s['pull_mb_s']:.0f}",
            f"{s['push_p50_ms']:.0f} / {s['push_p99_ms']:.0f}",
            f"{s['pull_p50_ms']:.0f} / {s['pull_p99_ms']:.0f}",
            f"{s['p99_ms']:.0f}" + (" over" if s["over_limit"] else ""),
            str(s["shed"]),
            errs,
        )
    console.print(table)
    sus = result["sustained"]
    if sus:
        console.print(
            f"sustained (best step under the limit, {sus['sessions']} sessions): {sus['pushes_per_s']:.1f} "
            f"pushes/s, {sus['pulls_per_s']:.1f} pulls/s, p99 {sus['p99_ms']:.0f} ms"
        )
    else:
        console.print("sustained: no step stayed under the limit without errors")
    begins = result["shedding_begins_at_sessions"]
    console.print(
        f"ramp stopped by: {result['stopped_by']}; shedding begins at "
        + (f"{begins} sessions" if begins else "no ramp step (store limit not reached)")
    )
    sh = result["shedding"]
    console.print(
        f"tiny store limit ({sh['max_in_flight']} in flight, {sh['sessions']} sessions): {sh['shed']} shed, "
        f"{sh['admitted']} admitted with p99 {sh['p99_ms']:.0f} ms vs limit {sh['p99_limit_ms']:g} ms: "
        + ("bounded" if sh["bounded"] else "NOT bounded")
    )
    v = result["verified"]
    console.print(
        f"read-back: {result['acknowledged_turns']} acknowledged turns, {v['sessions']} sessions, "
        f"{v['chunks']} chunks: lost {result['lost']}, corrupt reads {result['corrupt_reads']} "
        f"({result['seconds']:.0f} s in all)"
    )


def main(argv: Sequence[str], prog: str = "gearkv bench load") -> int:
    from gearkv.cli import HelpFormatter

    full, quick = LoadConfig(), LoadConfig.quick()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small, fast run (smoke test): {quick.max_step} steps of {quick.step_s:g} s, "
        f"{quick.chunk_kib} KiB chunks",
    )
    parser.add_argument(
        "--store-mode",
        choices=("process", "thread"),
        default="process",
        help="run the store as a child process (own GIL) or in this process",
    )
    parser.add_argument(
        "--p99-limit-ms",
        type=float,
        help=f"stop the ramp once the p99 of admitted requests passes this (default: {full.p99_limit_ms:g})",
    )
    parser.add_argument(
        "--max-step",
        type=int,
        help=f"at most this many ramp steps, sessions doubling each (default: {full.max_step}, "
        f"with --quick {quick.max_step})",
    )
    parser.add_argument(
        "--step-s",
        type=float,
        help=f"seconds per step (default: {full.step_s:g}, with --quick {quick.step_s:g})",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        help="the ramp store's --max-in-flight (default: the store's own), low to see shedding in the ramp",
    )
    args = parser.parse_args(list(argv))
    try:
        cfg = load_config(
            args.quick,
            p99_limit_ms=args.p99_limit_ms,
            max_step=args.max_step,
            max_in_flight=args.max_in_flight,
            step_s=args.step_s,
        )
    except ValueError as exc:
        parser.error(str(exc))
    with progress(cfg.steps) as tick:
        result = run_load(
            quick=args.quick,
            redis_url=args.redis_url,
            progress_tick=tick,
            store_mode=args.store_mode,
            config=cfg,
        )
    render(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
