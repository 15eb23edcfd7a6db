"""A local stack for the demo and the resume benchmark: redis-server and the store, cleaned up after.

``LocalRedis`` runs ``redis-server`` on a free loopback port with a private temporary folder (no
persistence) and stops it by PID. ``LocalStore`` runs the real store (``gearkv store``) as a child
process (or in a background thread with its own asyncio loop), authenticated with a fresh random
token, and stops it by PID.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LocalRedis", "LocalStore", "free_port"]


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
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
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0, attempts: int = 5) -> LocalRedis:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: redis-server is missing or would not start.
        """
        if self.executable is None:
            raise RuntimeError("redis-server is not on PATH (install Redis or pass --redis-url)")
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self.dir = Path(tempfile.mkdtemp(prefix="gearkv-demo-redis-"))
            args = [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ]
            log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
            finally:
                log.close()
            if self._wait_ready(timeout):
                return self
            last = (self.dir / "redis.log").read_text(errors="replace")[-500:]
            self.stop()
        raise RuntimeError(f"redis-server would not start: {last}")

    def _wait_ready(self, timeout: float) -> bool:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5) as cli:
                    if cli.ping():
                        return True
            except (redis.RedisError, OSError):
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LocalStore:
    """The GearKV store on 127.0.0.1:<free port>: a child process, or in this process.

    A child process (the default) is what production looks like and keeps the store's event loop
    from competing with the worker for this interpreter's GIL, which would inflate resume timings.
    """

    def __init__(self, redis_url: str, tenant: str = "demo", *, in_process: bool = False) -> None:
        self.redis_url = redis_url
        self.tenant = tenant
        self.token = f"gkv-{tenant}-{secrets.token_urlsafe(18)}"
        self.in_process = in_process
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def start(self, timeout: float = 60.0) -> LocalStore:
        """Start the store and wait until it serves.

        Raises:
            RuntimeError: the store exited or did not become healthy within ``timeout`` seconds.
        """
        return self._start_thread(timeout) if self.in_process else self._start_process(timeout)

    def _start_process(self, timeout: float) -> LocalStore:
        import json
        import sys

        self._dir = Path(tempfile.mkdtemp(prefix="gearkv-demo-store-"))
        tokens = self._dir / "tokens.json"
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        tokens.write_text(json.dumps({self.tenant: {"token_sha256": digest, "quota_bytes": 0}}))
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "gearkv.cli",
            "store",
            "--redis-url",
            self.redis_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tokens-file",
            str(tokens),
            "--grace",
            "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARKV_")}
        log = open(self._dir / "store.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self._dir / "store.log").read_text(errors="replace")[-1500:]
                self.stop()
                raise RuntimeError(f"the store exited: {tail}")
            if _serving(self.address):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the store did not become healthy within {timeout:.0f} s")

    def _start_thread(self, timeout: float) -> LocalStore:
        from gearkv.store.config import StoreConfig, TenantConfig
        from gearkv.store.server import start_store

        tenant = TenantConfig(self.tenant, hashlib.sha256(self.token.encode()).hexdigest())
        cfg = StoreConfig(redis_url=self.redis_url, host="127.0.0.1", port=0, tenants=(tenant,), grace_s=1.0)
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[tuple[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                try:
                    started.set_result(await start_store(cfg))
                except BaseException as exc:  # handed to the starting thread
                    started.set_exception(exc)

            boot_task = loop.create_task(boot())
            loop.run_forever()
            del boot_task
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="gearkv-local-store", daemon=True)
        self._thread.start()
        try:
            self.address, self._server = started.result(timeout=timeout)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            if self._server is not None:
                asyncio.run_coroutine_threadsafe(self._server.stop(1.0), loop).result(timeout=20)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=20)

    def __enter__(self) -> LocalStore:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
