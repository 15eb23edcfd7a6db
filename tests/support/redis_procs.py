"""Real ``redis-server`` processes for tests: standalone servers and a 3-master/3-replica cluster.

The servers themselves are ``gearkv.store.local.LocalRedis`` (127.0.0.1, free ports, private
temporary folder, polled with PING until they answer, stopped by PID, restartable on the same port);
this module only adds the test-side pieces: cleanup at interpreter exit, the cluster builder and
polling helpers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from gearkv.store.local import LocalRedis

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


@dataclass
class RedisCluster:
    """Six nodes (3 masters + 3 replicas) joined with ``redis-cli --cluster create``."""

    nodes: list[RedisServer]
    node_timeout_ms: int

    @property
    def url(self) -> str:
        """Seed URL understood by the store (``redis+cluster://``); any live node works as a seed."""
        seed = next(n for n in self.nodes if n.running)
        return f"redis+cluster://127.0.0.1:{seed.port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def info(self, node: RedisServer, section: str) -> dict[str, str]:
        with node.client(socket_timeout=1.0, decode_responses=True) as cli:
            raw = cli.execute_command("INFO", section)
        if isinstance(raw, dict):
            return {k: str(v) for k, v in raw.items()}
        return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        with node.client(socket_timeout=1.0, decode_responses=True) as cli:
            raw = cli.execute_command("CLUSTER", "INFO")
        if isinstance(raw, dict):
            return {k: str(v) for k, v in raw.items()}
        return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)

    def masters(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running and self.info(n, "replication").get("role") == "master"]

    def replicas(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running and self.info(n, "replication").get("role") == "slave"]

    def master_for_key(self, key: bytes | str) -> RedisServer:
        """The live master serving ``key``'s slot right now."""
        with self.masters()[0].client(decode_responses=True) as cli:
            slot = int(cli.execute_command("CLUSTER", "KEYSLOT", key))
        for node in self.masters():
            with node.client(decode_responses=True) as cli:
                for entry in cli.execute_command("CLUSTER", "SLOTS"):
                    lo, hi, primary = int(entry[0]), int(entry[1]), entry[2]
                    if lo <= slot <= hi:
                        port = int(primary[1])
                        return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def healthy(self) -> bool:
        """cluster_state:ok on every live node, 3 masters, and every replica's link up."""
        live = [n for n in self.nodes if n.running]
        if any(self.cluster_info(n).get("cluster_state") != "ok" for n in live):
            return False
        if len(self.masters()) != 3:
            return False
        return all(self.info(r, "replication").get("master_link_status") == "up" for r in self.replicas())

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(self.healthy, timeout, "redis cluster state ok with replicas in sync", interval=0.05)

    def wait_all_ok(self, timeout: float = 30.0) -> None:
        """Every live node reports cluster_state:ok (after a failover, before replicas re-sync)."""
        wait_until(
            lambda: all(self.cluster_info(n).get("cluster_state") == "ok" for n in self.nodes if n.running),
            timeout,
            "cluster_state:ok on every live node",
            interval=0.05,
        )

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def start_cluster(*, node_timeout_ms: int = 1000, attempts: int = 3) -> RedisCluster:
    """Start 6 cluster-enabled nodes, create the cluster, and wait until it is healthy (~2-3 s)."""
    last: Exception | None = None
    for _ in range(attempts):
        nodes: list[RedisServer] = []
        try:
            for _ in range(6):
                extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
                extra = (*extra, "--cluster-node-timeout", str(node_timeout_ms))
                node = RedisServer(extra_args=extra)  # its port's bus port (+10000) is free too
                nodes.append(node)
                node.start()
            cluster = RedisCluster(nodes=nodes, node_timeout_ms=node_timeout_ms)
            cmd = [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)]
            cmd += ["--cluster-replicas", "1", "--cluster-yes"]
            done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-1500:]!r}")
            cluster.wait_healthy()
            return cluster
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
            last = exc
            for node in nodes:
                node.cleanup()
    raise RuntimeError(f"could not start a redis cluster: {last}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
