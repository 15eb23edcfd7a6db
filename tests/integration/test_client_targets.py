"""Targets, ping and from_env against real stores on a real redis-server (both clients).

The store binds TCP only, so ``unix:`` targets are covered by unit tests (tests/unit/test_client_surface.py).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from gearkv.client import AsyncKVStoreClient, KVStoreClient
from gearkv.client import errors as e
from gearkv.client._retry import RetryPolicy
from gearkv.store.local import free_port
from support.redis_procs import RedisServer
from support.store import StoreHandle

pytestmark = pytest.mark.integration


def port_of(store: StoreHandle) -> int:
    return int(store.address.rpartition(":")[2])


def get_stats_calls(store: StoreHandle) -> float:
    labels = {"method": "GetStats", "code": "OK"}
    return store.server.metrics.registry.get_sample_value("gearkv_store_requests_total", labels) or 0.0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_ping_dns_target_and_from_env(
    kind: str, store: StoreHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEARKV_STORE", f"dns:///127.0.0.1:{port_of(store)}")
    monkeypatch.setenv("GEARKV_TOKEN", store.tokens["alice"])
    monkeypatch.setenv("GEARKV_STORE_TIMEOUT_S", "5")
    if kind == "sync":
        with KVStoreClient.from_env() as client:
            assert client.ping() is True
            assert client.stats().tenant == "alice"
    else:
        async with AsyncKVStoreClient.from_env() as aclient:
            assert await aclient.ping() is True
            assert (await aclient.stats()).tenant == "alice"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_ping_unreachable_store_raises_unavailable(kind: str, store: StoreHandle) -> None:
    address = store.address
    store.stop()
    if kind == "sync":
        with KVStoreClient(address, retry=RetryPolicy.none()) as client, pytest.raises(e.KVStoreUnavailable):
            client.ping(timeout=2)
    else:
        async with AsyncKVStoreClient(address, retry=RetryPolicy.none()) as aclient:
            with pytest.raises(e.KVStoreUnavailable):
                await aclient.ping(timeout=2)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_address_list_spreads_calls_round_robin(
    kind: str, store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    """Two stores on one Redis behind one ``ipv4:`` target: both serve calls, and the data is one.

    (A ``dns:`` name with two A records takes the same path: see the TinyDNS test below.)
    """
    a = store_factory(redis_server.url)
    b = store_factory(redis_server.url, tokens=a.tokens)  # the same tenants and tokens
    target = f"ipv4:127.0.0.1:{port_of(a)},127.0.0.1:{port_of(b)}"
    calls = 20
    if kind == "sync":
        with KVStoreClient(target, token=a.tokens["alice"]) as client:
            assert client.ping()
            for _ in range(calls):
                client.stats()
    else:
        async with AsyncKVStoreClient(target, token=a.tokens["alice"]) as aclient:
            assert await aclient.ping()
            for _ in range(calls):
                await aclient.stats()
    # The metric is recorded just after the status is sent: one extra GetStats at most in flight.
    seen = (get_stats_calls(a), get_stats_calls(b))
    assert sum(seen) >= calls - 1
    assert min(seen) >= calls // 4, f"calls not spread over both stores: {seen}"


async def test_channel_options_can_pick_first(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    a = store_factory(redis_server.url)
    b = store_factory(redis_server.url, tokens=a.tokens)  # the same tenants and tokens
    target = f"ipv4:127.0.0.1:{port_of(a)},127.0.0.1:{port_of(b)}"
    options = [("grpc.lb_policy_name", "pick_first")]
    with KVStoreClient(target, token=a.tokens["alice"], channel_options=options) as client:
        for _ in range(10):
            client.stats()
    low, high = sorted((get_stats_calls(a), get_stats_calls(b)))
    assert low == 0 and high >= 9  # all on one store (the last may not be counted yet)


class TinyDNS:
    """A DNS server on a free loopback UDP port answering A queries from ``records`` (stdlib only).

    Every other question (AAAA, SRV, TXT, unknown names) gets an empty NOERROR answer, so a resolver
    never waits on a timeout. ``queries`` records ``(name, qtype)`` of each question seen.
    """

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = {name.lower().rstrip("."): ips for name, ips in records.items()}
        self.queries: list[tuple[str, int]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # so the thread sees close() promptly
        self.port: int = self.sock.getsockname()[1]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="tiny-dns", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                reply = self.answer(query)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue  # not a DNS question: ignore it
            self.sock.sendto(reply, peer)

    def answer(self, query: bytes) -> bytes:
        qid, flags = struct.unpack("!HH", query[:4])
        pos, labels = 12, []
        while query[pos]:
            length = query[pos]
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii"))
            pos += 1 + length
        qtype, _qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
        question_end = pos + 5
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        ips = self.records.get(name, []) if qtype == 1 else []  # A only; AAAA/SRV/TXT: no records
        # Each answer: a pointer to the question's name (offset 12), type A, class IN, TTL, 4 bytes.
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip) for ip in ips)
        header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, len(ips), 0, 0)
        return header + query[12:question_end] + answers

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def tiny_dns() -> Iterator[TinyDNS]:
    server = TinyDNS({"stores.gearkv.test": ["127.0.0.1", "127.0.0.2"]})
    yield server
    server.close()


def stores_on_one_port(
    store_factory: Callable[..., StoreHandle], redis_url: str
) -> tuple[StoreHandle, StoreHandle, int]:
    """Two stores on 127.0.0.1:P and 127.0.0.2:P (one free port P), sharing one Redis and tokens."""
    for _ in range(5):
        port = free_port()
        try:
            a = store_factory(redis_url, host="127.0.0.1", port=port)
        except Exception:  # the port was taken in between: try another
            continue
        try:
            b = store_factory(redis_url, tokens=a.tokens, host="127.0.0.2", port=port)
        except Exception:  # taken on 127.0.0.2 (the factory stops a at teardown)
            continue
        return a, b, port
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_dns_name_with_two_records_spreads_calls_round_robin(
    kind: str,
    store_factory: Callable[..., StoreHandle],
    redis_server: RedisServer,
    tiny_dns: TinyDNS,
) -> None:
    """``dns://DNS-SERVER/name:port``: gRPC's resolver asks that server, and round_robin uses both A records.

    grpcio's default resolver (c-ares) honours the DNS authority in the target, so no environment
    (GRPC_DNS_RESOLVER) is needed.
    """
    a, b, port = stores_on_one_port(store_factory, redis_server.url)
    target = f"dns://127.0.0.1:{tiny_dns.port}/stores.gearkv.test:{port}"
    calls = 20
    if kind == "sync":
        with KVStoreClient(target, token=a.tokens["alice"], timeout=5) as client:
            assert client.ping()
            for _ in range(calls):
                client.stats()
    else:
        async with AsyncKVStoreClient(target, token=a.tokens["alice"], timeout=5) as aclient:
            assert await aclient.ping()
            for _ in range(calls):
                await aclient.stats()
    assert ("stores.gearkv.test", 1) in tiny_dns.queries  # resolved by our server, not the system's
    seen = (get_stats_calls(a), get_stats_calls(b))
    assert sum(seen) >= calls - 1  # the metric is recorded just after the status is sent
    assert min(seen) >= calls // 4, f"calls not spread over both stores: {seen}"
