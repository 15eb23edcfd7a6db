"""Real ``redis-server`` processes for tests: standalone servers and a 3-master/3-replica cluster.

The servers themselves are ``gearkv.store.local.LocalRedis`` (127.0.0.1, free ports, private
temporary folder, polled with PING until they answer, stopped by PID, restartable on the same port);
the cluster is ``gearkv.store.local.LocalRedisCluster``; this module only adds the test-side pieces:
cleanup at interpreter exit and polling helpers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import time
from collections.abc import Callable, Sequence

import redis
from gearkv.store.local import LocalRedis, LocalRedisCluster

REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
_LIVE: set[RedisServer] = set()  # stopped at interpreter exit even if a test run is interrupted


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.cleanup()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class RedisServer(LocalRedis):
    """A ``LocalRedis`` that is cleaned up at interpreter exit if a test run is interrupted."""

    def start(self, timeout: float = 15.0, attempts: int = 5) -> RedisServer:
        _LIVE.add(self)
        super().start(timeout, attempts)
        return self

    def restart(self, *, kill: bool = False) -> RedisServer:
        self.stop(kill=kill)
        return self.start()

    def cleanup(self) -> None:
        self.close()
        _LIVE.discard(self)


def start_redis(extra_args: Sequence[str] = (), *, password: str | None = None) -> RedisServer:
    """Start a standalone server on a free port (retrying on a port race with other processes)."""
    return RedisServer(extra_args=extra_args, password=password).start()


class RedisCluster(LocalRedisCluster):
    """Six ``RedisServer`` nodes (3 masters + 3 replicas): ``gearkv.store.local.LocalRedisCluster``
    whose nodes are also cleaned up at interpreter exit if a test run is interrupted."""

    def _new_node(self, extra_args: Sequence[str]) -> RedisServer:
        return RedisServer(extra_args=extra_args)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(self.healthy, timeout, "redis cluster state ok with replicas in sync", interval=0.05)

    def close(self) -> None:
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            if isinstance(node, RedisServer):
                node.cleanup()
            else:
                node.close()

    def cleanup(self) -> None:
        self.close()


def start_cluster(*, node_timeout_ms: int = 1000, attempts: int = 3) -> RedisCluster:
    """Start 6 cluster-enabled nodes, create the cluster, and wait until it is healthy (~2-3 s)."""
    cluster = RedisCluster(node_timeout_ms=node_timeout_ms)
    cluster.start(attempts)
    return cluster


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
