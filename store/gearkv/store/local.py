"""A local stack on loopback: ``redis-server`` and the store, started on free ports and cleaned up after.

The one place that launches these for the demo, the benchmarks and the tests. ``LocalRedis`` runs
``redis-server`` with a private temporary folder (no persistence), stops it by PID and can start it
again on the same port; ``LocalRedisCluster`` joins six of them into a 3-master / 3-replica Redis
Cluster. ``LocalPrometheus`` runs Prometheus scraping given targets (the tests and ``gearkv demo
--prometheus``). ``LocalStore`` runs the real store (``gearkv store``) as a child process
(killable and restartable on the same port), or in this process via ``serve_in_thread``,
authenticated with fresh random tokens.
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from gearkv.store.auth import hash_token
from gearkv.store.config import StoreConfig, TenantConfig

if TYPE_CHECKING:
    import redis

__all__ = [
    "LocalPrometheus",
    "LocalRedis",
    "LocalRedisCluster",
    "LocalStore",
    "PromQLError",
    "ThreadedStore",
    "free_port",
    "health_serving",
    "port_is_free",
    "serve_in_thread",
    "stop_child",
]

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
_CLUSTER_BUS_OFFSET = 10000  # a Redis Cluster node also listens on port + 10000


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


def stop_child(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0, *, kill: bool = False) -> None:
    """SIGTERM (SIGKILL when ``kill``), then SIGKILL after ``timeout`` seconds.

    A no-op for a process that already exited (it is still reaped).
    """
    if proc is None:
        return
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
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
    """``redis-server`` on 127.0.0.1 (a free port, or ``port``), restartable on the same port.

    ``stop()`` stops the process by PID (SIGTERM, or SIGKILL with ``kill=True``) and keeps the data
    folder, so ``start()`` brings it back on the same port (a Redis cluster node keeps its
    ``nodes.conf``); ``close()`` (and leaving the ``with`` block) also deletes the folder.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        port: int = 0,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.executable = executable or shutil.which("redis-server")
        self.port = port
        self.extra_args = tuple(extra_args)
        self.password = password
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync redis-py client for this server (no retries: fails fast)."""
        import redis as redis_py
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis_py.Redis(host=LOOPBACK, port=self.port, password=self.password, **kwargs)

    def args(self) -> list[str]:
        assert self.executable is not None and self.dir is not None
        args = [self.executable, "--port", str(self.port), "--bind", LOOPBACK, "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
        args += ["--protected-mode", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)

    def start(self, timeout: float = 15.0, attempts: int = 5) -> LocalRedis:
        """Start the server and wait until it answers PING; a no-op while it runs.

        Without a port yet, a free one is picked (retrying on a port race up to ``attempts`` times);
        once it has one (given, or from an earlier start), it starts on that port.

        Raises:
            RuntimeError: redis-server is missing or would not start.
        """
        if self.running:
            return self
        if self.executable is None:
            raise RuntimeError("redis-server is not on PATH (install Redis or pass --redis-url)")
        fixed = self.port != 0
        last = ""
        for _ in range(1 if fixed else attempts):
            if not fixed:
                self.port = free_port(also_free_offset=_CLUSTER_BUS_OFFSET if self._cluster else None)
            if self.dir is None:
                self.dir = Path(tempfile.mkdtemp(prefix="gearkv-redis-"))
            self.dir.mkdir(parents=True, exist_ok=True)
            self.proc = _spawn(self.args(), self.dir / "redis.log", cwd=self.dir)
            if self._wait_ready(timeout):
                return self
            last = _tail(self.dir / "redis.log", 2000)
            if fixed:
                self.stop(kill=True)
            else:
                self.close()
                self.port = 0
        raise RuntimeError(f"redis-server would not start: {last}")

    @property
    def _cluster(self) -> bool:
        return "--cluster-enabled" in self.extra_args

    def _wait_ready(self, timeout: float) -> bool:
        import redis as redis_py

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with self.client(socket_connect_timeout=0.5, socket_timeout=0.5) as cli:
                    if cli.ping():
                        return True
            except (redis_py.RedisError, OSError):
                pass
            time.sleep(0.02)
        return False

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the process by PID (SIGKILL when ``kill``); the data folder is kept for a restart."""
        proc, self.proc = self.proc, None
        stop_child(proc, timeout=timeout, kill=kill)

    def restart(self, *, kill: bool = False) -> LocalRedis:
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        """Kill the process and delete its data folder."""
        self.stop(kill=True)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.close()


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` (Redis and socket errors count as false); TimeoutError naming ``what``."""
    import redis as redis_py

    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis_py.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def _info_dict(raw: object) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)


class LocalRedisCluster:
    """Six ``redis-server`` nodes on free loopback ports joined into 3 masters + 3 replicas.

    ``start()`` starts the nodes (each port's bus port, port + 10000, is free too), runs
    ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`` and waits until every node
    reports ``cluster_state:ok`` and every replica's link is up (~2-3 s); on a port race or a failed
    create it starts over (``attempts`` times). Nodes are ``LocalRedis`` objects: stop one by PID to
    kill a master, ``start()`` it again on the same port. ``close()`` (and leaving the ``with``
    block) kills every node and deletes their folders. ``extra_args`` go to every node.
    """

    def __init__(self, *, node_timeout_ms: int = 1000, extra_args: Sequence[str] = ()) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.nodes: list[LocalRedis] = []

    def _new_node(self, extra_args: Sequence[str]) -> LocalRedis:
        """One (not yet started) node; a subclass may hand out its own LocalRedis subclass."""
        return LocalRedis(extra_args=extra_args)

    @property
    def url(self) -> str:
        """Seed URL understood by the store (``redis+cluster://``); any live node works as a seed."""
        seed = next(n for n in self.nodes if n.running)
        return f"redis+cluster://{LOOPBACK}:{seed.port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, n.port) for n in self.nodes]

    def info(self, node: LocalRedis, section: str) -> dict[str, str]:
        with node.client(socket_timeout=1.0, decode_responses=True) as cli:
            return _info_dict(cli.execute_command("INFO", section))

    def cluster_info(self, node: LocalRedis) -> dict[str, str]:
        with node.client(socket_timeout=1.0, decode_responses=True) as cli:
            return _info_dict(cli.execute_command("CLUSTER", "INFO"))

    def masters(self) -> list[LocalRedis]:
        return [n for n in self.nodes if n.running and self.info(n, "replication").get("role") == "master"]

    def replicas(self) -> list[LocalRedis]:
        return [n for n in self.nodes if n.running and self.info(n, "replication").get("role") == "slave"]

    def node_id(self, node: LocalRedis) -> str:
        """The node's cluster id (``CLUSTER MYID``)."""
        with node.client(socket_timeout=1.0, decode_responses=True) as cli:
            return str(cli.execute_command("CLUSTER", "MYID"))

    def slot_of(self, key: bytes | str) -> int:
        """The hash slot of ``key`` (asked of a live master)."""
        with self.masters()[0].client(socket_timeout=1.0, decode_responses=True) as cli:
            return int(cli.execute_command("CLUSTER", "KEYSLOT", key))

    def master_for_slot(self, slot: int) -> LocalRedis:
        """The live master serving ``slot`` right now."""
        for node in self.masters():
            with node.client(socket_timeout=1.0, decode_responses=True) as cli:
                for entry in cli.execute_command("CLUSTER", "SLOTS"):
                    lo, hi, primary = int(entry[0]), int(entry[1]), entry[2]
                    if lo <= slot <= hi:
                        port = int(primary[1])
                        return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def master_for_key(self, key: bytes | str) -> LocalRedis:
        """The live master serving ``key``'s slot right now."""
        return self.master_for_slot(self.slot_of(key))

    def healthy(self) -> bool:
        """cluster_state:ok on every live node, 3 masters, and every replica's link up."""
        live = [n for n in self.nodes if n.running]
        if any(self.cluster_info(n).get("cluster_state") != "ok" for n in live):
            return False
        if len(self.masters()) != 3:
            return False
        return all(self.info(r, "replication").get("master_link_status") == "up" for r in self.replicas())

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _wait_until(self.healthy, timeout, "redis cluster state ok with replicas in sync")

    def wait_all_ok(self, timeout: float = 30.0) -> None:
        """Every live node reports cluster_state:ok (after a failover, before replicas re-sync)."""
        _wait_until(
            lambda: all(self.cluster_info(n).get("cluster_state") == "ok" for n in self.nodes if n.running),
            timeout,
            "cluster_state:ok on every live node",
        )

    def start(self, attempts: int = 3) -> LocalRedisCluster:
        """Start the six nodes, create the cluster and wait until it is healthy.

        Raises:
            RuntimeError: redis-server or redis-cli is missing, or no attempt gave a healthy cluster.
        """
        if self.nodes:
            return self
        cli_exe = shutil.which("redis-cli")
        if cli_exe is None:
            raise RuntimeError("redis-cli is not on PATH (install Redis)")
        extra: tuple[str, ...] = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        extra = (*extra, "--cluster-node-timeout", str(self.node_timeout_ms), *self.extra_args)
        last: Exception | None = None
        for _ in range(attempts):
            try:
                for _ in range(6):
                    node = self._new_node(extra)  # its port's bus port (+10000) is free too
                    self.nodes.append(node)
                    node.start()
                cmd = [cli_exe, "--cluster", "create", *(f"{LOOPBACK}:{n.port}" for n in self.nodes)]
                cmd += ["--cluster-replicas", "1", "--cluster-yes"]
                done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-1500:]!r}")
                self.wait_healthy()
                return self
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
                last = exc
                self.close()
        raise RuntimeError(f"could not start a redis cluster: {last}")

    def close(self) -> None:
        """Kill every node and delete its folder."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.close()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
    """The GearKV store on 127.0.0.1 (a free port, or ``port``): a child process, or in this process.

    A child process (the default) is what production looks like and keeps the store's event loop
    from competing with the caller for this interpreter's GIL, which would inflate client timings.
    Its tenants' tokens reach it in a tokens file; ``kill()`` (SIGKILL, a crash) or ``terminate()``
    end it, and ``start()`` brings it back on the same port with the same tokens. ``stop()`` (and
    leaving the ``with`` block) ends it and deletes its folder.

    ``tenants`` maps tenant names to quota bytes (0: none); by default the single ``tenant``.
    ``tokens`` gives their plain tokens (fresh random ones otherwise); ``token`` is ``tenant``'s.
    ``grace`` is passed as ``--grace`` (None: the CLI default); ``extra_args`` follow it.
    """

    def __init__(
        self,
        redis_url: str,
        tenant: str = "demo",
        *,
        in_process: bool = False,
        token: str | None = None,
        tenants: Mapping[str, int] | None = None,
        tokens: Mapping[str, str] | None = None,
        port: int = 0,
        grace: float | None = 1.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.redis_url = redis_url
        self.tenant = tenant
        self.tenants: dict[str, int] = dict(tenants) if tenants is not None else {tenant: 0}
        self.tokens: dict[str, str] = dict(tokens or {})
        if token is not None:
            self.tokens[tenant] = token
        for name in self.tenants:
            self.tokens.setdefault(name, f"gkv-{name}-{secrets.token_urlsafe(18)}")
        self.in_process = in_process
        self.port = port
        self.grace = grace
        self.extra_args = tuple(extra_args)
        self._threaded: ThreadedStore | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self._address = ""

    @property
    def token(self) -> str:
        """The plain token of ``tenant``."""
        return self.tokens[self.tenant]

    @property
    def address(self) -> str:
        if self._threaded is not None:
            return self._threaded.address
        return self._address

    @property
    def pid(self) -> int:
        """The process serving the store (this one when in-process)."""
        return self.proc.pid if self.proc is not None else os.getpid()

    def log(self) -> str:
        """The child's whole log ("" in-process or once stopped)."""
        path = self.dir / "store.log" if self.dir is not None else None
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the child's log ("" in-process or once stopped)."""
        return self.log()[-chars:]

    def start(self, timeout: float = 60.0) -> LocalStore:
        """Start the store and wait until it serves.

        Raises:
            RuntimeError: the store exited or did not become healthy within ``timeout`` seconds.
        """
        if self.in_process:
            self._threaded = serve_in_thread(self._config(), timeout=timeout)
            return self
        return self._start_process(timeout)

    def _config(self) -> StoreConfig:
        tenants = tuple(
            TenantConfig(name, hash_token(self.tokens[name]), quota_bytes=quota)
            for name, quota in self.tenants.items()
        )
        settings: dict[str, Any] = {"grace_s": self.grace} if self.grace is not None else {}
        return StoreConfig(
            redis_url=self.redis_url, host=LOOPBACK, port=self.port, tenants=tenants, **settings
        )

    def _start_process(self, timeout: float) -> LocalStore:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="gearkv-store-"))
        tokens = self.dir / "tokens.json"
        spec = {
            name: {"token_sha256": hash_token(self.tokens[name]), "quota_bytes": quota}
            for name, quota in self.tenants.items()
        }
        tokens.write_text(json.dumps(spec))
        self.port = self.port or free_port()
        cmd = [sys.executable, "-m", "gearkv.cli", "store", "--redis-url", self.redis_url]
        cmd += ["--host", LOOPBACK, "--port", str(self.port), "--tokens-file", str(tokens)]
        if self.grace is not None:
            cmd += ["--grace", f"{self.grace:g}"]
        cmd += list(self.extra_args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARKV_")}
        self.proc = _spawn(cmd, self.dir / "store.log", env=env)
        self._address = f"{LOOPBACK}:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the store exited: {self.log_tail(2000)}")
            if health_serving(self._address):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the store did not become healthy on {self._address} within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the child: no graceful shutdown, no cleanup (a crash); ``start()`` brings it back."""
        stop_child(self.proc, kill=True)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM the child and wait; returns its exit code."""
        if self.proc is None:
            raise RuntimeError("the store process was not started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """End the store (SIGTERM, then SIGKILL) and delete its folder."""
        proc, self.proc = self.proc, None
        stop_child(proc, timeout=15)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        threaded, self._threaded = self._threaded, None
        if threaded is not None:
            threaded.stop()

    def __enter__(self) -> LocalStore:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PromQLError(RuntimeError):
    """Prometheus answered a query with an error (its type and message are in the text)."""


class LocalPrometheus:
    """``prometheus`` on 127.0.0.1 (a free port), scraping ``targets`` into a private temporary folder.

    ``targets`` maps a job name to ``host:port`` addresses serving ``/metrics``; ``rule_files`` are
    loaded (alerting and recording rules) and evaluated every ``interval_s``, which is also the scrape
    interval. ``query`` runs an instant PromQL query through the HTTP API; ``rules`` lists every rule
    with its health. ``close()`` (and leaving the ``with`` block) stops it and deletes its folder.
    """

    def __init__(
        self,
        targets: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[str | Path] = (),
        interval_s: float = 1.0,
        executable: str | None = None,
    ) -> None:
        self.executable = executable or shutil.which("prometheus")
        self.targets = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        self.interval_s = interval_s
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def config(self) -> str:
        """The prometheus.yml it runs with (JSON is YAML)."""
        interval = f"{max(int(self.interval_s * 1000), 100)}ms"
        spec = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in self.targets.items()
            ],
        }
        return json.dumps(spec, indent=2)

    def start(self, timeout: float = 30.0) -> LocalPrometheus:
        """Start Prometheus and wait until it is ready.

        Raises:
            RuntimeError: prometheus is not installed or would not start.
        """
        if self.proc is not None and self.proc.poll() is None:
            return self
        if self.executable is None:
            raise RuntimeError(
                "prometheus is not on PATH (apt-get install prometheus; scripts/setup.sh does)"
            )
        self.dir = self.dir or Path(tempfile.mkdtemp(prefix="gearkv-prometheus-"))
        (self.dir / "prometheus.yml").write_text(self.config())
        last = ""
        for _ in range(3):  # a port race: another process took the free port first
            self.port = free_port()
            cmd = [self.executable, f"--config.file={self.dir / 'prometheus.yml'}"]
            cmd += [
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
            ]
            cmd += ["--log.level=warn", "--storage.tsdb.retention.time=1d"]
            self.proc = _spawn(cmd, self.dir / "prometheus.log", cwd=self.dir)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._get("/-/ready", check=False) is not None:
                    return self
                time.sleep(0.1)
            last = _tail(self.dir / "prometheus.log", 2000)
            stop_child(self.proc, kill=True)
        raise RuntimeError(f"prometheus would not start: {last}")

    def _get(self, path: str, params: Mapping[str, str] | None = None, *, check: bool = True) -> Any:
        import urllib.error
        import urllib.parse
        import urllib.request

        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as reply:
                body = reply.read()
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            body = exc.read()
        except OSError:
            if check:
                raise
            return None
        if path.startswith("/-/"):
            return body
        data = json.loads(body)
        if data.get("status") != "success":
            raise PromQLError(f"{data.get('errorType', 'error')}: {data.get('error', body[:300])}")
        return data["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now: the result's series (``metric`` labels and ``value``).

        Raises:
            PromQLError: the expression does not parse or evaluate.
        """
        data = self._get("/api/v1/query", {"query": expr})
        result: list[dict[str, Any]] = (
            data["result"]
            if data["resultType"] in ("vector", "matrix")
            else [{"metric": {}, "value": data["result"]}]
        )
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now (None when it returns no series)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self._get(f"/api/v1/label/{label}/values", {"match[]": match}))

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its ``health`` ("ok", "err", "unknown"), ``lastError`` and group."""
        out = []
        for group in self._get("/api/v1/rules")["groups"]:
            out += [dict(rule, group=group["name"]) for rule in group["rules"]]
        return out

    def wait_until_scraped(self, timeout: float = 30.0) -> None:
        """Wait until every target was scraped successfully at least once."""
        expected = sum(len(a) for a in self.targets.values())

        def all_up() -> bool:
            return len(self.query("up == 1")) >= expected

        deadline = time.monotonic() + timeout
        while not all_up():
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus did not scrape all {expected} targets within {timeout:.0f} s")
            time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.dir / "prometheus.log", chars) if self.dir is not None else ""

    def close(self) -> None:
        """Stop Prometheus and delete its folder."""
        proc, self.proc = self.proc, None
        stop_child(proc, timeout=15)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> LocalPrometheus:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
