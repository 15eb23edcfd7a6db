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
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from gearkv.api.records import SessionSummary
from gearkv.store.backend import (
    COMMIT_IDS_KEPT,
    CommitOutcome,
    TenantUsage,
    TurnStart,
    chunk_redis_key,
    lease_redis_key,
    manifest_redis_key,
    session_meta_redis_key,
    tenant_redis_key,
)
from gearkv.store.config import StoreConfig
from gearkv.store.context import deadline_var
from gearkv.store.errors import Aborted, BackendUnavailable, ResourceExhausted, StoreError
from gearkv.store.metrics import StoreMetrics
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

# Charge a new chunk to the tenant unless it is already accounted; -1 = over quota (nothing changed).
_RESERVE = """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if known then
  if tonumber(ARGV[4]) > tonumber(known) then redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1]) end
  return 1
end
local quota = tonumber(ARGV[5])
local used = tonumber(redis.call('HGET', KEYS[3], 'stored') or '0')
if quota > 0 and used + tonumber(ARGV[2]) > quota then return -1 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('HINCRBY', KEYS[3], 'stored', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'raw', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'chunks', 1)
return 0
"""

# Standalone Redis, no quota: refresh the chunk's TTL if it exists (1 = deduplicated), else charge
# it to the tenant (0). Pipelined with the SET NX that writes the value: one round trip per upload.
# KEYS: chunk, ledger, sizes, usage. ARGV: member, stored, raw, expires, ttl_ms.
_CLAIM = """
if redis.call('PEXPIRE', KEYS[1], ARGV[5]) == 1 then return 1 end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'stored', ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'raw', ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'chunks', 1)
end
return 0
"""

# Settle ledger entries whose expiry passed: re-score chunks still alive, release the gone ones.
_SETTLE = """
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local member = ARGV[i]
  local pttl = tonumber(ARGV[i + 1])
  if pttl > 0 then
    redis.call('ZADD', KEYS[1], 'XX', now + pttl, member)
  elseif pttl == -1 then
    redis.call('ZADD', KEYS[1], 'XX', now + 86400000, member)
  else
    local sizes = redis.call('HGET', KEYS[2], member)
    if sizes then
      local sep = string.find(sizes, ':')
      redis.call('HINCRBY', KEYS[3], 'stored', -tonumber(string.sub(sizes, 1, sep - 1)))
      redis.call('HINCRBY', KEYS[3], 'raw', -tonumber(string.sub(sizes, sep + 1)))
      redis.call('HINCRBY', KEYS[3], 'chunks', -1)
      redis.call('HDEL', KEYS[2], member)
    end
    redis.call('ZREM', KEYS[1], member)
  end
end
return 0
"""

# Milliseconds on the Redis server's clock: leases of every store replica share one clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The hash keeps the last COMMIT_IDS_KEPT commit ids as fields c<version>, so it does not grow with
# the session's turns.
# Compare-and-set commit of one session (KEYS share a hash tag: one slot, atomic). A live lease of
# another holder refuses it ({3, holder, ms left}); the commit gives back its own lease.
# KEYS: manifest, meta, lease. ARGV: expected, commit id, manifest, ttl, turns, tokens, raw, stored,
# updated, holder, lease id.
_COMMIT = (
    f"local KEPT = {COMMIT_IDS_KEPT}\n"
    + _NOW
    + """
local cur = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  cur = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
end
for i = cur, math.max(1, cur - KEPT + 1), -1 do
  if redis.call('HGET', KEYS[2], 'c' .. i) == ARGV[2] then return {1, i} end
end
local l = redis.call('HMGET', KEYS[3], 'holder', 'id', 'until')
if ARGV[10] ~= '' and l[1] and l[1] ~= ARGV[10] and tonumber(l[3]) > now then
  return {3, l[1], tonumber(l[3]) - now}
end
if cur ~= tonumber(ARGV[1]) then return {0, cur} end
local v = cur + 1
if cur == 0 then redis.call('DEL', KEYS[2]) end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if v > KEPT then redis.call('HDEL', KEYS[2], 'c' .. (v - KEPT)) end
redis.call('HSET', KEYS[2], 'v', v, 'c' .. v, ARGV[2], 'ttl', ARGV[4], 'turns', ARGV[5],
  'tokens', ARGV[6], 'raw', ARGV[7], 'stored', ARGV[8], 'updated', ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if l[2] and ARGV[11] ~= '' and l[2] == ARGV[11] then redis.call('DEL', KEYS[3]) end
return {2, v}
"""
)

# Take or renew a session's turn lease and read its version (and manifest when it changed).
# KEYS: manifest, meta, lease. ARGV: holder, lease id, lease ms, known version, default session ttl.
# Returns {0, holder, ms left} while another holder's lease is live, else
# {1, version, abandoned (0/1), abandoned holder, manifest or ''}. A lease that expired without a
# commit or EndTurn (another id) marks its turn abandoned; the mark ('lost') passes to the new lease
# until a commit deletes the lease.
_BEGIN_TURN = (
    _NOW
    + """
local l = redis.call('HMGET', KEYS[3], 'holder', 'id', 'until', 'lost', 'lost_holder')
local lost, lost_holder = 0, ''
if l[1] then
  local live = tonumber(l[3]) > now
  if live and l[1] ~= ARGV[1] then return {0, l[1], tonumber(l[3]) - now} end
  if l[4] == '1' then lost, lost_holder = 1, l[5] or '' end
  if not live and l[2] ~= ARGV[2] then lost, lost_holder = 1, l[1] end
end
local lease_ms = tonumber(ARGV[3])
local cur, m = 0, ''
local ttl = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  cur = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
  ttl = tonumber(redis.call('HGET', KEYS[2], 'ttl') or ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  if cur ~= tonumber(ARGV[4]) then m = redis.call('GET', KEYS[1]) end
end
redis.call('HSET', KEYS[3], 'holder', ARGV[1], 'id', ARGV[2], 'until', now + lease_ms,
  'lost', lost, 'lost_holder', lost_holder)
redis.call('PEXPIRE', KEYS[3], math.max(ttl, 2 * lease_ms))
return {1, cur, lost, lost_holder, m}
"""
)

# Give a lease back (only if it is still ARGV[1]); an abandoned mark stays, as an expired lease.
_END_TURN = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'lost') == '1' then
  redis.call('HSET', KEYS[1], 'until', 0, 'id', '')
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# Read a manifest and refresh both session keys with the session's own TTL.
_TOUCH_SESSION = """
local m = redis.call('GET', KEYS[1])
if not m then return false end
local ttl = redis.call('HGET', KEYS[2], 'ttl') or ARGV[1]
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return m
"""

_DELETE_SESSION = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return existed
"""

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


class RedisBackend:
    """``Backend`` over standalone Redis (``redis://``, ``rediss://``) or Redis Cluster."""

    def __init__(self, cfg: StoreConfig, metrics: StoreMetrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._cluster = cfg.is_cluster
        self.kind = "redis-cluster" if self._cluster else "redis"
        self._last_reap: dict[str, float] = {}
        common: dict[str, Any] = {
            "socket_timeout": cfg.redis_timeout_s,
            "socket_connect_timeout": min(cfg.redis_timeout_s, 2.0),
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
        self._reserve = self._client.register_script(_RESERVE)
        self._claim = self._client.register_script(_CLAIM)
        self._settle = self._client.register_script(_SETTLE)
        self._commit = self._client.register_script(_COMMIT)
        self._touch_session = self._client.register_script(_TOUCH_SESSION)
        self._begin_turn = self._client.register_script(_BEGIN_TURN)
        self._end_turn = self._client.register_script(_END_TURN)
        self._delete_session = self._client.register_script(_DELETE_SESSION)

    # -- the one place Redis errors are handled ---------------------------------------------------

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` with bounded, jittered retries; translate every failure into a StoreError."""
        deadline = time.monotonic() + self._cfg.redis_retry_budget_s
        client_deadline = deadline_var.get()
        if client_deadline is not None:
            deadline = min(deadline, client_deadline)
        failures = 0
        while True:
            try:
                return await fn()
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
                kind = _error_kind(exc)
                self._metrics.redis_errors.labels(kind=kind).inc()
                retryable = isinstance(exc, _RETRYABLE) or (
                    self._cluster and not isinstance(exc, rexc.ResponseError)
                )
                failures += 1
                delay = random.uniform(0, min(0.5, 0.02 * 2**failures))
                if not retryable or time.monotonic() + delay > deadline:
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
                await self._client.script_load(_CLAIM)
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
        keys = [manifest_redis_key(tenant, session_id), session_meta_redis_key(tenant, session_id)]

        async def run() -> bytes | None:
            value = await self._touch_session(keys=keys, args=[ttl_ms])
            return bytes(value) if value else None

        return await self._call("get_session", run)

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
        holder: str = "",
        lease_id: str = "",
    ) -> CommitOutcome:
        keys = self._session_keys(tenant, session_id)
        index = tenant_redis_key(tenant, "sessions")
        args: list[Any] = [expected_version, commit_id, manifest, ttl_ms, summary.turns, summary.tokens]
        args += [summary.raw_bytes, summary.stored_bytes, summary.updated_ms, holder, lease_id]

        async def run() -> CommitOutcome:
            # Index first: it is a superset of the live sessions (entries without a manifest are pruned).
            await self._client.zadd(index, {session_id: 0})
            reply = await self._commit(keys=keys, args=args)
            status = int(reply[0])
            if status == 3:
                raise Aborted(_leased_message(reply[1], reply[2]))
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
        keys = self._session_keys(tenant, session_id)
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

    @staticmethod
    def _session_keys(tenant: str, session_id: str) -> list[str]:
        return [
            manifest_redis_key(tenant, session_id),
            session_meta_redis_key(tenant, session_id),
            lease_redis_key(tenant, session_id),
        ]

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        keys = self._session_keys(tenant, session_id)

        async def run() -> bool:
            existed = await self._delete_session(keys=keys, args=[])
            await self._client.zrem(tenant_redis_key(tenant, "sessions"), session_id)
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
                pipe.exists(manifest_redis_key(tenant, sid))
                pipe.hmget(session_meta_redis_key(tenant, sid), fields)
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
                pipe.pttl(chunk_redis_key(tenant, name))
            pttls = await pipe.execute()
            args: list[Any] = [now_ms]
            for name, pttl in zip(names, pttls, strict=True):
                args += [name, int(pttl)]
            await self._settle(keys=keys, args=args)

    async def usage(self, tenant: str) -> TenantUsage:
        async def run() -> TenantUsage:
            await self._reap(tenant, force=True)
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(tenant_redis_key(tenant, "usage"), ("chunks", "raw", "stored"))
            pipe.zcard(tenant_redis_key(tenant, "sessions"))
            (chunks, raw, stored), sessions = await pipe.execute()
            return TenantUsage(int(sessions), _int(chunks), _int(raw), _int(stored))

        return await self._call("usage", run)

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

    async def ping(self) -> None:
        async def run() -> None:
            await self._client.ping()

        await self._call("ping", run)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a broken connection must not fail shutdown
            log.debug("closing redis client: %s", type(exc).__name__)
