"""The Redis / Redis Cluster backend: the only module that imports ``redis.asyncio``.

Every Redis exception stops here: connection errors, timeouts and cluster churn (MOVED/ASK,
TRYAGAIN, CLUSTERDOWN, a master that went read-only, busy loading, stray errors from the async cluster
client during resharding) are retried with full-jitter exponential backoff inside a time budget, then
surface as ``BackendUnavailable``; out-of-memory surfaces as ``ResourceExhausted``. Every write is
idempotent (SET NX, a commit keyed by its commit id), so retrying a write whose outcome is unknown is
safe. Multi-key reads across slots are plain pipelines and named ``*_nonatomic``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from gearkv.api.backoff import ExponentialJitterBackoff
from gearkv.api.records import SessionSummary
from gearkv.store import lua
from gearkv.store.backend import CommitOutcome, ManifestMark, SessionHead, TenantUsage, TurnStart
from gearkv.store.config import StoreConfig
from gearkv.store.context import deadline_var
from gearkv.store.errors import (
    Aborted,
    BackendUnavailable,
    DataLoss,
    FailedPrecondition,
    ResourceExhausted,
    StoreError,
)
from gearkv.store.metrics import StoreMetrics
from gearkv.store.redis_keys import (
    chunk_redis_key,
    lease_redis_key,
    session_redis_key,
    session_redis_keys,
    tenant_redis_key,
)
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("gearkv.store.redis")
T = TypeVar("T")
BATCH = 256
# A new chunk's charge is first due for settling this soon, not at the chunk's own expiry: should its
# SET then fail (out of memory, a deadline), the reaper releases the charge within a minute instead of
# holding it for the chunk TTL; a chunk that was written is simply re-scored to its real expiry.
PROVISIONAL_CHARGE_MS = 60_000
# Full jitter between retries of a Redis error: 0-40 ms after the first, doubling, at most 0.5 s.
BACKOFF = ExponentialJitterBackoff(base=0.04, cap=0.5)

_RETRYABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.MovedError,
    rexc.AskError,
    rexc.MasterDownError,
    rexc.ReadOnlyError,
    rexc.SlotNotCoveredError,
    rexc.MaxConnectionsError,
    rexc.ClusterError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

# Refused connections mean Redis is down, not busy: see RedisBackend._backend_down.
_UNREACHABLE: tuple[type[BaseException], ...] = (rexc.ConnectionError, ConnectionError, OSError)
# How long before a client's deadline the store stops retrying Redis and answers UNAVAILABLE:
# a tenth of the time the client gives, within these bounds.
_MIN_ANSWER_MARGIN_S = 0.02
_MAX_ANSWER_MARGIN_S = 0.25


# Ledger members: a chunk's key (64 hex chars), or this prefix and a session id for its manifest.
_SESSION_MEMBER = "s:"


def _session_member(session_id: str) -> str:
    return _SESSION_MEMBER + session_id


# Replies that mean a stored value is not what the store wrote (a key of the wrong type, a field that
# is not a number): a retry cannot help, and clients must not retry it as UNAVAILABLE.
_DAMAGE_MARKERS = ("WRONGTYPE", "not an integer", "@user_script")  # the last: any error inside our scripts


def _damaged(exc: BaseException) -> bool:
    if isinstance(exc, ValueError | UnicodeDecodeError):
        return True
    return (
        isinstance(exc, rexc.ResponseError)
        and not isinstance(exc, _RETRYABLE)
        and any(marker in str(exc) for marker in _DAMAGE_MARKERS)
    )


def _error_kind(exc: BaseException) -> str:
    """A bounded label for the redis_errors metric."""
    if isinstance(exc, rexc.TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, rexc.ConnectionError | ConnectionError | OSError):
        return "connection"
    if isinstance(exc, rexc.MovedError | rexc.AskError | rexc.TryAgainError | rexc.ClusterError):
        return "cluster"
    if isinstance(exc, rexc.ReadOnlyError | rexc.MasterDownError | rexc.BusyLoadingError):
        return "failover"
    if isinstance(exc, rexc.OutOfMemoryError):
        return "oom"
    return "other"


def _cluster_url(url: str) -> str:
    return url.replace("redis+cluster://", "redis://", 1).replace("rediss+cluster://", "rediss://", 1)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _leased_message(holder: Any, ms_left: Any) -> str:
    return (
        f"the session has a turn running on another worker ({_text(holder)!r}, lease "
        f"{int(ms_left)} ms left); retry after it"
    )


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


@dataclass(frozen=True)
class RedisMemory:
    """What INFO says about Redis memory (summed over a cluster's primaries)."""

    used_memory: int
    maxmemory: int
    evicted_keys: int


class RedisBackend:
    """``Backend`` over standalone Redis (``redis://``, ``rediss://``) or Redis Cluster."""

    def __init__(self, cfg: StoreConfig, metrics: StoreMetrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._cluster = cfg.is_cluster
        self.kind = "redis-cluster" if self._cluster else "redis"
        self._last_reap: dict[str, float] = {}
        self._index_cursor: dict[str, int] = {}  # where each tenant's session-index sweep goes on
        # Set when a standalone Redis stayed unreachable for a whole retry budget, cleared by the next
        # success (the health probe's ping included). A cluster keeps retrying: its failover needs it.
        self._backend_down = False
        # A hung Redis must not cost more than the retry budget per attempt (5 s sockets under a 3 s
        # budget made each try of a stalled Redis take 5 s).
        socket_timeout = min(cfg.redis_timeout_s, cfg.redis_retry_budget_s or cfg.redis_timeout_s)
        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(socket_timeout, 2.0),
            "max_connections": cfg.redis_max_connections,
        }
        if cfg.redis_tls_ca:
            common["ssl_ca_certs"] = cfg.redis_tls_ca
            common["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        self._client: Any
        if self._cluster:
            self._client = RedisCluster.from_url(
                _cluster_url(cfg.redis_url),
                retry=Retry(NoBackoff(), 1),
                require_full_coverage=False,
                **common,
            )
        else:
            self._client = aioredis.Redis.from_url(cfg.redis_url, retry=Retry(NoBackoff(), 0), **common)
        self._reserve = self._client.register_script(lua.RESERVE)
        self._claim = self._client.register_script(lua.CLAIM)
        self._settle = self._client.register_script(lua.SETTLE)
        self._commit = self._client.register_script(lua.COMMIT)
        self._charge_session = self._client.register_script(lua.CHARGE_SESSION)
        self._touch_session = self._client.register_script(lua.TOUCH_SESSION)
        self._begin_turn = self._client.register_script(lua.BEGIN_TURN)
        self._end_turn = self._client.register_script(lua.END_TURN)
        self._delete_session = self._client.register_script(lua.DELETE_SESSION)

    # -- the one place Redis errors are handled ---------------------------------------------------

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` with bounded, jittered retries; translate every failure into a StoreError."""
        now = time.monotonic()
        # While Redis is known to be down, one attempt and no retries: callers learn it at once and
        # an outage does not turn every request into a retry loop.
        deadline = now + (0.0 if self._backend_down else self._cfg.redis_retry_budget_s)
        client_deadline = deadline_var.get()
        if client_deadline is not None:
            # Give up a little before the client does, so it gets our UNAVAILABLE, not its own timeout.
            margin = min(max(0.1 * (client_deadline - now), _MIN_ANSWER_MARGIN_S), _MAX_ANSWER_MARGIN_S)
            deadline = min(deadline, client_deadline - margin)
        failures = 0
        while True:
            try:
                result = await fn()
                self._backend_down = False
                return result
            except StoreError:
                raise
            except rexc.OutOfMemoryError as exc:
                self._metrics.redis_errors.labels(kind="oom").inc()
                raise ResourceExhausted("backend is out of memory; nothing was written") from exc
            except rexc.NoPermissionError as exc:
                self._metrics.redis_errors.labels(kind="other").inc()
                log.error("redis %s refused: the configured Redis user lacks a permission", op)
                raise BackendUnavailable("backend refused the operation") from exc
            except rexc.AuthenticationError as exc:
                self._metrics.redis_errors.labels(kind="other").inc()
                log.error("redis %s: authentication to Redis failed (check the URL's user/password)", op)
                raise BackendUnavailable("backend unavailable") from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _damaged(exc):
                    self._metrics.integrity_failures.labels(where="storage").inc()
                    log.error("redis %s: stored bookkeeping is damaged (%s)", op, type(exc).__name__)
                    raise DataLoss(f"the store's data for this {op} is damaged") from exc
                kind = _error_kind(exc)
                self._metrics.redis_errors.labels(kind=kind).inc()
                retryable = isinstance(exc, _RETRYABLE) or (
                    self._cluster and not isinstance(exc, rexc.ResponseError)
                )
                failures += 1
                delay = BACKOFF.compute(failures)
                if not retryable or time.monotonic() + delay > deadline:
                    if retryable and not self._cluster and isinstance(exc, _UNREACHABLE):
                        self._backend_down = True
                    level = logging.DEBUG if op == "ping" else logging.WARNING  # health probe: no spam
                    log.log(
                        level, "redis %s failed (%s) after %d attempt(s)", op, type(exc).__name__, failures
                    )
                    raise BackendUnavailable("backend unavailable; retry with backoff") from exc
                await asyncio.sleep(delay)

    # -- chunks -------------------------------------------------------------------------------------

    async def put_chunk(
        self,
        tenant: str,
        key: str,
        value: bytes | bytearray,
        *,
        stored: int,
        raw: int,
        ttl_ms: int,
        quota: int,
    ) -> bool:
        rkey = chunk_redis_key(tenant, key)
        ledger_keys = [tenant_redis_key(tenant, w) for w in ("ledger", "sizes", "usage")]

        def over_quota() -> ResourceExhausted:
            self._metrics.quota_rejections.labels(tenant=tenant).inc()
            return ResourceExhausted(
                f"tenant byte quota of {quota} bytes exceeded by a {stored}-byte chunk; nothing was written"
            )

        async def run_unlimited() -> bool:
            # Nothing to check before writing: claim and write in one pipelined round trip (loopback
            # round trips cost the store ~0.2 ms of CPU each). A Lua script taking the value would be
            # atomic too but costs Redis ~3 ms per MiB; a deduplicated upload sends its value in vain.
            expires = int(time.time() * 1000) + min(ttl_ms, PROVISIONAL_CHARGE_MS)
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command(
                "EVALSHA", self._claim.sha, 4, rkey, *ledger_keys, key, stored, raw, expires, ttl_ms
            )
            pipe.set(rkey, value, nx=True, px=ttl_ms)
            claim, created = await pipe.execute(raise_on_error=False)
            if isinstance(created, Exception):
                raise created
            if isinstance(claim, rexc.NoScriptError):  # first use, or the script cache was flushed
                await self._client.script_load(lua.CLAIM)
                await self._reserve(keys=ledger_keys, args=[key, stored, raw, expires, 0])
                claim = 0 if created else 1
            elif isinstance(claim, Exception):
                raise claim
            if int(claim) == 1:
                return True
            if not created:  # written by a concurrent upload between the claim and the SET
                await self._client.pexpire(rkey, ttl_ms)
            return not created

        async def run() -> bool:
            if await self._client.pexpire(rkey, ttl_ms):
                return True
            if quota > 0:
                await self._reap(tenant)
            expires = int(time.time() * 1000) + min(ttl_ms, PROVISIONAL_CHARGE_MS)
            verdict = await self._reserve(keys=ledger_keys, args=[key, stored, raw, expires, quota])
            if int(verdict) < 0:
                raise over_quota()
            created = await self._client.set(rkey, value, nx=True, px=ttl_ms)
            if not created:
                await self._client.pexpire(rkey, ttl_ms)
            return not created

        if quota == 0 and not self._cluster:
            return await self._call("put_chunk", run_unlimited)
        return await self._call("put_chunk", run)

    async def get_chunk(self, tenant: str, key: str, ttl_ms: int) -> bytes | None:
        rkey = chunk_redis_key(tenant, key)

        async def run() -> bytes | None:
            value: bytes | None = await self._client.getex(rkey, px=ttl_ms)
            return value

        return await self._call("get_chunk", run)

    async def discard_chunk(self, tenant: str, key: str) -> None:
        rkey = chunk_redis_key(tenant, key)

        async def run() -> None:
            await self._client.delete(rkey)

        await self._call("discard_chunk", run)

    async def touch_chunks_nonatomic(
        self, tenant: str, keys: Sequence[str], ttl_ms: int, *, stop_at_missing: bool
    ) -> list[bool]:
        found: list[bool] = []
        for lo in range(0, len(keys), BATCH):
            batch = [chunk_redis_key(tenant, k) for k in keys[lo : lo + BATCH]]

            async def run(batch: list[str] = batch) -> list[bool]:
                pipe = self._client.pipeline(transaction=False)
                for rkey in batch:
                    pipe.pexpire(rkey, ttl_ms)
                return [bool(x) for x in await pipe.execute()]

            found += await self._call("touch_chunks", run)
            if stop_at_missing and not all(found):
                return found[: found.index(False) + 1]
        return found

    async def chunk_sizes(self, tenant: str, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        if not keys:
            return []
        sizes_key = tenant_redis_key(tenant, "sizes")

        async def run() -> list[tuple[int, int] | None]:
            out: list[tuple[int, int] | None] = []
            for raw in await self._client.hmget(sizes_key, list(keys)):
                if raw is None:
                    out.append(None)
                    continue
                stored, _, rawb = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(":")
                out.append((int(stored), int(rawb)))
            return out

        return await self._call("chunk_sizes", run)

    # -- sessions -----------------------------------------------------------------------------------

    async def get_session(self, tenant: str, session_id: str, ttl_ms: int) -> bytes | None:
        keys = [session_redis_key(tenant, session_id)]

        async def run() -> bytes | None:
            value = await self._touch_session(keys=keys, args=[ttl_ms])
            return bytes(value) if value else None

        return await self._call("get_session", run)

    async def session_head(self, tenant: str, session_id: str) -> SessionHead | None:
        meta = session_redis_key(tenant, session_id)

        async def run() -> SessionHead | None:
            version, mark = await self._client.hmget(meta, ("v", "mk"))
            if version is None:
                return None
            return SessionHead(int(version), ManifestMark.decode(_text(mark)) if mark else None)

        return await self._call("session_head", run)

    async def commit_session(
        self,
        tenant: str,
        session_id: str,
        *,
        expected_version: int,
        commit_id: str,
        manifest: bytes,
        summary: SessionSummary,
        ttl_ms: int,
        mark: ManifestMark,
        base: ManifestMark | None = None,
        holder: str = "",
        lease_id: str = "",
        quota: int = 0,
        digest: str = "",
    ) -> CommitOutcome:
        keys = session_redis_keys(tenant, session_id)
        index = tenant_redis_key(tenant, "sessions")
        ledger_keys = [tenant_redis_key(tenant, w) for w in ("ledger", "sizes", "usage")]
        args: list[Any] = [expected_version, commit_id, manifest, ttl_ms, summary.turns, summary.tokens]
        args += [summary.raw_bytes, summary.stored_bytes, summary.updated_ms, holder, lease_id]
        args += [base.encode() if base is not None else "", mark.encode(), digest]

        async def run() -> CommitOutcome:
            if quota > 0:
                await self._reap(tenant)
            expires = int(time.time() * 1000) + ttl_ms
            charged = await self._charge_session(
                keys=ledger_keys, args=[_session_member(session_id), len(manifest), expires, quota]
            )
            if int(charged) < 0:
                self._metrics.quota_rejections.labels(tenant=tenant).inc()
                raise ResourceExhausted(
                    f"tenant byte quota of {quota} bytes exceeded by a {len(manifest)}-byte manifest "
                    "(messages and attributes count); nothing was committed"
                )
            # Index first: it is a superset of the live sessions (entries without a manifest are pruned).
            await self._client.zadd(index, {session_id: 0})
            reply = await self._commit(keys=keys, args=args)
            status = int(reply[0])
            if status == 3:
                raise Aborted(_leased_message(reply[1], reply[2]))
            if status == 5:
                raise FailedPrecondition(
                    f"commit_id {commit_id!r} already committed version {int(reply[1])} with other "
                    "content; use a new commit_id for a new commit"
                )
            if status == 4:
                raise Aborted("the session changed while the commit was checked; re-read it and retry")
            if status == 0:
                current = int(reply[1])
                raise Aborted(f"expected_version {expected_version} does not match the version {current}")
            return CommitOutcome(version=int(reply[1]), applied=status == 2)

        return await self._call("commit_session", run)

    async def begin_turn(
        self,
        tenant: str,
        session_id: str,
        *,
        holder: str,
        lease_id: str,
        lease_ms: int,
        known_version: int,
        ttl_ms: int,
    ) -> TurnStart:
        keys = session_redis_keys(tenant, session_id)
        args: list[Any] = [holder, lease_id, lease_ms, known_version, ttl_ms]

        async def run() -> TurnStart:
            reply = await self._begin_turn(keys=keys, args=args)
            if int(reply[0]) == 0:
                raise Aborted(_leased_message(reply[1], reply[2]))
            _, version, lost, lost_holder, manifest = reply
            return TurnStart(
                version=int(version),
                manifest=bytes(manifest) if manifest else None,
                abandoned=int(lost) == 1,
                abandoned_holder=_text(lost_holder),
            )

        return await self._call("begin_turn", run)

    async def end_turn(self, tenant: str, session_id: str, lease_id: str) -> None:
        async def run() -> None:
            await self._end_turn(keys=[lease_redis_key(tenant, session_id)], args=[lease_id])

        await self._call("end_turn", run)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        keys = session_redis_keys(tenant, session_id)

        ledger_keys = [tenant_redis_key(tenant, w) for w in ("ledger", "sizes", "usage")]

        async def run() -> bool:
            existed = await self._delete_session(keys=keys, args=[])
            await self._client.zrem(tenant_redis_key(tenant, "sessions"), session_id)
            now_ms = int(time.time() * 1000)
            await self._settle(keys=ledger_keys, args=[now_ms, _session_member(session_id), -2])
            return bool(existed)

        return await self._call("delete_session", run)

    async def list_sessions(self, tenant: str, after: str, limit: int) -> tuple[list[SessionSummary], str]:
        index = tenant_redis_key(tenant, "sessions")
        fields = ("v", "turns", "tokens", "raw", "stored", "updated")

        async def run() -> tuple[list[SessionSummary], str]:
            lo = f"({after}" if after else "-"
            ids = [
                i.decode() if isinstance(i, bytes) else str(i)
                for i in await self._client.zrangebylex(index, lo, "+", start=0, num=limit + 1)
            ]
            more = len(ids) > limit
            ids = ids[:limit]
            pipe = self._client.pipeline(transaction=False)
            for sid in ids:
                pipe.hexists(session_redis_key(tenant, sid), "m")
                pipe.hmget(session_redis_key(tenant, sid), fields)
            replies = await pipe.execute() if ids else []
            out: list[SessionSummary] = []
            gone: list[str] = []
            for n, sid in enumerate(ids):
                exists, meta = replies[2 * n], replies[2 * n + 1]
                if not exists or meta[0] is None:
                    gone.append(sid)
                    continue
                v, turns, tokens, raw, stored, updated = (_int(x) for x in meta)
                out.append(SessionSummary(sid, v, turns, tokens, raw, stored, updated))
            if gone:
                await self._client.zrem(index, *gone)
            return out, (ids[-1] if more and ids else "")

        return await self._call("list_sessions", run)

    # -- accounting ---------------------------------------------------------------------------------

    async def _reap(self, tenant: str, *, force: bool = False) -> None:
        """Release ledger entries of chunks that expired (at most once a second per tenant)."""
        now = time.monotonic()
        if not force and now - self._last_reap.get(tenant, 0.0) < 1.0:
            return
        self._last_reap[tenant] = now
        keys = [tenant_redis_key(tenant, w) for w in ("ledger", "sizes", "usage")]
        for _ in range(64):  # bounded: at most 64 x 500 entries per reap
            now_ms = int(time.time() * 1000)
            members = await self._client.zrangebyscore(keys[0], "-inf", now_ms, start=0, num=500)
            if not members:
                return
            names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                sid = name.removeprefix(_SESSION_MEMBER)
                pipe.pttl(session_redis_key(tenant, sid) if sid != name else chunk_redis_key(tenant, name))
            pttls = await pipe.execute()
            for name, pttl in zip(names, pttls, strict=True):
                if int(pttl) == -2:  # gone: expired (or evicted); SETTLE releases its bytes
                    kind = "session" if name.startswith(_SESSION_MEMBER) else "chunk"
                    self._metrics.expired.labels(kind=kind).inc()
            args: list[Any] = [now_ms]
            for name, pttl in zip(names, pttls, strict=True):
                args += [name, int(pttl)]
            await self._settle(keys=keys, args=args)

    async def _prune_index(self, tenant: str, batches: int) -> None:
        """Drop index entries of sessions that expired or were evicted (a few ZSCAN batches a call)."""
        index = tenant_redis_key(tenant, "sessions")
        cursor = self._index_cursor.get(tenant, 0)
        for _ in range(batches):
            cursor, entries = await self._client.zscan(index, cursor, count=500)
            ids = [(e[0].decode() if isinstance(e[0], bytes) else str(e[0])) for e in entries]
            if ids:
                pipe = self._client.pipeline(transaction=False)
                for sid in ids:
                    pipe.hexists(session_redis_key(tenant, sid), "m")
                gone = [sid for sid, alive in zip(ids, await pipe.execute(), strict=True) if not alive]
                if gone:
                    await self._client.zrem(index, *gone)
            if cursor == 0:
                break
        self._index_cursor[tenant] = cursor

    async def sweep(self, tenant: str) -> None:
        async def run() -> None:
            await self._reap(tenant, force=True)
            await self._prune_index(tenant, batches=20)

        await self._call("sweep", run)

    async def usage(self, tenant: str) -> TenantUsage:
        async def run() -> TenantUsage:
            await self._reap(tenant, force=True)
            await self._prune_index(tenant, batches=4)
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(tenant_redis_key(tenant, "usage"), ("chunks", "raw", "stored", "manifest_bytes"))
            pipe.zcard(tenant_redis_key(tenant, "sessions"))
            (chunks, raw, stored, manifests), sessions = await pipe.execute()
            return TenantUsage(int(sessions), _int(chunks), _int(raw), _int(stored), _int(manifests))

        return await self._call("usage", run)

    async def used_bytes(self, tenant: str) -> int:
        async def run() -> int:
            await self._reap(tenant)  # expired data first frees its charge (at most once a second)
            stored, manifests = await self._client.hmget(
                tenant_redis_key(tenant, "usage"), ("stored", "manifest_bytes")
            )
            return _int(stored) + _int(manifests)

        return await self._call("used_bytes", run)

    async def used_memory(self) -> int:
        async def run() -> int:
            if self._cluster:
                infos = await self._client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                if isinstance(infos, dict) and "used_memory" not in infos:
                    return sum(_int(i.get("used_memory")) for i in infos.values() if isinstance(i, dict))
                return _int(infos.get("used_memory"))
            info = await self._client.info("memory")
            return _int(info.get("used_memory"))

        return await self._call("used_memory", run)

    # -- reads for the metrics' gauges (``StoreServer.refresh_metrics``) -----------------------------

    async def redis_memory(self) -> RedisMemory:
        """INFO memory and stats of Redis (summed over the primaries of a cluster)."""

        async def run() -> RedisMemory:
            if self._cluster:
                replies = await self._client.info(target_nodes=RedisCluster.PRIMARIES)
                infos = (
                    [replies]
                    if "used_memory" in replies
                    else [i for i in replies.values() if isinstance(i, dict)]
                )
            else:
                infos = [await self._client.info()]
            return RedisMemory(
                used_memory=sum(_int(i.get("used_memory")) for i in infos),
                maxmemory=sum(_int(i.get("maxmemory")) for i in infos),
                evicted_keys=sum(_int(i.get("evicted_keys")) for i in infos),
            )

        return await self._call("metrics", run)

    async def sample_chunk_memory(self, sample: int = 16, scan_budget: int = 2000) -> tuple[int, int]:
        """(MEMORY USAGE sum, value length sum) over up to ``sample`` chunk values found by SCAN
        (looking at no more than ``scan_budget`` keys); (0, 0) when none was found."""

        async def run() -> tuple[int, int]:
            keys: list[Any] = []
            seen = 0
            async for key in self._client.scan_iter(match="gkv:c:*", count=200):
                keys.append(key)
                seen += 1
                if len(keys) >= sample or seen >= scan_budget:
                    break
            if not keys:
                return 0, 0
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.memory_usage(key, samples=0)
                pipe.strlen(key)
            replies = await pipe.execute()
            used = length = 0
            for mem, size in zip(replies[0::2], replies[1::2], strict=True):
                if mem and size:  # the key may have expired since the scan
                    used, length = used + int(mem), length + int(size)
            return used, length

        return await self._call("metrics", run)

    async def session_totals(self, tenant: str, limit: int = 20_000) -> tuple[int, int, int]:
        """(sessions, raw bytes, stored bytes) summed over the tenant's live sessions' summaries (at
        most ``limit`` sessions read; each session counts every chunk it references)."""
        index = tenant_redis_key(tenant, "sessions")

        async def run() -> tuple[int, int, int]:
            count = raw = stored = 0
            cursor = 0
            while count < limit:
                cursor, entries = await self._client.zscan(index, cursor, count=500)
                ids = [_text(e[0]) for e in entries]
                if ids:
                    pipe = self._client.pipeline(transaction=False)
                    for sid in ids:
                        pipe.hexists(session_redis_key(tenant, sid), "m")
                        pipe.hmget(session_redis_key(tenant, sid), ("raw", "stored"))
                    replies = await pipe.execute()
                    for alive, (r, st) in zip(replies[0::2], replies[1::2], strict=True):
                        if alive:
                            count, raw, stored = count + 1, raw + _int(r), stored + _int(st)
                if cursor == 0:
                    break
            return count, raw, stored

        return await self._call("metrics", run)

    async def ping(self) -> None:
        async def run() -> None:
            await self._client.ping()

        await self._call("ping", run)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a broken connection must not fail shutdown
            log.debug("closing redis client: %s", type(exc).__name__)
