"""The real GearKV store for tests: in-process (own thread and event loop) or as a child process.

``start_store_thread`` runs ``gearkv.store.server.start_store`` on 127.0.0.1:0 in a background thread
with its own asyncio loop, so sync and async clients (and sync or async tests) can all talk to it.
``StoreProcess`` runs ``python -m gearkv.cli store`` in a subprocess, for tests that SIGKILL the store.
Both are the launchers of ``gearkv.store.local``; this module adds the test tenants and helpers.
"""

from __future__ import annotations

import atexit
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from gearkv.store.local import LocalStore, ThreadedStore, serve_in_thread

DEFAULT_TENANTS: Mapping[str, int] = {"alice": 0, "bob": 0}
_LIVE: set[StoreProcess] = set()  # killed at interpreter exit even if a test run is interrupted


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.cleanup()


def make_tokens(tenants: Mapping[str, Any]) -> dict[str, str]:
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
    tenants: Mapping[str, Any] = DEFAULT_TENANTS,
    tokens: Mapping[str, str] | None = None,
    **overrides: Any,
) -> tuple[Any, dict[str, str]]:
    """A ``StoreConfig`` for tests (port 0 on 127.0.0.1) and the plain tokens of its tenants.

    ``tenants`` maps a name to its quota in bytes, or to ``TenantConfig`` fields (``{"rate_per_s": 5}``).
    """
    from gearkv.store.config import StoreConfig, TenantConfig

    plain = dict(tokens) if tokens is not None else make_tokens(tenants)
    tenant_cfgs = tuple(
        TenantConfig(
            name=name,
            token_sha256=hashlib.sha256(plain[name].encode()).hexdigest(),
            **({"quota_bytes": spec} if isinstance(spec, int) else dict(spec)),
        )
        for name, spec in tenants.items()
    )
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "tenants": tenant_cfgs, **overrides}
    return StoreConfig(redis_url=redis_url, **settings), plain


def start_store_thread(cfg: Any, tokens: Mapping[str, str], backend: Any = None) -> StoreHandle:
    """Start the store for ``cfg`` in a daemon thread with its own event loop; return its handle."""
    return StoreHandle(serve_in_thread(cfg, backend=backend, timeout=30), dict(tokens), cfg)


class StoreProcess(LocalStore):
    """``gearkv store`` in a child process (for crash tests): a ``LocalStore`` with the test tenants.

    ``kill()`` sends SIGKILL, ``start()`` brings it back on the same port; cleaned up at interpreter
    exit if a test run is interrupted.
    """

    def __init__(
        self,
        redis_url: str,
        tenants: Mapping[str, int] = DEFAULT_TENANTS,
        extra_args: Sequence[str] = (),
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            redis_url, "alice", tenants=tenants, tokens=tokens, grace=None, extra_args=extra_args
        )

    def metadata(self, tenant: str = "alice") -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.tokens[tenant])

    def start(self, timeout: float = 30.0) -> StoreProcess:
        _LIVE.add(self)
        super().start(timeout)
        return self

    def cleanup(self) -> None:
        self.kill()
        self.stop()
        _LIVE.discard(self)
