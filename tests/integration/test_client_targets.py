"""Targets, ping and from_env against real stores on a real redis-server (both clients).

The store binds TCP only, so ``unix:`` targets are covered by unit tests (tests/unit/test_client_surface.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gearkv.client import AsyncKVStoreClient, KVStoreClient
from gearkv.client import errors as e
from gearkv.client._retry import RetryPolicy
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

    (A ``dns:///`` name with two A records takes the same path through gRPC's round_robin policy,
    but needs a resolver serving such a name; an address list is what can be shown locally.)
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
