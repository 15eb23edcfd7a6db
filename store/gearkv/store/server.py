"""The grpc.aio server: KVStore + health + reflection, graceful shutdown on SIGTERM.

``start_store(cfg)`` binds and starts everything and returns ``(address, StoreServer)`` (port 0 picks
a free port: tests use it); ``serve(cfg)`` runs until SIGTERM/SIGINT and shuts down gracefully.
The port is bound with ``grpc.so_reuseport`` off, so a second server on the same port fails to start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import grpc
from gearkv.api import wire
from gearkv.api.v1 import kvstore_pb2, kvstore_pb2_grpc
from gearkv.store.auth import DEFAULT_TENANT, Authenticator
from gearkv.store.backend import Backend
from gearkv.store.config import StoreConfig, redacted_url
from gearkv.store.errors import StoreError
from gearkv.store.fairness import Fairness, tenant_limits
from gearkv.store.interceptors import StoreInterceptor
from gearkv.store.metrics import StoreMetrics, serve_metrics
from gearkv.store.redis_backend import RedisBackend
from gearkv.store.servicer import KVStoreServicer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

log = logging.getLogger("gearkv.store")
SERVICE_NAME = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"].full_name
HEALTH_PROBE_S = 2.0
METRICS_REFRESH_S = 5.0  # the live gauges (bytes held now, Redis memory) are read from Redis this often
# Dedup savings read every session's summary (up to 20,000 per tenant): not every 5 s.
DEDUP_REFRESH_S = 60.0


def add_kvstore(servicer: KVStoreServicer, server: grpc.aio.Server) -> None:
    """Register the KVStore service as the generated code does, but with the chunk RPCs' payload
    parts going through ``gearkv.api.wire`` (one copy each way instead of protobuf's three)."""
    captured: dict[str, grpc.RpcMethodHandler] = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: object) -> None:
            pass

        def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
            captured.update(handlers)

    kvstore_pb2_grpc.add_KVStoreServicer_to_server(servicer, _Capture())
    captured["PutChunk"] = grpc.stream_unary_rpc_method_handler(
        servicer.PutChunk,
        request_deserializer=wire.decode_put_part,
        response_serializer=kvstore_pb2.PutChunkResponse.SerializeToString,
    )
    captured["GetChunk"] = grpc.unary_stream_rpc_method_handler(
        servicer.GetChunk,
        request_deserializer=kvstore_pb2.GetChunkRequest.FromString,
        response_serializer=wire.encode_get_part,
    )
    captured["PutSmallChunk"] = grpc.unary_unary_rpc_method_handler(
        servicer.PutSmallChunk,
        request_deserializer=wire.decode_put_part,
        response_serializer=kvstore_pb2.PutChunkResponse.SerializeToString,
    )
    captured["GetSmallChunk"] = grpc.unary_unary_rpc_method_handler(
        servicer.GetSmallChunk,
        request_deserializer=kvstore_pb2.GetChunkRequest.FromString,
        response_serializer=wire.encode_get_part,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, captured),))
    server.add_registered_method_handlers(SERVICE_NAME, captured)


class StartupError(RuntimeError):
    """The store cannot start as configured; the message says what to fix (no traceback)."""


class BindError(StartupError):
    """The gRPC port could not be bound (in use by another server, or not permitted)."""


class StoreServer:
    """A running store: the grpc.aio server, its backend, metrics and health state."""

    def __init__(
        self,
        cfg: StoreConfig,
        server: grpc.aio.Server,
        backend: Backend,
        metrics: StoreMetrics,
        health_servicer: health.aio.HealthServicer,
        interceptor: StoreInterceptor,
    ) -> None:
        self.cfg = cfg
        self.grpc_server = server
        self.backend = backend
        self.metrics = metrics
        self.health = health_servicer
        self.interceptor = interceptor
        self._probe: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._dedup_at = -DEDUP_REFRESH_S  # time.monotonic() of the last dedup refresh
        self._serving: bool | None = None
        self._stopped = False

    async def _probe_once(self) -> None:
        started = time.perf_counter()
        try:
            await self.backend.ping()
            serving = True
            self.metrics.redis_ping.observe(time.perf_counter() - started)
        except StoreError:
            serving = False
        self.metrics.redis_up.set(1 if serving else 0)
        if serving != self._serving:
            self._serving = serving
            ok, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await self.health.set(name, ok if serving else down)
            if not serving:
                log.warning(
                    "backend unreachable (%s at %s); health set to NOT_SERVING until it answers",
                    self.backend.kind,
                    redacted_url(self.cfg.redis_url),
                )

    @property
    def tenants(self) -> list[str]:
        return [t.name for t in self.cfg.tenants] if self.cfg.auth else [DEFAULT_TENANT]

    async def refresh_metrics(self, *, dedup: bool = True) -> None:
        """Read what is held now from the backend into the live gauges (skipped while it is down);
        ``dedup`` also re-reads the session summaries behind the dedup-savings gauge."""
        if not self._serving:
            return
        m = self.metrics
        for tenant in self.tenants:
            try:
                usage = await self.backend.usage(tenant)  # settles expired data first
            except StoreError as exc:
                log.debug("metrics refresh of tenant %s skipped: %s", tenant, exc)
                continue
            m.live_raw_bytes.labels(tenant=tenant).set(usage.raw_bytes)
            m.live_stored_bytes.labels(tenant=tenant).set(usage.stored_bytes)
            m.live_manifest_bytes.labels(tenant=tenant).set(usage.manifest_bytes)
            m.live_chunks.labels(tenant=tenant).set(usage.chunks)
            m.live_sessions.labels(tenant=tenant).set(usage.sessions)
            if isinstance(self.backend, RedisBackend) and dedup:
                try:
                    _, _, referenced = await self.backend.session_totals(tenant)
                except StoreError:
                    continue
                m.dedup_saved_bytes.labels(tenant=tenant).set(max(0, referenced - usage.stored_bytes))
        if isinstance(self.backend, RedisBackend):
            try:
                memory = await self.backend.redis_memory()
                used, length = await self.backend.sample_chunk_memory()
            except StoreError as exc:
                log.debug("metrics refresh of Redis memory skipped: %s", exc)
                return
            m.redis_used_memory.set(memory.used_memory)
            m.redis_maxmemory.set(memory.maxmemory)
            m.redis_evicted_keys.set(memory.evicted_keys)
            m.redis_chunk_overhead.set(used / length if length else 0.0)
        m.refresh_timestamp.set_to_current_time()

    async def _refresh(self) -> None:
        while not self._stopped:
            dedup = time.monotonic() - self._dedup_at >= DEDUP_REFRESH_S
            if dedup:
                self._dedup_at = time.monotonic()
            await self.refresh_metrics(dedup=dedup)
            await asyncio.sleep(METRICS_REFRESH_S)

    async def _sweep(self) -> None:
        """Release each tenant's bookkeeping of expired data, whether or not anyone reads stats."""
        tenants = self.tenants
        while not self._stopped:
            await asyncio.sleep(self.cfg.sweep_interval_s)
            for tenant in tenants:
                try:
                    await self.backend.sweep(tenant)
                except StoreError as exc:
                    log.debug("sweep of tenant %s skipped: %s", tenant, exc)

    async def _probe_backend(self) -> None:
        """Report NOT_SERVING in health checks while Redis is unreachable."""
        while not self._stopped:
            await asyncio.sleep(HEALTH_PROBE_S)
            await self._probe_once()

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` s, then close the backend."""
        if self._stopped:
            return
        self._stopped = True
        await _cancel_all([t for t in (self._probe, self._sweeper, self._refresher) if t is not None])
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(self.cfg.grace_s if grace is None else grace)
        await self.backend.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def _cancel_all(tasks: list[asyncio.Task[None]], attempts: int = 4, wait_s: float = 0.5) -> None:
    """Cancel the background loops and wait for them, cancelling again if a cancellation was lost.

    A cancellation that lands while redis-py's own socket timeout is cancelling the task can be taken
    for that timeout and swallowed (the loop then sleeps on, and shutdown waited 20 s for it).
    """
    for _ in range(attempts):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=wait_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("background task %s ended with %s", task.get_name(), type(task.exception()).__name__)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def _credentials(cfg: StoreConfig) -> grpc.ServerCredentials | None:
    """TLS credentials, checked up front: grpc reports a bad pair only as a failed bind."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    pair = (_read(cfg.tls_key, "--tls-key"), _read(cfg.tls_cert, "--tls-cert"))
    client_ca = _read(cfg.tls_client_ca, "--tls-client-ca") if cfg.tls_client_ca else None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except ssl.SSLError as exc:
        raise StartupError(
            f"--tls-cert {cfg.tls_cert!r} and --tls-key {cfg.tls_key!r} are not a PEM certificate and "
            f"its private key ({exc.reason or 'they do not match'})"
        ) from None
    if client_ca is not None:
        try:
            ssl.create_default_context(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise StartupError(f"--tls-client-ca {cfg.tls_client_ca!r} holds no PEM CA certificate") from None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start_store(
    cfg: StoreConfig, *, registry: CollectorRegistry | None = None, backend: Backend | None = None
) -> tuple[str, StoreServer]:
    """Build, bind and start the store; returns ``("host:port", server)``.

    ``backend`` replaces the Redis backend (tests of the server machinery use an in-memory one).

    Raises:
        BindError: the port is taken (``so_reuseport`` is off) or cannot be bound.
        StartupError: a TLS file is missing or unreadable, or the certificate and key do not match.
    """
    creds = _credentials(cfg)
    tenants = [t.name for t in cfg.tenants] if cfg.auth else [DEFAULT_TENANT]
    metrics = StoreMetrics(registry if registry is not None else CollectorRegistry(), tenants)
    if backend is None:
        backend = RedisBackend(cfg, metrics)
    interceptor = StoreInterceptor(
        Authenticator(cfg.tenants, enabled=cfg.auth),
        metrics,
        Fairness(cfg.max_in_flight, tenant_limits(cfg)),
        cfg.stream_idle_s,
    )
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
        ],
    )
    add_kvstore(KVStoreServicer(cfg, backend, metrics), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    # NOT_SERVING (the server and KVStore alike) until the backend first answers: a store whose Redis
    # is down must not look healthy while it starts.
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as exc:
        await backend.close()
        raise BindError(f"cannot bind {address} (in use by another server?)") from exc
    if port == 0:
        await backend.close()
        raise BindError(f"cannot bind {address} (in use by another server?)")
    await server.start()
    store = StoreServer(cfg, server, backend, metrics, health_servicer, interceptor)
    await store._probe_once()
    store._probe = asyncio.create_task(store._probe_backend())
    store._sweeper = asyncio.create_task(store._sweep())
    store._refresher = asyncio.create_task(store._refresh())
    if cfg.metrics_port is not None:
        serve_metrics(metrics.registry, cfg.metrics_port, cfg.host)
    bound = f"{cfg.host}:{port}"
    log.info(
        "gearkv store listening on %s (backend %s at %s, tls %s, authentication %s)",
        bound,
        backend.kind,
        redacted_url(cfg.redis_url),
        "on" if creds is not None else "off",
        f"on ({len(cfg.tenants)} tenants)" if cfg.auth else "OFF",
    )
    return bound, store


async def serve(cfg: StoreConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully; returns the process exit code."""
    # Handlers first: health turns SERVING inside start_store, and a SIGTERM that follows it at once
    # must still shut down gracefully rather than kill the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        _, store = await start_store(cfg)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    await stop.wait()
    log.info("shutting down (grace %.1fs)", cfg.grace_s)
    await store.stop()
    return 0
