"""A local stack on loopback: ``redis-server`` and the store, started on free ports and cleaned up after.

The one place that launches these for the demo, the benchmarks and the tests. ``LocalRedis`` runs
``redis-server`` with a private temporary folder (no persistence) and stops it by PID. ``LocalStore``
runs the real store (``gearkv store``) as a child process, or in this process via
``serve_in_thread``, authenticated with a fresh random token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from gearkv.store.auth import hash_token
from gearkv.store.config import StoreConfig, TenantConfig

__all__ = [
    "LocalRedis",
    "LocalStore",
    "ThreadedStore",
    "free_port",
    "health_serving",
    "port_is_free",
    "serve_in_thread",
    "stop_child",
]

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` right now (a hint; another process may race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(*, also_free_offset: int | None = None) -> int:
    """A port the kernel just handed out on 127.0.0.1 (never a fixed or default port).

    ``also_free_offset`` additionally requires ``port + offset`` to be free (a Redis Cluster node also
    listens on its bus port, port + 10000).
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if also_free_offset is None:
            return port
        if port + also_free_offset <= 65535 and port_is_free(port + also_free_offset):
            return port
    raise RuntimeError("no free loopback port found")


def stop_child(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; a no-op for a process that already exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _spawn(cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    finally:
        out.close()


def _tail(path: Path, chars: int) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def health_serving(address: str, timeout: float = 1.0) -> bool:
    """True when the gRPC health service at ``address`` reports SERVING (False if unreachable)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class LocalRedis:
    """``redis-server`` on 127.0.0.1:<free port>; ``url`` once started, ``stop()`` kills it by PID."""

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("redis-server")
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 15.0, attempts: int = 5) -> LocalRedis:
        """Start the server and wait until it answers PING (retrying on a port race).

        Raises:
            RuntimeError: redis-server is missing or would not start.
        """
        if self.executable is None:
            raise RuntimeError("redis-server is not on PATH (install Redis or pass --redis-url)")
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self.dir = Path(tempfile.mkdtemp(prefix="gearkv-redis-"))
            args = [self.executable, "--port", str(self.port), "--bind", LOOPBACK, "--save", ""]
            args += ["--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"]
            args += ["--loglevel", "warning"]
            self.proc = _spawn(args, self.dir / "redis.log", cwd=self.dir)
            if self._wait_ready(timeout):
                return self
            last = _tail(self.dir / "redis.log", 500)
            self.stop()
        raise RuntimeError(f"redis-server would not start: {last}")

    def _wait_ready(self, timeout: float) -> bool:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=0.5) as cli:
                    if cli.ping():
                        return True
            except (redis.RedisError, OSError):
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_child(proc)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ThreadedStore:
    """A store served by ``start_store`` on its own asyncio loop in a daemon thread of this process."""

    def __init__(self, address: str, server: Any, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.address = address
        self.server = server
        self.loop = loop
        self.thread = thread
        self._stopped = False

    def call(self, coro_fn: Callable[[Any], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run ``coro_fn(server)`` on the store's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(_await(coro_fn(self.server)), self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(timeout=grace + 20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=20)


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def serve_in_thread(cfg: StoreConfig, backend: Any = None, timeout: float = 60.0) -> ThreadedStore:
    """Start the store for ``cfg`` on a new event loop in a daemon thread; return once it serves."""
    from gearkv.store.server import start_store

    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[tuple[str, Any]] = concurrent.futures.Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                started.set_result(await start_store(cfg, backend=backend))
            except BaseException as exc:  # handed to the starting thread
                started.set_exception(exc)

        tasks = [loop.create_task(boot())]  # referenced while the loop runs
        loop.run_forever()
        del tasks
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="gearkv-local-store", daemon=True)
    thread.start()
    try:
        address, server = started.result(timeout=timeout)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        raise
    return ThreadedStore(address, server, loop, thread)


class LocalStore:
    """The GearKV store on 127.0.0.1:<free port> for one tenant: a child process, or in this process.

    A child process (the default) is what production looks like and keeps the store's event loop
    from competing with the caller for this interpreter's GIL, which would inflate client timings.
    """

    def __init__(
        self, redis_url: str, tenant: str = "demo", *, in_process: bool = False, token: str | None = None
    ) -> None:
        self.redis_url = redis_url
        self.tenant = tenant
        self.token = token or f"gkv-{tenant}-{secrets.token_urlsafe(18)}"
        self.in_process = in_process
        self.address = ""
        self._threaded: ThreadedStore | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def pid(self) -> int:
        """The process serving the store (this one when in-process)."""
        return self._proc.pid if self._proc is not None else os.getpid()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the child's log ("" in-process or once stopped)."""
        return _tail(self._dir / "store.log", chars) if self._dir is not None else ""

    def start(self, timeout: float = 60.0) -> LocalStore:
        """Start the store and wait until it serves.

        Raises:
            RuntimeError: the store exited or did not become healthy within ``timeout`` seconds.
        """
        if self.in_process:
            self._threaded = serve_in_thread(self._config(), timeout=timeout)
            self.address = self._threaded.address
            return self
        return self._start_process(timeout)

    def _config(self) -> StoreConfig:
        tenant = TenantConfig(self.tenant, hash_token(self.token))
        return StoreConfig(redis_url=self.redis_url, host=LOOPBACK, port=0, tenants=(tenant,), grace_s=1.0)

    def _start_process(self, timeout: float) -> LocalStore:
        self._dir = Path(tempfile.mkdtemp(prefix="gearkv-store-"))
        tokens = self._dir / "tokens.json"
        tokens.write_text(
            json.dumps({self.tenant: {"token_sha256": hash_token(self.token), "quota_bytes": 0}})
        )
        port = free_port()
        cmd = [sys.executable, "-m", "gearkv.cli", "store", "--redis-url", self.redis_url]
        cmd += ["--host", LOOPBACK, "--port", str(port), "--tokens-file", str(tokens), "--grace", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARKV_")}
        self._proc = _spawn(cmd, self._dir / "store.log", env=env)
        self.address = f"{LOOPBACK}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail(1500)
                self.stop()
                raise RuntimeError(f"the store exited: {tail}")
            if health_serving(self.address):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the store did not become healthy within {timeout:.0f} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_child(proc, timeout=15)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        threaded, self._threaded = self._threaded, None
        if threaded is not None:
            threaded.stop()

    def __enter__(self) -> LocalStore:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
