"""Shared fixtures: real redis-server processes (standalone and cluster) and the real store.

Fixtures (all sync, usable from sync and async tests):
    redis_server        a fresh standalone redis-server (function scope); ``.url``, ``.client()``,
                        ``.stop()``, ``.start()`` (same port), ``.restart()``
    redis_factory       ``redis_factory(extra_args=(...), password=None)`` -> another RedisServer
    redis_cluster       a shared 3-master/3-replica cluster (session scope; use unique ids per test)
    redis_cluster_factory  ``redis_cluster_factory()`` -> a private cluster (for destructive tests)
    store_factory       ``store_factory(redis_url, tenants={"alice": quota_bytes}, **StoreConfig overrides)``
                        -> StoreHandle (``.address``, ``.tokens``, ``.metadata(tenant)``, ``.stop()``),
                        running in-process on 127.0.0.1:0 in its own thread and event loop
    store               a store on ``redis_server`` with tenants "alice" and "bob" (no quotas)
    stub                a raw gRPC ``KVStoreStub`` on ``store`` (8 MiB messages), closed after the test
    store_process_factory  ``store_process_factory(redis_url, extra_args=(...))`` -> StoreProcess
                        (``gearkv store`` as a child process; ``.kill()`` sends SIGKILL)
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import settings
from support.kv import stub_for
from support.redis_procs import RedisCluster, RedisServer, start_cluster, start_redis
from support.store import DEFAULT_TENANTS, StoreHandle, StoreProcess, start_store_thread, store_config

# Property tests draw the same examples on every run (a red CI run always reproduces); set
# HYPOTHESIS_PROFILE=explore to search new random examples locally.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Unseeded torch draws in a test are the same on every run, so a failure always reproduces."""
    torch = sys.modules.get("torch")  # not imported here: store and SDK tests never load torch
    if torch is not None:
        torch.manual_seed(0)


def _require_redis() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server/redis-cli not on PATH (scripts/setup.sh installs them)")


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    _require_redis()
    servers: list[RedisServer] = []

    def make(extra_args: Sequence[str] = (), password: str | None = None) -> RedisServer:
        server = start_redis(extra_args, password=password)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    _require_redis()
    cluster = start_cluster()
    yield cluster
    cluster.cleanup()


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[..., RedisCluster]]:
    _require_redis()
    clusters: list[RedisCluster] = []

    def make(node_timeout_ms: int = 1000) -> RedisCluster:
        cluster = start_cluster(node_timeout_ms=node_timeout_ms)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.cleanup()


@pytest.fixture
def store_factory() -> Iterator[Callable[..., StoreHandle]]:
    handles: list[StoreHandle] = []

    def make(
        redis_url: str,
        *,
        tenants: Mapping[str, Any] = DEFAULT_TENANTS,
        tokens: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> StoreHandle:
        cfg, plain = store_config(redis_url, tenants=tenants, tokens=tokens, **overrides)
        handle = start_store_thread(cfg, plain)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def store(store_factory: Callable[..., StoreHandle], redis_server: RedisServer) -> StoreHandle:
    return store_factory(redis_server.url)


@pytest.fixture
def store_process_factory() -> Iterator[Callable[..., StoreProcess]]:
    procs: list[StoreProcess] = []

    def make(
        redis_url: str, *, tenants: Mapping[str, int] = DEFAULT_TENANTS, extra_args: Sequence[str] = ()
    ) -> StoreProcess:
        proc = StoreProcess(redis_url=redis_url, tenants=dict(tenants), extra_args=tuple(extra_args))
        procs.append(proc)
        return proc.start()

    yield make
    for proc in procs:
        proc.cleanup()


@pytest.fixture
def stub(store: StoreHandle) -> Iterator[Any]:
    channel, kv_stub = stub_for(store.address)
    yield kv_stub
    channel.close()
