"""`gearkv bench faults`: every fault scenario against real processes on loopback, one report.

Each scenario starts its own processes (``redis-server`` with the append-only file synced every second,
or a 3-master / 3-replica Redis Cluster, and two ``gearkv store`` processes on it), drives an asyncio
load of sessions x turns through ``AsyncKVStoreClient`` with realistic chunk sizes (a 32-token chunk of
a small model's KV cache compressed 4x is ~192 KiB; of an 8B model's, ~1 MiB), injects its fault,
repairs it, and then reads every acknowledged turn back (``get_session`` and ``get_chunk`` of every
chunk of its manifest, bit-exact against the payload written) or reports it missing.

Columns of a row:

- ``attempted`` / ``acknowledged``: turns (chunk pushes + the commit) started / committed with an answer.
- ``errors_by_status``: every failed RPC of the load, by gRPC status name (client-side retries count).
- ``outage_s``: the longest time without any acknowledged turn, from the fault to the end of the run.
- ``lost``: acknowledged turns whose session no longer holds them (the manifest is gone, or older).
- ``corrupt_reads``: reads that returned bytes other than those written (a partial or wrong chunk
  served). DATA_LOSS answers are detected corruption, not served, and are counted in ``data_loss``.
- ``dangling_manifests``: manifests naming a chunk that is no longer stored.
- ``recovery_s``: from the repair (restart, resume, memory raised; the kill itself for a failover) until
  every session has an acknowledged turn again.
- ``crashes``: store processes that exited without being killed by the scenario.

The gate (exit 1 when it fails): corrupt reads and crashes are 0 everywhere; turns lost are 0 where the
fault loses nothing by design (process kills with the append-only file, cancellations, a slow Redis,
noeviction, the noisy neighbour); the noisy neighbour costs the victim at most 2x its p99 alone (or
100 ms on this 2-core machine); a commit retried with its ``commit_id`` never applies twice; through
workers, no turn is answered but not kept, and none is answered on a stale history. Turns lost in a
failover (Redis replicates asynchronously), an empty restart and LRU eviction are reported, not gated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import itertools
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from gearkv.client import AsyncKVStoreClient, KVStoreClient, Namespace, RetryPolicy, keys
from gearkv.client._models import ChatMessage, ChunkRef, Manifest
from gearkv.client.errors import (
    ChunkCorrupt,
    ChunkNotFound,
    DataCorrupt,
    KVStoreError,
    KVStoreTimeout,
    KVStoreUnavailable,
    PreconditionFailed,
    QuotaExceeded,
    SessionNotFound,
)
from gearkv.store.local import LocalRedis, LocalRedisCluster, LocalStore

from .progress import progress

TENANT = "faults"
KIB = 1024
MIB = 1024 * KIB
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
REDIS_DOWN_S = 4.0  # longer than the store's Redis retry budget (3 s): clients see UNAVAILABLE
T = TypeVar("T")


@dataclass(frozen=True)
class Size:
    """How big one scenario's load is; ``quick()`` is the reduced size, ``tiny()`` the tests' size."""

    sessions: int = 12
    tokens_per_turn: int = 64  # a multiple of chunk_tokens: every turn adds whole chunks
    chunk_tokens: int = 32
    chunk_bytes: int = 1 * MIB
    max_turns: int = 2000  # per session; the scenarios stop the load long before
    warm_acks: int = 40  # acknowledged turns before the fault
    after_acks: int = 40  # acknowledged turns after recovery before the load stops
    turn_budget_s: float = 20.0  # a turn gives up (and resyncs) after this long
    memory_mb: int = 256  # maxmemory of the memory scenarios
    cancels: int = 40  # uploads cancelled mid-stream
    noisy_turns: int = 12  # the victim's turns per session, alone and then with the neighbour
    worker_turns: int = 3  # turns per worker in the two-worker race

    @classmethod
    def quick(cls) -> Size:
        return cls(
            sessions=8,
            chunk_bytes=192 * KIB,
            warm_acks=48,
            after_acks=48,
            turn_budget_s=15.0,
            memory_mb=32,
            cancels=16,
            noisy_turns=10,
            worker_turns=3,
        )

    @classmethod
    def tiny(cls) -> Size:
        return replace(
            cls.quick(), sessions=2, chunk_bytes=32 * KIB, warm_acks=6, after_acks=6, cancels=4, memory_mb=8
        )


# --------------------------------------------------------------------------------------------------
# Pure helpers


def payload(key: str, size: int) -> bytes:
    """The bytes written for a chunk: a function of its key, so any read can be checked bit-exactly."""
    return hashlib.shake_256(key.encode()).digest(size)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def status_of(err: BaseException) -> str:
    """The gRPC status name of a failed call (the exception's class where there is none)."""
    if isinstance(err, KVStoreError) and err.code:
        return err.code
    code = getattr(err, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return str(code().name)
    return type(err).__name__


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def turn_tokens(run: str, sid: str, epoch: int, n: int, count: int) -> list[int]:
    rng = random.Random(f"{run}/{sid}/{epoch}/{n}")
    return [rng.randrange(1, 49_000) for _ in range(count)]


# --------------------------------------------------------------------------------------------------
# The load driver and the verifier


@dataclass(frozen=True)
class Ack:
    """One acknowledged turn: the session's version and history, and its chunks' payload digests."""

    session: str
    version: int
    tokens: tuple[int, ...]
    chunks: tuple[tuple[str, str], ...]  # (key, digest of the payload written)
    at: float


class GaveUp(Exception):
    """A turn ran out of its budget (or the load was stopped) while retrying."""


class Load:
    """Sessions x turns through ``AsyncKVStoreClient``, spread over ``addresses``; every acknowledged
    commit is recorded. Each turn pushes its new chunks and commits the session's manifest with a
    fixed ``commit_id`` (a retry after an unknown outcome replays); failed RPCs are retried within
    the turn's budget and counted by status; a turn that gives up re-reads the session and goes on."""

    def __init__(
        self,
        addresses: Sequence[str],
        token: str,
        size: Size,
        *,
        prefix: str = "s",
        timeout: float = 5.0,
        sessions: int | None = None,
        max_turns: int | None = None,
    ) -> None:
        self.addresses = list(addresses)
        self.token = token
        self.size = size
        self.run_id = secrets.token_hex(4)
        self.ns = Namespace(
            fingerprint=f"faults-{self.run_id}", codec_id="gear4/v1", chunk_size=size.chunk_tokens
        )
        self.prefix = prefix
        self.timeout = timeout
        self.n_sessions = sessions if sessions is not None else size.sessions
        self.max_turns = max_turns if max_turns is not None else size.max_turns
        self.acks: list[Ack] = []
        self.errors: Counter[str] = Counter()
        self.attempted = 0
        self.retried_commits = 0
        self.latencies: list[float] = []
        self.active: set[str] = set()
        self.stop = asyncio.Event()
        self.before_commit: Callable[[str], Awaitable[None]] | None = None
        self.started_at = self.ended_at = 0.0
        self._task: asyncio.Task[None] | None = None

    # ---- running --------------------------------------------------------------------------------

    def start(self) -> Load:
        self.started_at = time.monotonic()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def finish(self) -> None:
        """Stop starting turns and wait for the sessions to end (a turn in flight gives up)."""
        self.stop.set()
        if self._task is not None:
            await self._task
        self.ended_at = time.monotonic()

    async def run_to_end(self) -> None:
        """Run every session's ``max_turns`` turns (no stop)."""
        self.start()
        assert self._task is not None
        await self._task
        self.ended_at = time.monotonic()

    async def _run(self) -> None:
        clients = [
            AsyncKVStoreClient(a, token=self.token, timeout=self.timeout, retry=RetryPolicy.none())
            for a in self.addresses
        ]
        try:
            await asyncio.gather(
                *(self._session(i, clients[i % len(clients)]) for i in range(self.n_sessions))
            )
        finally:
            for c in clients:
                await c.close()

    async def _rpc(
        self, fn: Callable[[], Awaitable[T]], deadline: float, failures: list[int] | None = None
    ) -> T:
        delay = 0.05
        while True:
            t0 = time.perf_counter()
            try:
                result = await fn()
            except KVStoreError as err:
                self.errors[status_of(err)] += 1
                if failures is not None:
                    failures[0] += 1
                if not isinstance(err, (KVStoreUnavailable, KVStoreTimeout, QuotaExceeded)):
                    raise
                if self.stop.is_set() or time.monotonic() + delay > deadline:
                    raise GaveUp(status_of(err)) from err
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
                continue
            self.latencies.append(time.perf_counter() - t0)
            return result

    async def _push(
        self, client: AsyncKVStoreClient, spans: Sequence[keys.ChunkSpan], full: list[int], deadline: float
    ) -> None:
        size = self.size.chunk_bytes
        for span in spans:
            data = payload(span.key, size)
            tokens = full[span.start : span.end]

            async def put(
                span: keys.ChunkSpan = span, data: bytes = data, tokens: list[int] = tokens
            ) -> object:
                return await client.put_chunk(
                    self.ns, span.parent_key, tokens, data, start=span.start, raw_bytes=4 * len(data)
                )

            await self._rpc(put, deadline)

    async def _session(self, i: int, client: AsyncKVStoreClient) -> None:
        sid = f"{self.prefix}{i}"
        self.active.add(sid)
        history: list[int] = []
        version = epoch = n = acked = 0
        full_push = False
        size = self.size
        try:
            while not self.stop.is_set() and acked < self.max_turns:
                n += 1
                full = history + turn_tokens(self.run_id, sid, epoch, n, size.tokens_per_turn)
                spans = keys.chain(self.ns, full)
                self.attempted += 1
                deadline = time.monotonic() + size.turn_budget_s
                try:
                    await self._push(
                        client,
                        spans if full_push else [s for s in spans if s.start >= len(history)],
                        full,
                        deadline,
                    )
                    refs = [
                        ChunkRef(s.key, s.start, s.end, size.chunk_bytes, 4 * size.chunk_bytes) for s in spans
                    ]
                    manifest = Manifest(
                        sid,
                        self.ns,
                        token_ids=full,
                        chunks=refs,
                        messages=[ChatMessage("user", f"turn {n}")],
                        turns=n,
                    )
                    if self.before_commit is not None:
                        await self.before_commit(sid)
                    commit_id = f"{sid}-{epoch}-{n}"

                    def commit(
                        m: Manifest = manifest, v: int = version, c: str = commit_id
                    ) -> Awaitable[int]:
                        return client.commit_turn(m, v, c)

                    failures = [0]
                    try:
                        new_version = await self._rpc(commit, deadline, failures)
                    except (
                        PreconditionFailed
                    ):  # a chunk went missing (evicted, wiped): push all, commit again
                        await self._push(client, spans, full, deadline)
                        new_version = await self._rpc(commit, deadline, failures)
                    self.retried_commits += failures[0] > 0
                except (GaveUp, KVStoreError):
                    if self.stop.is_set():
                        return
                    history, version, epoch = await self._resync(client, sid, history, version, epoch)
                    full_push = True
                    continue
                acked += 1
                chunks = tuple((s.key, digest(payload(s.key, size.chunk_bytes))) for s in spans)
                self.acks.append(Ack(sid, new_version, tuple(full), chunks, time.monotonic()))
                history, version, full_push = full, new_version, False
        finally:
            self.active.discard(sid)

    async def _resync(
        self, client: AsyncKVStoreClient, sid: str, history: list[int], version: int, epoch: int
    ) -> tuple[list[int], int, int]:
        """The session as the store has it now (a new epoch of tokens when it is gone)."""
        while not self.stop.is_set():
            try:
                m = await client.get_session(sid, timeout=self.timeout)
            except SessionNotFound:
                return [], 0, epoch + 1
            except DataCorrupt as err:
                self.errors[status_of(err)] += 1
                return history, version, epoch + 1
            except KVStoreError as err:
                self.errors[status_of(err)] += 1
                await asyncio.sleep(0.1 + 0.1 * random.random())
                continue
            return list(m.token_ids), m.version, epoch
        return history, version, epoch

    # ---- waiting and figures --------------------------------------------------------------------

    async def wait_acks(self, count: int, timeout: float, since: float = 0.0) -> bool:
        """Wait until ``count`` turns were acknowledged at or after ``since``; False on timeout."""
        deadline = time.monotonic() + timeout
        while sum(a.at >= since for a in self.acks) < count:
            if time.monotonic() > deadline or (self._task is not None and self._task.done()):
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait_recovered(self, since: float, timeout: float) -> float | None:
        """Wait until every live session has a turn acknowledged after ``since``; the seconds it took."""
        deadline = time.monotonic() + timeout
        while True:
            firsts: dict[str, float] = {}
            for a in self.acks:
                if a.at >= since and a.session not in firsts:
                    firsts[a.session] = a.at
            if self.active and all(s in firsts for s in self.active):
                return max(firsts[s] for s in self.active) - since
            if time.monotonic() > deadline or not self.active:
                return None
            await asyncio.sleep(0.05)

    def outage(self, since: float) -> float:
        """The longest time without an acknowledged turn between ``since`` and the end of the run."""
        end = self.ended_at or time.monotonic()
        points = [since, *sorted(a.at for a in self.acks if a.at >= since), end]
        return max(b - a for a, b in itertools.pairwise(points))


@dataclass
class Verified:
    lost: int = 0
    corrupt_reads: int = 0
    dangling_manifests: int = 0
    data_loss: int = 0
    unreadable_sessions: int = 0
    chunks_read: int = 0


async def verify(address: str, token: str, load: Load, timeout: float = 30.0) -> Verified:
    """Read every acknowledged turn back: its session's manifest must still hold it, and every chunk of
    that manifest must read back bit-exact (a missing one makes the manifest dangling)."""
    out = Verified()
    by_session: dict[str, list[Ack]] = {}
    for ack in load.acks:
        by_session.setdefault(ack.session, []).append(ack)
    retry = RetryPolicy(attempts=8)
    async with AsyncKVStoreClient(address, token=token, timeout=10.0, retry=retry) as client:
        for sid, acks in by_session.items():
            manifest: Manifest | None = None
            deadline = time.monotonic() + timeout
            while True:
                try:
                    manifest = await client.get_session(sid)
                except SessionNotFound:
                    break
                except DataCorrupt:
                    out.data_loss += 1
                    break
                except KVStoreError:
                    if time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                        continue
                    out.unreadable_sessions += 1
                break
            for ack in acks:
                kept = manifest is not None and tuple(manifest.token_ids[: len(ack.tokens)]) == ack.tokens
                out.lost += not kept
            if manifest is None:
                continue
            written = {k: d for ack in acks for k, d in ack.chunks}
            missing = 0
            for ref in manifest.chunks:
                try:
                    data = await client.get_chunk(ref.key)
                except ChunkNotFound:
                    missing += 1
                    continue
                except ChunkCorrupt:
                    out.data_loss += 1
                    continue
                out.chunks_read += 1
                want = written.get(ref.key) or digest(payload(ref.key, load.size.chunk_bytes))
                out.corrupt_reads += digest(data) != want
            out.dangling_manifests += missing > 0
    return out


# --------------------------------------------------------------------------------------------------
# Rows


def row(
    name: str,
    load: Load | None,
    checked: Verified | None,
    *,
    fault_at: float | None = None,
    recovery_s: float | None = None,
    crashes: int = 0,
    note: str = "",
    lossless: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One table row; ``lossless`` rows gate on ``lost == 0``."""
    result: dict[str, Any] = {
        "name": name,
        "attempted": load.attempted if load else 0,
        "acknowledged": len(load.acks) if load else 0,
        "errors_by_status": dict(sorted(load.errors.items())) if load else {},
        "outage_s": round(load.outage(fault_at), 2) if load and fault_at is not None else None,
        "lost": checked.lost if checked else 0,
        "corrupt_reads": checked.corrupt_reads if checked else 0,
        "dangling_manifests": checked.dangling_manifests if checked else 0,
        "recovery_s": round(recovery_s, 2) if recovery_s is not None else None,
        "crashes": crashes,
        "data_loss_detected": checked.data_loss if checked else 0,
        "unreadable_sessions": checked.unreadable_sessions if checked else 0,
        "retried_commits": load.retried_commits if load else 0,
        "lossless": lossless,
        "note": note,
    }
    result.update(extra)
    return result


def not_run(name: str, reason: str) -> dict[str, Any]:
    out = row(name, None, None, note=f"not run: {reason}")
    out["ran"] = False
    return out


# A noisy neighbour may cost the victim this much of its p99 alone (and always this many ms: 2 cores).
VICTIM_P99_FACTOR = 2.0
VICTIM_P99_SLACK_MS = 100.0


def row_failures(r: dict[str, Any]) -> list[str]:
    """Why a row fails the gate (empty: it passes)."""
    why = []
    if r.get("corrupt_reads"):
        why.append("corrupt reads served")
    if r.get("crashes"):
        why.append("a store crashed")
    if r.get("lossless") and r.get("lost"):
        why.append("acknowledged turns lost")
    if r.get("double_applied"):
        why.append("a retried commit applied twice")
    if r.get("answered_not_kept"):
        why.append("turns answered but not kept")
    if r.get("stale_history"):
        why.append("turns answered on a stale history")
    p99, alone = r.get("victim_p99_ms"), r.get("victim_p99_alone_ms")
    if p99 is not None and alone and p99 > max(VICTIM_P99_FACTOR * alone, alone + VICTIM_P99_SLACK_MS):
        why.append(f"the victim's p99 was {p99 / alone:.1f}x its p99 alone")
    return why


def crashed(stores: Sequence[LocalStore]) -> int:
    return sum(1 for s in stores if s.proc is not None and s.proc.poll() is not None)


# --------------------------------------------------------------------------------------------------
# Environments


@contextlib.contextmanager
def standalone(
    redis_args: Sequence[str] = AOF, store_args: Sequence[str] = (), stores: int = 2, **store_kw: Any
) -> Iterator[tuple[LocalRedis, list[LocalStore]]]:
    """redis-server (append-only file by default) and ``stores`` store processes sharing one token."""
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(LocalRedis(extra_args=redis_args))
        first = stack.enter_context(LocalStore(redis.url, TENANT, extra_args=store_args, **store_kw))
        procs = [first]
        for _ in range(stores - 1):
            procs.append(
                stack.enter_context(
                    LocalStore(
                        redis.url, TENANT, tokens=first.tokens, tenants=first.tenants, extra_args=store_args
                    )
                )
            )
        yield redis, procs


@contextlib.contextmanager
def clustered(store_args: Sequence[str] = ()) -> Iterator[tuple[LocalRedisCluster, list[LocalStore]]]:
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalRedisCluster(node_timeout_ms=1000))
        args = ("--redis-retry-budget", "8", "--redis-timeout", "1", *store_args)
        first = stack.enter_context(LocalStore(cluster.url, TENANT, extra_args=args))
        second = stack.enter_context(LocalStore(cluster.url, TENANT, tokens=first.tokens, extra_args=args))
        yield cluster, [first, second]


def addresses(stores: Sequence[LocalStore]) -> list[str]:
    return [s.address for s in stores]


def _redis_cmd(redis: LocalRedis, *args: Any) -> Any:
    with redis.client(socket_timeout=5) as cli:
        return cli.execute_command(*args)


# --------------------------------------------------------------------------------------------------
# Scenarios: Redis processes


def redis_killed_aof(size: Size) -> dict[str, Any]:
    """Redis SIGKILLed mid-push and restarted on the same port from its append-only file."""

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        await load.wait_acks(size.warm_acks, 60)
        fault = time.monotonic()
        await asyncio.to_thread(redis.stop, kill=True)
        await asyncio.sleep(REDIS_DOWN_S)
        await asyncio.to_thread(redis.start)
        repaired = time.monotonic()
        recovery = await load.wait_recovered(repaired, 60)
        await load.wait_acks(size.after_acks, 60, since=repaired)
        await load.finish()
        checked = await verify(stores[0].address, stores[0].token, load)
        return row(
            "redis killed mid-push, AOF everysec",
            load,
            checked,
            fault_at=fault,
            recovery_s=recovery,
            crashes=crashed(stores),
            lossless=True,
            note=f"SIGKILL, restarted from the append-only file after {REDIS_DOWN_S:.0f} s (budget 3 s)",
        )

    with standalone() as (redis, stores):
        return asyncio.run(go(redis, stores))


def redis_restarted_empty(size: Size) -> dict[str, Any]:
    """Redis SIGKILLed and restarted with its data deleted: every turn before it is lost (reported)."""

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        await load.wait_acks(size.warm_acks, 60)
        before = len(load.acks)
        fault = time.monotonic()
        await asyncio.to_thread(redis.stop, kill=True)
        assert redis.dir is not None
        for entry in redis.dir.iterdir():
            if entry.name != "redis.log":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis.start)
        repaired = time.monotonic()
        recovery = await load.wait_recovered(repaired, 60)
        await load.wait_acks(size.after_acks, 60, since=repaired)
        await load.finish()
        checked = await verify(stores[0].address, stores[0].token, load)
        note = (
            f"data deleted: the {before} turns acknowledged before it are expected lost (reported, not gated)"
        )
        return row(
            "redis restarted empty",
            load,
            checked,
            fault_at=fault,
            recovery_s=recovery,
            crashes=crashed(stores),
            note=note,
            acknowledged_before_fault=before,
        )

    with standalone() as (redis, stores):
        return asyncio.run(go(redis, stores))


def maxmemory_noeviction(size: Size) -> dict[str, Any]:
    """Redis fills up under noeviction: writes are refused loudly, nothing acknowledged is lost."""
    args = (*AOF, "--maxmemory", f"{size.memory_mb}mb", "--maxmemory-policy", "noeviction")

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        fault = time.monotonic()
        deadline = time.monotonic() + 120
        while load.errors["RESOURCE_EXHAUSTED"] < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        full = load.errors["RESOURCE_EXHAUSTED"] >= 10
        await asyncio.sleep(1.0)  # refused for a while
        await asyncio.to_thread(_redis_cmd, redis, "CONFIG", "SET", "maxmemory", "0")
        repaired = time.monotonic()
        recovery = await load.wait_recovered(repaired, 60)
        await load.wait_acks(size.after_acks, 60, since=repaired)
        await load.finish()
        checked = await verify(stores[0].address, stores[0].token, load)
        note = f"maxmemory {size.memory_mb} MB reached ({'yes' if full else 'NO'}), then raised to unlimited"
        return row(
            "maxmemory, noeviction",
            load,
            checked,
            fault_at=fault,
            recovery_s=recovery,
            crashes=crashed(stores),
            lossless=True,
            note=note,
        )

    with standalone(args) as (redis, stores):
        return asyncio.run(go(redis, stores))


def maxmemory_lru(size: Size) -> dict[str, Any]:
    """Redis full under allkeys-lru: writes go on, old keys vanish; lost and dangling are reported."""
    args = ("--maxmemory", f"{size.memory_mb}mb", "--maxmemory-policy", "allkeys-lru")

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        fault = time.monotonic()
        capacity_turns = size.memory_mb * MIB // (2 * size.chunk_bytes)
        await load.wait_acks(2 * capacity_turns, 180)
        await load.finish()
        info = await asyncio.to_thread(_redis_cmd, redis, "INFO", "stats")
        evicted = info.get("evicted_keys", "?") if isinstance(info, dict) else "?"
        checked = await verify(stores[0].address, stores[0].token, load)
        note = f"{evicted} keys evicted; lost and dangling are expected (reported, not gated)"
        return row(
            "maxmemory, allkeys-lru",
            load,
            checked,
            fault_at=fault,
            crashes=crashed(stores),
            note=note,
            evicted_keys=evicted,
        )

    with standalone(args) as (redis, stores):
        return asyncio.run(go(redis, stores))


def slow_redis(size: Size) -> dict[str, Any]:
    """Redis stopped (SIGSTOP) past the store's budget: writes time out with their outcome unknown;
    a commit retried with the same commit_id replays its version instead of applying twice."""
    store_args = ("--redis-timeout", "0.25", "--redis-retry-budget", "0.5")
    stall_s = 2.0

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        assert redis.pid is not None
        pid = redis.pid
        probe = AsyncKVStoreClient(
            stores[0].address, token=stores[0].token, timeout=5, retry=RetryPolicy.none()
        )
        load = Load(addresses(stores), stores[0].token, size)
        ns = load.ns
        tokens = turn_tokens("probe", "probe", 0, 1, size.tokens_per_turn)
        spans = keys.chain(ns, tokens)
        for s in spans:
            data = payload(s.key, 4 * KIB)
            await probe.put_chunk(
                ns, s.parent_key, tokens[s.start : s.end], data, start=s.start, raw_bytes=len(data)
            )
        refs = [ChunkRef(s.key, s.start, s.end, 4 * KIB, 16 * KIB) for s in spans]
        m1 = Manifest("probe", ns, token_ids=tokens, chunks=refs, turns=1)
        await probe.commit_turn(m1, 0, "probe-1")
        m2 = replace(m1, messages=(ChatMessage("user", "second"),), turns=2)
        load.start()
        await load.wait_acks(size.warm_acks, 60)
        fault = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        unknown: list[str] = []
        try:
            try:
                await probe.commit_turn(m2, 1, "probe-2", timeout=1.5)
            except KVStoreError as err:
                unknown.append(status_of(err))
            await asyncio.sleep(max(0.0, stall_s - (time.monotonic() - fault)))
        finally:
            os.kill(pid, signal.SIGCONT)
        repaired = time.monotonic()
        during = await _version_when_up(probe, "probe")
        replayed = await probe.commit_turn(m2, 1, "probe-2", timeout=10)
        after = (await probe.get_session("probe", timeout=10)).version
        double = int(replayed != 2 or after != 2)
        await probe.close()
        recovery = await load.wait_recovered(repaired, 60)
        await load.wait_acks(size.after_acks, 60, since=repaired)
        await load.finish()
        checked = await verify(stores[0].address, stores[0].token, load)
        outcome = f"failed ({unknown[0]})" if unknown else "answered in time"
        applied = "applied anyway" if during == 2 else "not applied"
        verdict = "replayed" if not double else "APPLIED TWICE"
        note = (
            f"SIGSTOP {stall_s:.0f} s vs store budget 0.5 s; probe commit {outcome} and {applied}; retried "
            f"with its commit_id -> version {replayed}, session at {after} ({verdict}); "
            f"{load.retried_commits} load commits succeeded after a failed attempt"
        )
        return row(
            "slow redis (outcome unknown)",
            load,
            checked,
            fault_at=fault,
            recovery_s=recovery,
            crashes=crashed(stores),
            lossless=True,
            note=note,
            double_applied=double,
            unknown_outcome_commits=len(unknown),
        )

    with standalone(store_args=store_args) as (redis, stores):
        return asyncio.run(go(redis, stores))


async def _version_when_up(client: AsyncKVStoreClient, session: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (await client.get_session(session, timeout=2)).version
        except KVStoreError:
            if time.monotonic() > deadline:
                return -1
            await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# Scenarios: Redis Cluster


def cluster_failover(size: Size) -> dict[str, Any]:
    """A cluster master SIGKILLed under load; its replica takes over (replication is asynchronous)."""
    from gearkv.store.redis_keys import session_redis_key

    async def go(cluster: LocalRedisCluster, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        await load.wait_acks(size.warm_acks, 60)
        victim = await asyncio.to_thread(cluster.master_for_key, session_redis_key(TENANT, "s0"))
        fault = time.monotonic()
        await asyncio.to_thread(victim.stop, kill=True)
        recovery = await load.wait_recovered(fault, 90)
        await load.wait_acks(size.after_acks, 60, since=fault + (recovery or 0))
        await load.finish()
        await asyncio.to_thread(cluster.wait_all_ok, 30)
        checked = await verify(stores[0].address, stores[0].token, load)
        note = "master of s0 killed, node timeout 1 s; turns lost are reported (asynchronous replication)"
        return row(
            "cluster master killed (failover)",
            load,
            checked,
            fault_at=fault,
            recovery_s=recovery,
            crashes=crashed(stores),
            note=note,
        )

    with clustered() as (cluster, stores):
        return asyncio.run(go(cluster, stores))


def cluster_reshard(size: Size) -> dict[str, Any]:
    """Slots migrated between masters (``redis-cli --cluster reshard``) while the load runs."""

    async def go(cluster: LocalRedisCluster, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        await load.wait_acks(size.warm_acks, 60)
        masters = await asyncio.to_thread(cluster.masters)
        src, dst = masters[0], masters[1]
        src_id = await asyncio.to_thread(cluster.node_id, src)
        dst_id = await asyncio.to_thread(cluster.node_id, dst)
        slots = 2000
        cmd = [shutil.which("redis-cli") or "redis-cli", "--cluster", "reshard", f"127.0.0.1:{src.port}"]
        cmd += ["--cluster-from", src_id, "--cluster-to", dst_id, "--cluster-slots", str(slots)]
        cmd += ["--cluster-yes", "--cluster-pipeline", "20"]
        fault = time.monotonic()
        done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, timeout=300, check=False)
        repaired = time.monotonic()
        recovery = await load.wait_recovered(repaired, 60)
        await load.wait_acks(size.after_acks, 60, since=repaired)
        await load.finish()
        checked = await verify(stores[0].address, stores[0].token, load)
        ok = "done" if done.returncode == 0 else f"FAILED rc={done.returncode}"
        note = f"{slots} slots moved between masters in {repaired - fault:.1f} s under load ({ok})"
        return row(
            "slots migrated under load",
            load,
            checked,
            fault_at=fault,
            recovery_s=recovery,
            crashes=crashed(stores),
            note=note,
            reshard_s=round(repaired - fault, 2),
        )

    with clustered() as (cluster, stores):
        return asyncio.run(go(cluster, stores))


# --------------------------------------------------------------------------------------------------
# Scenarios: stores and clients


def store_killed_before_commit(size: Size) -> dict[str, Any]:
    """A store SIGKILLed after a turn's chunks were written and before its commit; restarted."""

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size)
        victim = stores[0]
        fired = asyncio.Event()
        killed = [0.0]

        async def before_commit(sid: str) -> None:
            # sessions with an even index talk to stores[0]
            if (
                fired.is_set()
                or int(sid[len(load.prefix) :]) % len(stores)
                or len(load.acks) < size.warm_acks
            ):
                return
            fired.set()
            killed[0] = time.monotonic()
            await asyncio.to_thread(victim.kill)

        load.before_commit = before_commit
        load.start()
        await load.wait_acks(size.warm_acks, 60)
        deadline = time.monotonic() + 60
        while not fired.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.start)
        repaired = time.monotonic()
        recovery = await load.wait_recovered(repaired, 60)
        await load.wait_acks(size.after_acks, 60, since=repaired)
        await load.finish()
        checked = await verify(stores[1].address, stores[1].token, load)
        note = "one of two stores SIGKILLed between a turn's chunk writes and its commit; restarted after 1 s"
        return row(
            "store killed between chunks and commit",
            load,
            checked,
            fault_at=killed[0] or None,
            recovery_s=recovery,
            crashes=crashed(stores),
            lossless=True,
            note=note,
        )

    with standalone() as (redis, stores):
        return asyncio.run(go(redis, stores))


def client_cancel_mid_stream(size: Size) -> dict[str, Any]:
    """Clients cancel multi-part uploads mid-stream while the load runs: nothing partial is stored."""

    async def go(redis: LocalRedis, stores: list[LocalStore]) -> dict[str, Any]:
        load = Load(addresses(stores), stores[0].token, size).start()
        await load.wait_acks(size.warm_acks // 2, 60)
        fault = time.monotonic()
        ns = Namespace(fingerprint=f"cancel-{load.run_id}", codec_id="gear4/v1", chunk_size=size.chunk_tokens)
        big = 3 * MIB  # streamed in 1 MiB parts
        cancelled = completed = partial = 0
        client = AsyncKVStoreClient(
            stores[0].address, token=stores[0].token, timeout=30, retry=RetryPolicy.none()
        )
        uploaded: list[tuple[str, bytes]] = []
        try:
            for i in range(size.cancels):
                tokens = turn_tokens(load.run_id, "cancel", 0, i, size.chunk_tokens)
                span = keys.chain(ns, tokens)[0]
                data = payload(span.key, big)
                task = asyncio.ensure_future(
                    client.put_chunk(ns, "", tokens, data, start=0, raw_bytes=4 * big)
                )
                await asyncio.sleep(0.002 + 0.03 * random.random())
                task.cancel()
                try:
                    await task
                    completed += 1
                except asyncio.CancelledError:
                    cancelled += 1
                except KVStoreError as err:
                    load.errors[status_of(err)] += 1
                    cancelled += 1
                uploaded.append((span.key, data))
            await asyncio.sleep(0.5)
            for key, data in uploaded:  # each either absent or whole
                try:
                    got = await client.get_chunk(key)
                except ChunkNotFound:
                    continue
                except ChunkCorrupt:
                    partial += 1
                    continue
                partial += got != data
        finally:
            await client.close()
        await load.wait_acks(size.after_acks, 60, since=fault)
        await load.finish()
        checked = await verify(stores[0].address, stores[0].token, load)
        checked.corrupt_reads += partial
        note = f"{cancelled} 3 MiB uploads cancelled mid-stream ({completed} finished first); "
        note += f"{partial} stored partially"
        return row(
            "client cancels mid-stream",
            load,
            checked,
            fault_at=fault,
            crashes=crashed(stores),
            lossless=True,
            note=note,
            cancelled_uploads=cancelled,
        )

    with standalone() as (redis, stores):
        return asyncio.run(go(redis, stores))


def noisy_neighbours(size: Size) -> dict[str, Any]:
    """One tenant floods huge lookups and idle upload streams while another runs its turns; the
    victim's p99 RPC latency is compared with its p99 alone."""
    import grpc
    from gearkv.api.digest import payload_digest
    from gearkv.api.v1 import kvstore_pb2 as pb
    from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc

    async def go(stores: list[LocalStore]) -> dict[str, Any]:
        store = stores[0]
        victim_token, hostile_md = (
            store.tokens["victim"],
            (("authorization", f"Bearer {store.tokens['hostile']}"),),
        )
        alone = Load([store.address], victim_token, size, prefix="alone", max_turns=size.noisy_turns)
        await alone.run_to_end()
        channel = grpc.aio.insecure_channel(store.address)
        stub = pb_grpc.KVStoreStub(channel)
        hostile: Counter[str] = Counter()
        stop = asyncio.Event()
        nsp = pb.Namespace(fingerprint="hostile", codec_id="gear4/v1", chunk_size=size.chunk_tokens)
        # Serialized once: the flood shares this process (and its event loop) with the victim's
        # client, whose latency must not include the flood's own 5 MB serializations.
        huge = pb.LookupPrefixRequest(namespace=nsp, token_ids=list(range(1 << 20))).SerializeToString()
        lookup = channel.unary_unary(
            "/gearkv.api.v1.KVStore/LookupPrefix",
            request_serializer=None,
            response_deserializer=pb.LookupPrefixResponse.FromString,
        )

        async def lookups() -> None:
            while not stop.is_set():
                try:
                    await lookup(huge, metadata=hostile_md, timeout=30)
                    hostile["lookup OK"] += 1
                except grpc.aio.AioRpcError as err:
                    hostile[f"lookup {err.code().name}"] += 1
                    await asyncio.sleep(0.01)

        async def idle_stream(i: int) -> None:
            tokens = list(range(i * 100, i * 100 + size.chunk_tokens))
            span = keys.chain(Namespace("hostile", "gear4/v1", size.chunk_tokens), tokens)[0]
            while not stop.is_set():
                header = pb.PutChunkHeader(
                    key=span.key,
                    parent_key="",
                    namespace=nsp,
                    start=0,
                    end=len(tokens),
                    token_ids=tokens,
                    total_bytes=1 * MIB,
                    raw_bytes=4 * MIB,
                    digest=payload_digest(b"x" * MIB),
                )

                async def parts(header: Any = header) -> AsyncIterator[Any]:
                    yield pb.PutChunkRequest(header=header, data=b"x" * 16)
                    await stop.wait()

                try:
                    await stub.PutChunk(parts(), metadata=hostile_md, timeout=60)
                    hostile["stream OK"] += 1
                except grpc.aio.AioRpcError as err:
                    # ended by its own release (a truncated upload) once the victim is done
                    what = "held until released" if stop.is_set() else err.code().name
                    hostile[f"idle stream {what}"] += 1
                    await asyncio.sleep(0.05)

        flood = [asyncio.ensure_future(lookups()) for _ in range(4)]
        flood += [asyncio.ensure_future(idle_stream(i)) for i in range(40)]
        await asyncio.sleep(1.0)
        fault = time.monotonic()
        noisy = Load([store.address], victim_token, size, prefix="noisy", max_turns=size.noisy_turns)
        await noisy.run_to_end()
        stop.set()
        await asyncio.gather(*flood, return_exceptions=True)
        await channel.close(grace=None)
        checked = await verify(store.address, victim_token, noisy)
        alone_checked = await verify(store.address, victim_token, alone)
        p99, p99_alone = percentile(noisy.latencies, 99) * 1e3, percentile(alone.latencies, 99) * 1e3
        top = ", ".join(f"{k} {v}" for k, v in hostile.most_common(4))
        note = f"victim p99 {p99 / p99_alone if p99_alone else 0:.1f}x alone; neighbour: {top}"
        out = row(
            "noisy neighbour",
            noisy,
            checked,
            fault_at=fault,
            crashes=crashed(stores),
            lossless=True,
            note=note,
            victim_p99_ms=round(p99, 1),
            victim_p99_alone_ms=round(p99_alone, 1),
            victim_p50_ms=round(percentile(noisy.latencies, 50) * 1e3, 1),
            neighbour_calls=dict(hostile),
        )
        out["lost"] += alone_checked.lost
        out["corrupt_reads"] += alone_checked.corrupt_reads
        return out

    with standalone(stores=1, tenants={"victim": 0, "hostile": 0}) as (_, stores):
        return asyncio.run(go(stores))


# --------------------------------------------------------------------------------------------------
# Scenarios: through workers (the real model)

_ENGINE: list[Any] = []


def _engine() -> tuple[Any, str]:
    """SmolLM2-135M-Instruct on CPU (the worker's default model), loaded once."""
    if not _ENGINE:
        import torch
        from gearkv.worker.engine import Engine
        from gearkv.worker.fingerprint import model_fingerprint
        from gearkv.worker.model import load_model

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        engine = Engine(load_model())
        engine.warmup()
        _ENGINE.extend([engine, model_fingerprint(engine.loaded)])
    return _ENGINE[0], _ENGINE[1]


class WorkerRun:
    """Workers on one store: answered turns, and whether each was answered on the whole history."""

    def __init__(self, store: LocalStore) -> None:
        self.engine, self.fingerprint = _engine()
        self.client = KVStoreClient(store.address, token=store.token, timeout=5)
        self.workers: list[Any] = []
        self.answered: dict[str, list[str]] = {}
        self.stale = self.attempted = 0
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()

    def worker(self, client: Any = None, **kw: Any) -> Any:
        from gearkv.worker.config import SessionOptions
        from gearkv.worker.metrics import WorkerMetrics
        from gearkv.worker.sessions import Worker

        kw.setdefault("hot_cache_bytes", 1 << 28)
        opts = SessionOptions(codec="gear4", chunk_size=64, **kw)
        w = Worker(self.engine, client or self.client, opts, WorkerMetrics(), fingerprint=self.fingerprint)
        self.workers.append(w)
        return w

    def begin(self, w: Any, session: str, message: str) -> Any:
        from gearkv.worker.engine import SamplingParams

        with self.lock:
            self.attempted += 1
        return w.chat(session, message, SamplingParams(max_new_tokens=6))

    def answered_turn(self, session: str, message: str, turn: Any) -> None:
        """Record an answered turn; stale when its prompt lacks an earlier answered message."""
        prompt = str(self.engine.tokenizer.decode(turn.prompt_ids))
        with self.lock:
            earlier = self.answered.setdefault(session, [])
            self.stale += any(m not in prompt for m in earlier)
            earlier.append(message)

    def chat(self, w: Any, session: str, message: str) -> Any:
        turn = self.begin(w, session, message).run()
        self.answered_turn(session, message, turn)
        return turn

    def stored(self, session: str) -> list[str]:
        try:
            return [m.content for m in self.client.get_session(session).messages if m.role == "user"]
        except KVStoreError as err:
            self.errors[status_of(err)] += 1
            return []

    def dangling(self, session: str) -> tuple[int, int]:
        """(1 if the session's manifest names a missing chunk, chunks that failed their check)."""
        try:
            m = self.client.get_session(session)
        except KVStoreError:
            return 0, 0
        missing = bad = 0
        for ref in m.chunks:
            try:
                self.client.get_chunk(ref.key)
            except ChunkNotFound:
                missing += 1
            except ChunkCorrupt:
                bad += 1
        return int(missing > 0), bad

    def finish(
        self,
        name: str,
        started: float,
        fault_at: float | None,
        recovery: float | None,
        note: str,
        stores: Sequence[LocalStore],
    ) -> dict[str, Any]:
        not_kept = dangling = data_loss = 0
        for session, messages in self.answered.items():
            kept = self.stored(session)
            not_kept += sum(m not in kept for m in messages)
            d, bad = self.dangling(session)
            dangling += d
            data_loss += bad
        for w in self.workers:
            w.close(timeout=5)
        self.client.close()
        acked = sum(len(m) for m in self.answered.values())
        return {
            "name": name,
            "attempted": self.attempted,
            "acknowledged": acked,
            "errors_by_status": dict(self.errors),
            "outage_s": None,
            "lost": not_kept,
            "corrupt_reads": 0,
            "dangling_manifests": dangling,
            "recovery_s": round(recovery, 2) if recovery is not None else None,
            "crashes": crashed(stores),
            "data_loss_detected": data_loss,
            "answered_not_kept": not_kept,
            "stale_history": self.stale,
            "lossless": True,
            "seconds": round(time.monotonic() - started, 1),
            "note": note,
        }


def _wait(predicate: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def worker_store_killed(size: Size) -> dict[str, Any]:
    """A worker's store SIGKILLed mid-turn (before its push); the store restarts and the worker
    re-commits the answered turn by itself; the next turn, on another worker, sees the whole history."""
    started = time.monotonic()
    with standalone(stores=1) as (_, stores):
        store = stores[0]
        run = WorkerRun(store)
        w = run.worker()
        run.chat(w, "wk", "My name is Alice.").push.result(timeout=60)
        turn = run.begin(w, "wk", "I live in Paris.")
        steps = iter(turn)
        next(steps)
        fault = time.monotonic()
        store.kill()
        for _ in steps:
            pass
        run.answered_turn("wk", "I live in Paris.", turn)
        push = turn.push.result(timeout=60) if turn.push is not None else None
        store.start()
        down = time.monotonic() - fault
        recovery = _wait(lambda: not w.unsynced_sessions(), 60)
        third = run.chat(run.worker(), "wk", "Where do I live?")
        if third.push is not None:
            third.push.result(timeout=60)
        outcome = third.stats.outcome if third.stats is not None else "?"
        recommit = f"in {recovery:.1f} s" if recovery is not None else "NOT within 60 s"
        push_error = getattr(push, "error", "") or "ok"
        note = f"push while dead: {push_error}; re-committed {recommit}; next turn elsewhere: {outcome}"

        out = run.finish("worker: store killed mid-push", started, fault, recovery, note, stores)
        out["outage_s"] = round(down, 2)
        return out


def worker_redis_stalled(size: Size) -> dict[str, Any]:
    """Redis SIGSTOPped during a worker's turn: the turn costs its store budget, not its history."""
    started = time.monotonic()
    with standalone(stores=1) as (redis, stores):
        run = WorkerRun(stores[0])
        w = run.worker(store_read_budget_s=0.3)
        run.chat(w, "st", "My name is Alice.").push.result(timeout=60)
        assert redis.pid is not None
        pid = redis.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            second = run.chat(w, "st", "I live in Paris.")
            took = time.monotonic() - t0
            time.sleep(max(0.0, 2.0 - took))  # Redis stays stopped 2 s in all
        finally:
            os.kill(pid, signal.SIGCONT)
        stalled = time.monotonic() - t0
        if second.push is not None:
            second.push.result(timeout=60)
        recovery = _wait(lambda: not w.unsynced_sessions(), 60)
        third = run.chat(run.worker(), "st", "Where do I live?")
        if third.push is not None:
            third.push.result(timeout=60)
        s2 = second.stats
        how = f"{s2.outcome}/{s2.reason}/{s2.source}" if s2 is not None else "?"
        outcome = third.stats.outcome if third.stats is not None else "?"
        note = f"turn during the stall took {took:.1f} s ({how}); next turn elsewhere: {outcome}"
        out = run.finish("worker: redis stalled", started, None, recovery, note, stores)
        out["outage_s"] = round(stalled, 2)
        return out


def worker_two_on_one_session(size: Size) -> dict[str, Any]:
    """Two workers race turns on one session: the second is refused while the first runs."""
    from gearkv.worker.errors import SessionBusy

    started = time.monotonic()
    with standalone(stores=2) as (_, stores):
        run = WorkerRun(stores[0])
        other = KVStoreClient(stores[1].address, token=stores[1].token, timeout=5)
        ws = [run.worker(background_push=False), run.worker(other, background_push=False)]
        busy = [0, 0]
        failed: list[str] = []

        def race(i: int) -> None:
            for n in range(size.worker_turns):
                message = f"worker {i} turn {n}"
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        turn = run.begin(ws[i], "race", message).run()
                    except SessionBusy:
                        busy[i] += 1
                        time.sleep(0.05)
                        continue
                    except Exception as err:  # reported in the row, never hidden
                        failed.append(f"{type(err).__name__}")
                        return
                    run.answered_turn("race", message, turn)
                    if turn.push is not None and not turn.push.result(timeout=60).committed:
                        failed.append("push not committed")
                    break

        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        stored = run.stored("race")
        order = "in answer order" if stored == run.answered.get("race") else "NOT in answer order"
        note = f"two stores; {sum(busy)} turns refused (SessionBusy) while the other ran; stored {order}"
        if failed:
            note += f"; failures: {', '.join(failed)}"
        out = run.finish("worker: two workers, one session", started, None, None, note, stores)
        other.close()
        out["refused_busy"] = sum(busy)
        return out


# --------------------------------------------------------------------------------------------------
# The report

SCENARIOS: dict[str, Callable[[Size], dict[str, Any]]] = {
    "redis-kill-aof": redis_killed_aof,
    "redis-restart-empty": redis_restarted_empty,
    "maxmemory-noeviction": maxmemory_noeviction,
    "maxmemory-lru": maxmemory_lru,
    "cluster-failover": cluster_failover,
    "cluster-reshard": cluster_reshard,
    "store-kill-before-commit": store_killed_before_commit,
    "client-cancel": client_cancel_mid_stream,
    "slow-redis": slow_redis,
    "noisy-neighbour": noisy_neighbours,
    "worker-store-killed": worker_store_killed,
    "worker-redis-stalled": worker_redis_stalled,
    "worker-two-workers": worker_two_on_one_session,
}
NEEDS = {"cluster-failover": "redis-cli", "cluster-reshard": "redis-cli"}


def run_scenario(key: str, size: Size) -> dict[str, Any]:
    """Run one scenario; a harness failure becomes a "not run" row naming the error."""
    started = time.monotonic()
    if shutil.which("redis-server") is None:
        return not_run(key, "redis-server is not on PATH")
    if key in NEEDS and shutil.which(NEEDS[key]) is None:
        return not_run(key, f"{NEEDS[key]} is not on PATH")
    try:
        result = SCENARIOS[key](size)
    except Exception as exc:  # the report names it; the run goes on with the next scenario
        out = not_run(key, f"{type(exc).__name__}: {str(exc)[:300]}")
        out["seconds"] = round(time.monotonic() - started, 1)
        return out
    result.setdefault("seconds", round(time.monotonic() - started, 1))
    result["scenario"] = key
    result.setdefault("ran", True)
    return result


def optional_part(module: str, function: str, quick: bool) -> dict[str, Any]:
    """``gearkv.bench.<module>.<function>(quick=...)``, or ``{"skipped": ...}`` when not there yet."""
    try:
        mod = importlib.import_module(f"gearkv.bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"gearkv.bench.{module}":
            raise
        return {"skipped": "not available"}
    fn = getattr(mod, function, None)
    if fn is None:
        return {"skipped": "not available"}
    result: dict[str, Any] = fn(quick=quick)
    return result


def gate(rows: Sequence[dict[str, Any]], fuzz: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passes)."""
    why = [f"{r['name']}: {w}" for r in rows for w in row_failures(r)]
    if fuzz.get("unknown_status"):
        why.append(f"fuzz: {fuzz['unknown_status']} UNKNOWN answers")
    for key, what in (
        ("internal_status", "INTERNAL answers"),
        ("crashes", "crashes"),
        ("leaks", "leaked secrets or exception text"),
    ):
        if fuzz.get(key):
            why.append(f"fuzz: {fuzz[key]} {what}")
    return why


def machine() -> dict[str, Any]:
    redis_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10)
        redis_version = out.stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis": redis_version,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 180)
    table = Table(title="Faults: real processes on loopback (every acknowledged turn read back)")
    for col in ("scenario", "attempted", "acked", "errors by status", "outage s", "lost", "corrupt"):
        table.add_column(col, justify="left" if col in ("scenario", "errors by status") else "right")
    for col in ("dangling", "recovery s", "victim p99 ms (alone)"):
        table.add_column(col, justify="right")
    for r in result["scenarios"]:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors_by_status"].items()) or "-"
        p99 = "-"
        if "victim_p99_ms" in r:
            p99 = f"{r['victim_p99_ms']:.0f} ({r['victim_p99_alone_ms']:.0f})"
        flag = " [red]FAIL[/red]" if row_failures(r) else ""
        table.add_row(
            r["name"] + flag,
            str(r["attempted"]),
            str(r["acknowledged"]),
            errors,
            _fmt(r["outage_s"]),
            str(r["lost"]),
            str(r["corrupt_reads"]),
            str(r["dangling_manifests"]),
            _fmt(r["recovery_s"]),
            p99,
        )
    console.print(table)
    for r in result["scenarios"]:
        console.print(f"- {r['name']}: {r['note']}", highlight=False)
    console.print(f"fuzz: {fuzz_summary(result['fuzz'])}", highlight=False)
    console.print(f"load: {load_summary(result['load'])}", highlight=False)
    console.print(
        f"gate: {result['gate']}"
        + (f" ({'; '.join(result['gate_failures'])})" if result["gate_failures"] else "")
    )


def fuzz_summary(fuzz: dict[str, Any]) -> str:
    """One line of the fuzz result (the JSON has it per RPC)."""
    if "inputs_total" not in fuzz:
        return json.dumps(fuzz)
    return (
        f"{fuzz['inputs_total']:,} inputs over {len(fuzz['inputs_tried'])} RPCs in {fuzz['seconds']:.0f} s: "
        f"{fuzz['unknown_status']} UNKNOWN, {fuzz['internal_status']} INTERNAL, {fuzz['crashes']} crashes, "
        f"{fuzz['leaks']} leaks (atheris: {fuzz.get('atheris', '-')})"
    )


def load_summary(load: dict[str, Any]) -> str:
    """One line of the load ramp (the JSON has every step)."""
    if "sustained" not in load:
        return json.dumps(load)
    best, shed = load["sustained"], load.get("shedding") or {}
    text = (
        f"sustained {best['pushes_per_s']:.0f} pushes/s and {best['pulls_per_s']:.0f} pulls/s at p99 "
        f"{best['p99_ms']:.0f} ms ({best['sessions']} sessions; stopped by {load.get('stopped_by', '-')})"
    )
    if shed:
        text += (
            f"; store limited to {shed['max_in_flight']} in flight: {shed['shed']} shed, admitted p99 "
            f"{shed['p99_ms']:.0f} ms"
        )
    read_back = f"{load['acknowledged_turns']} turns read back: {load['lost']} lost"
    return f"{text}; {read_back}, {load['corrupt_reads']} corrupt"


def main(argv: Sequence[str], prog: str = "gearkv bench faults") -> int:
    from gearkv.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="every scenario at reduced size (minutes)")
    parser.add_argument("--only", help=f"run only these scenarios (comma-separated): {', '.join(SCENARIOS)}")
    parser.add_argument("--skip-fuzz", action="store_true", help="do not run the fuzzer")
    parser.add_argument("--skip-load", action="store_true", help="do not run the load ramp")
    args = parser.parse_args(list(argv))
    chosen = list(SCENARIOS)
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    size = Size.quick() if args.quick else Size()
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    steps = len(chosen) + (not args.skip_fuzz) + (not args.skip_load)
    fuzz: dict[str, Any] = {"skipped": "--skip-fuzz"}
    load: dict[str, Any] = {"skipped": "--skip-load"}
    with progress(steps, f"scenario {chosen[0]}" if chosen else "starting") as tick:
        for key in chosen:
            rows.append(run_scenario(key, size))
            verdict = "FAIL" if row_failures(rows[-1]) else "ok"
            tick(f"{key}: {verdict} ({rows[-1].get('seconds', 0):.0f} s)")
        if not args.skip_fuzz:
            fuzz = optional_part("fuzz", "run_fuzz", args.quick)
            tick("fuzz")
        if not args.skip_load:
            load = optional_part("load", "run_load", args.quick)
            tick("load ramp")
    failures = gate(rows, fuzz)
    result = {
        "scenarios": rows,
        "fuzz": fuzz,
        "load": load,
        "gate": "fail" if failures else "pass",
        "gate_failures": failures,
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "size": asdict(size),
        "machine": machine(),
    }
    render(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
