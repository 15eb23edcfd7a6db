"""`gearkv.bench.shaped_link.ShapedLink`: a loopback TCP proxy holding each direction to a set rate."""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from gearkv.bench.shaped_link import ShapedLink, TokenBucket

MB = 1_000_000


class _Handler(socketserver.BaseRequestHandler):
    """One line ``MODE N\\n`` first. ``sink``: read to EOF, answer the SHA-256 of what came;
    ``source N``: send N bytes (zeros) and close; ``echo``: send back everything, then close."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while not head.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                return
            head += byte
        mode, _, arg = head.decode().strip().partition(" ")
        if mode == "source":
            left = int(arg)
            block = bytes(1 << 20)
            while left > 0:
                sock.sendall(block[: min(left, len(block))])
                left -= min(left, len(block))
            sock.shutdown(socket.SHUT_WR)
            return
        digest = hashlib.sha256()
        while data := sock.recv(1 << 20):
            if mode == "echo":
                sock.sendall(data)
            else:
                digest.update(data)
        if mode == "sink":
            sock.sendall(digest.hexdigest().encode())
        sock.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def server() -> Iterator[int]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def _recv_all(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)


def _upload(port: int, payload: bytes) -> tuple[float, str]:
    """Seconds to push ``payload`` to the sink until it confirmed all of it; the digest it saw."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"sink\n")
        t0 = time.perf_counter()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        digest = _recv_all(sock).decode()
        return time.perf_counter() - t0, digest


def _download(port: int, size: int) -> tuple[float, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        t0 = time.perf_counter()
        sock.sendall(f"source {size}\n".encode())
        got = 0
        while data := sock.recv(1 << 20):
            got += len(data)
        return time.perf_counter() - t0, got


def test_token_bucket_holds_the_long_run_rate() -> None:
    bucket = TokenBucket(rate=1000.0, burst=100.0)
    assert bucket.reserve(100) == 0.0  # an idle link's banked 0.1 s: the burst goes at once
    wait = bucket.reserve(500)
    assert 0.49 < wait < 0.51  # then 500 bytes take 0.5 s at 1000 B/s
    assert 0.99 < bucket.reserve(500) < 1.01  # booked after the first: through 1 s from now
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


@pytest.mark.parametrize("gbps", [0.5, 1.0])
def test_rate_is_held_each_direction(server: int, gbps: float) -> None:
    size = int(20 * MB * gbps)  # ~0.16 s of transfer each way
    payload = os.urandom(size)
    rate = gbps * 1e9 / 8
    with ShapedLink("127.0.0.1", server, gbps=None) as free:
        unshaped_s, _ = _upload(free.port, payload)
    with ShapedLink("127.0.0.1", server, gbps=gbps) as link:
        up_s, digest = _upload(link.port, payload)
        down_s, got = _download(link.port, size)
        assert link.bytes_to_target == size + len(b"sink\n") + len(f"source {size}\n")
        assert link.bytes_to_client == 64 + size
    assert digest == hashlib.sha256(payload).hexdigest() and got == size
    for seconds in (up_s, down_s):
        measured = size / seconds
        assert 0.75 * rate < measured < 1.25 * rate, f"{measured * 8 / 1e9:.3f} Gbps at {gbps} Gbps"
    assert unshaped_s < 0.6 * up_s  # the proxy alone is clearly faster than the shaped link


def test_data_arrives_intact_both_ways_and_close_ends_it(server: int) -> None:
    payload = os.urandom(3 * MB)
    with ShapedLink("127.0.0.1", server, gbps=2.0, rtt_ms=2.0) as link:
        assert link.address == f"127.0.0.1:{link.port}" and link.port != server
        with socket.create_connection(("127.0.0.1", link.port), timeout=10) as sock:
            sock.sendall(b"echo\n")
            received: list[bytes] = []
            reader = threading.Thread(target=lambda: received.append(_recv_all(sock)))
            reader.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reader.join(10)
        assert received and hashlib.sha256(received[0]).digest() == hashlib.sha256(payload).digest()
        assert link.bytes_to_client == len(payload) and link.connections == 1
        # A connection still open when the link closes is dropped, and nothing listens after.
        held = socket.create_connection(("127.0.0.1", link.port), timeout=5)
        held.sendall(b"echo\nhello")
        assert held.recv(5) == b"hello"
        port = link.port
    t0 = time.perf_counter()
    assert held.recv(10) == b""
    held.close()
    assert time.perf_counter() - t0 < 2
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    link.close()  # closing twice is harmless


def test_added_latency(server: int) -> None:
    with (
        ShapedLink("127.0.0.1", server, gbps=None, rtt_ms=60.0) as link,
        socket.create_connection(("127.0.0.1", link.port), timeout=5) as sock,
    ):
        sock.sendall(b"echo\nx")
        assert sock.recv(1) == b"x"  # connection set up; now one round trip alone
        t0 = time.perf_counter()
        sock.sendall(b"y")
        assert sock.recv(1) == b"y"
        rtt = time.perf_counter() - t0
    assert 0.055 < rtt < 0.2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ShapedLink("127.0.0.1", 1, gbps=0)
    with pytest.raises(ValueError):
        ShapedLink("127.0.0.1", 1, gbps=1.0, rtt_ms=-1)
    with pytest.raises(RuntimeError):
        _ = ShapedLink("127.0.0.1", 1, gbps=1.0).address
