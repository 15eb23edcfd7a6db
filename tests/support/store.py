"""The real GearKV store for tests: in-process (own thread and event loop) or as a child process.

``start_store_thread`` runs ``gearkv.store.server.start_store`` on 127.0.0.1:0 in a background thread
with its own asyncio loop, so sync and async clients (and sync or async tests) can all talk to it.
``StoreProcess`` runs ``python -m gearkv.cli store`` in a subprocess, for tests that SIGKILL the store.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from gearkv.store.local import ThreadedStore, free_port, health_serving, serve_in_thread

from support.redis_procs import wait_until

DEFAULT_TENANTS: Mapping[str, int] = {"alice": 0, "bob": 0}
_LIVE: set[StoreProcess] = set()  # killed at interpreter exit even if a test run is interrupted


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.cleanup()


def make_tokens(tenants: Mapping[str, int]) -> dict[str, str]:
    """A fresh random bearer token per tenant name."""
    return {name: f"gkv-{name}-{secrets.token_urlsafe(18)}" for name in tenants}


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class StoreHandle:
    """A running in-process store: its address, each tenant's token, the config it runs with."""

    runner: ThreadedStore
    tokens: dict[str, str]
    config: Any

    @property
    def address(self) -> str:
        return self.runner.address

    @property
    def server(self) -> Any:
        return self.runner.server

    def metadata(self, tenant: str = "alice") -> tuple[tuple[str, str], ...]:
        """gRPC call metadata authenticating as ``tenant``."""
        return auth_metadata(self.tokens[tenant])

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def aio_channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)

    def call(self, coro_fn: Any) -> Any:
        """Run ``coro_fn(server)`` on the store's loop (inspect backend/metrics) and return its result."""
        return self.runner.call(coro_fn)

    def stop(self, grace: float = 0.5) -> None:
        self.runner.stop(grace)


def store_config(
    redis_url: str,
    *,
    tenants: Mapping[str, int] = DEFAULT_TENANTS,
    tokens: Mapping[str, str] | None = None,
    **overrides: Any,
) -> tuple[Any, dict[str, str]]:
    """A ``StoreConfig`` for tests (port 0 on 127.0.0.1) and the plain tokens of its tenants."""
    from gearkv.store.config import StoreConfig, TenantConfig

    plain = dict(tokens) if tokens is not None else make_tokens(tenants)
    tenant_cfgs = tuple(
        TenantConfig(
            name=name,
            token_sha256=hashlib.sha256(plain[name].encode()).hexdigest(),
            quota_bytes=quota,
        )
        for name, quota in tenants.items()
    )
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "tenants": tenant_cfgs, **overrides}
    return StoreConfig(redis_url=redis_url, **settings), plain


def start_store_thread(cfg: Any, tokens: Mapping[str, str], backend: Any = None) -> StoreHandle:
    """Start the store for ``cfg`` in a daemon thread with its own event loop; return its handle."""
    return StoreHandle(serve_in_thread(cfg, backend=backend, timeout=30), dict(tokens), cfg)


@dataclass(eq=False)
class StoreProcess:
    """``gearkv store`` in a child process (for crash tests); tenants' tokens come from a tokens file."""

    redis_url: str
    tenants: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TENANTS))
    extra_args: tuple[str, ...] = ()
    port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gearkv-store-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metadata(self, tenant: str = "alice") -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.tokens[tenant])

    def start(self, timeout: float = 30.0) -> StoreProcess:
        if not self.tokens:
            self.tokens = make_tokens(self.tenants)
        tokens_file = self.dir / "tokens.json"
        spec = {
            name: {"token_sha256": hashlib.sha256(self.tokens[name].encode()).hexdigest(), "quota_bytes": q}
            for name, q in self.tenants.items()
        }
        tokens_file.write_text(json.dumps(spec))
        self.port = self.port or free_port()
        cmd = [sys.executable, "-m", "gearkv.cli", "store", "--redis-url", self.redis_url]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--tokens-file", str(tokens_file)]
        cmd += list(self.extra_args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARKV_")}
        log = open(self.dir / "store.log", "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        _LIVE.add(self)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"store exited: {self.log()[-2000:]}")
            return health_serving(self.address)

        wait_until(ready, timeout, f"store health SERVING on {self.address}", interval=0.05)
        return self

    def log(self) -> str:
        path = self.dir / "store.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no cleanup (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        self.kill()
        _LIVE.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)
