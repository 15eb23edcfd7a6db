"""A bandwidth-shaping TCP proxy on loopback: a slower network in front of a local server.

``ShapedLink(target_host, target_port, gbps, rtt_ms)`` listens on 127.0.0.1 on a port the kernel
hands out and forwards every connection to the target, both directions, each direction limited to
``gbps`` (a token bucket filling at ``gbps * 1e9 / 8`` bytes per second, one per direction shared by
all connections, as one link would be) and delayed by ``rtt_ms / 2`` one way. It runs in background
threads (plain blocking sockets: ``recv_into`` and ``sendall`` release the GIL, so it forwards
several GB/s on loopback, far more than an asyncio loop), so synchronous code (a gRPC client, a
benchmark) can dial ``link.address``::

    with ShapedLink("127.0.0.1", store_port, gbps=1.0) as link:
        client = KVStoreClient(link.address, token=token)
        ...
        print(link.bytes_to_client)  # what crossed the link from the store

``gbps=None`` forwards without a rate limit (what the proxy itself costs). Bytes forwarded are
counted per direction (``bytes_to_target``, ``bytes_to_client``); ``close()`` (and leaving the
``with`` block) stops listening and drops every connection.

A piece of data is released when the link would have finished sending it (start + size / rate), so
a transfer of n bytes on an idle link takes n / rate plus the proxy's own cost; an idle link banks
at most ``SLACK_S`` of sending time (at least one read), which absorbs the threads' sleep jitter.
"""

from __future__ import annotations

import collections
import contextlib
import math
import socket
import threading
import time
from types import TracebackType

__all__ = ["ShapedLink", "TokenBucket"]

LOOPBACK = "127.0.0.1"
READ_SIZE = 256 * 1024  # bytes per read: a shaped link releases data in pieces of at most this
SLACK_S = 0.001  # sending time an idle link may bank (see the module's docstring)


class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes; ``reserve(n)`` says how long to
    wait before n bytes may go (thread-safe; several connections may share one bucket).

    Kept as the time the link is busy until: n bytes start when the link is free (or, on a link
    idle for longer than ``burst / rate``, that long ago) and are through n / rate later. Time slept
    past that is not lost while the link stays busy, so the long-run rate is exact whatever the piece
    sizes and however late the sleeps wake.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst > 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._free_at = time.monotonic() - self.burst / self.rate
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Book ``n`` bytes on the link; the seconds until they are through (0: at once)."""
        with self._lock:
            now = time.monotonic()
            start = max(self._free_at, now - self.burst / self.rate)
            self._free_at = start + n / self.rate
            return max(0.0, self._free_at - now)

    def take(self, n: int) -> None:
        """Book ``n`` bytes and sleep until they are through."""
        wait = self.reserve(n)
        if wait > 0:
            time.sleep(wait)


class ShapedLink:
    """A TCP proxy on 127.0.0.1 to ``target_host:target_port``, each direction at ``gbps``.

    Args:
        target_host, target_port: where connections are forwarded.
        gbps: each direction's rate in gigabits per second (1e9 bits); None: unlimited.
        rtt_ms: round-trip time added, half in each direction (0: none beyond loopback's).
    """

    def __init__(self, target_host: str, target_port: int, gbps: float | None, rtt_ms: float = 0.0) -> None:
        if gbps is not None and not (gbps > 0 and math.isfinite(gbps)):
            raise ValueError(f"gbps must be a positive number (or None for unlimited), not {gbps!r}")
        if not (rtt_ms >= 0 and math.isfinite(rtt_ms)):
            raise ValueError(f"rtt_ms must be >= 0, not {rtt_ms!r}")
        self.target_host = target_host
        self.target_port = int(target_port)
        self.gbps = gbps
        self.rtt_ms = float(rtt_ms)
        self.bytes_to_target = 0  # client -> target
        self.bytes_to_client = 0  # target -> client
        self.connections = 0  # accepted so far
        self.port = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._buckets: tuple[TokenBucket | None, TokenBucket | None] = (None, None)
        rate = self.rate_bytes_per_s
        if rate is not None:
            burst = max(float(READ_SIZE), rate * SLACK_S)
            self._buckets = (TokenBucket(rate, burst), TokenBucket(rate, burst))

    @property
    def rate_bytes_per_s(self) -> float | None:
        return self.gbps * 1e9 / 8 if self.gbps is not None else None

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, to dial instead of the target."""
        if not self.port:
            raise RuntimeError("the link is not started")
        return f"{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        speed = f"{self.gbps:g} Gbps" if self.gbps is not None else "unlimited"
        return f"ShapedLink({self.target_host}:{self.target_port}, {speed}, rtt {self.rtt_ms:g} ms)"

    # --------------------------------------------------------------------------------------------

    def start(self) -> ShapedLink:
        """Start listening (a no-op while it runs); returns self."""
        if self._listener is not None:
            return self
        if self._closed.is_set():
            raise RuntimeError("a closed link does not start again")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        listener.listen(64)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self!r} accept", daemon=True)
        self._acceptor.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening and drop every connection; closing twice is harmless."""
        self._closed.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _shutdown(sock)
        deadline = time.monotonic() + timeout
        for thread in [self._acceptor, *threads]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ShapedLink:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object, name: str) -> None:
        thread = threading.Thread(target=self._run, args=(target, *args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run(self, target: object, *args: object) -> None:
        try:
            assert callable(target)
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed.is_set():
                    conn.close()
                    return
                self.connections += 1
                self._sockets.add(conn)
            self._spawn(self._connect, conn, name=f"{self!r} connection")

    def _connect(self, client: socket.socket) -> None:
        try:
            target = socket.create_connection((self.target_host, self.target_port), timeout=10)
        except OSError:
            self._forget(client)  # the client sees the connection close, as if the target refused it
            return
        target.settimeout(None)
        with self._lock:
            if self._closed.is_set():
                target.close()
                self._forget(client)
                return
            self._sockets.add(target)
        for sock in (client, target):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, target, self._forget)
        up, down = self._buckets
        self._spawn(self._pump, client, target, up, True, pair, name=f"{self!r} up")
        self._pump(target, client, down, False, pair)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
        for sock in socks:
            sock.close()

    def _pump(
        self, src: socket.socket, dst: socket.socket, bucket: TokenBucket | None, upstream: bool, pair: _Pair
    ) -> None:
        """Copy src to dst at the bucket's rate, ``rtt_ms / 2`` late; pass EOF on (half-close)."""
        delay = self.rtt_ms / 2000.0
        late: _Delayed | None = _Delayed(self, dst, delay, upstream, pair) if delay > 0 else None
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        ok = False
        try:
            while True:
                n = src.recv_into(buf)
                if n and bucket is not None:
                    bucket.take(n)
                if late is not None:
                    late.put(bytes(view[:n]))
                    if not n:
                        ok = late.wait()
                        return
                    continue
                if not n:
                    dst.shutdown(socket.SHUT_WR)
                    ok = True
                    return
                dst.sendall(view[:n])
                self._count(n, upstream)
        except OSError:
            return
        finally:
            if late is not None:
                late.stop()
            pair.done(ok)

    def _count(self, n: int, upstream: bool) -> None:
        with self._lock:
            if upstream:
                self.bytes_to_target += n
            else:
                self.bytes_to_client += n


class _Pair:
    """The two sockets of one proxied connection: closed when both directions ended, at once
    (both shut down) when one fails."""

    def __init__(self, client: socket.socket, target: socket.socket, forget: object) -> None:
        self.socks = (client, target)
        self._forget = forget
        self._left = 2
        self._lock = threading.Lock()

    def done(self, ok: bool) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if not ok and not last:
            for sock in self.socks:
                _shutdown(sock)
        if last:
            assert callable(self._forget)
            self._forget(*self.socks)


class _Delayed:
    """Writes pieces to ``dst`` from its own thread, each ``delay`` seconds after it was put."""

    def __init__(
        self, link: ShapedLink, dst: socket.socket, delay: float, upstream: bool, pair: _Pair
    ) -> None:
        self.link, self.dst, self.delay, self.upstream, self.pair = link, dst, delay, upstream, pair
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._ready = threading.Condition()
        self._stopped = False
        self.ok = False
        self._thread = threading.Thread(target=self._run, name=f"{link!r} delay", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        with self._ready:
            self._queue.append((time.monotonic() + self.delay, data))
            self._ready.notify()

    def wait(self) -> bool:
        """Wait until everything put was written (the EOF too); whether that went well."""
        self._thread.join()
        return self.ok

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._queue and not self._stopped:
                        self._ready.wait()
                    if not self._queue:
                        return
                    due, data = self._queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    self.dst.shutdown(socket.SHUT_WR)
                    self.ok = True
                    return
                self.dst.sendall(data)
                self.link._count(len(data), self.upstream)
        except OSError:
            for sock in self.pair.socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
