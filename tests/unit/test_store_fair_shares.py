"""Fair shares between tenants: per-tenant in-flight caps, rate limits, the global limit."""

from __future__ import annotations

import pytest
from gearkv.store.auth import hash_token
from gearkv.store.config import StoreConfig, TenantConfig
from gearkv.store.errors import ResourceExhausted
from gearkv.store.fairness import Fairness, TenantLimits, tenant_limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tenant_at_its_cap_leaves_room_for_the_others() -> None:
    fair = Fairness(10, lambda t: TenantLimits(max_in_flight=4 if t == "hostile" else 10))
    for _ in range(4):
        fair.acquire("hostile")
    with pytest.raises(ResourceExhausted, match=r"for this tenant: 4 .*limit is 4"):
        fair.acquire("hostile")
    for _ in range(6):
        fair.acquire("victim")  # the hostile tenant's refusals took nothing
    with pytest.raises(ResourceExhausted, match="server busy: 10"):
        fair.acquire("victim")
    assert (fair.in_flight, fair.tenant_in_flight("hostile")) == (10, 4)
    fair.release("hostile")
    fair.acquire("victim")
    assert (fair.in_flight, fair.tenant_in_flight("hostile"), fair.tenant_in_flight("victim")) == (10, 3, 7)


def test_rate_limit_is_a_token_bucket_per_tenant() -> None:
    clock = Clock()
    fair = Fairness(100, lambda t: TenantLimits(50, rate_per_s=10, burst=3), clock)

    def one(tenant: str) -> None:
        fair.acquire(tenant)
        fair.release(tenant)

    for _ in range(3):
        one("a")
    with pytest.raises(ResourceExhausted, match=r"rate limit .*10/s.*retry in 0\.10 s"):
        one("a")
    one("b")  # another tenant's bucket is its own
    clock.now += 0.1
    one("a")
    with pytest.raises(ResourceExhausted):
        one("a")
    clock.now += 10  # refills to the burst, not beyond
    for _ in range(3):
        one("a")
    with pytest.raises(ResourceExhausted):
        one("a")
    assert fair.in_flight == 0


def test_default_limits_share_the_store_between_configured_tenants() -> None:
    a = TenantConfig("a", hash_token("ta"))
    b = TenantConfig("b", hash_token("tb"), max_in_flight=3, rate_per_s=5.0, burst=2)
    alone = tenant_limits(StoreConfig(tenants=(a,), max_in_flight=64))
    assert alone("a") == TenantLimits(64)
    both = tenant_limits(StoreConfig(tenants=(a, b), max_in_flight=64, tenant_rate_per_s=100.0))
    assert both("a") == TenantLimits(32, 100.0, 0)
    assert both("b") == TenantLimits(3, 5.0, 2)
    fixed = tenant_limits(StoreConfig(tenants=(a, b), max_in_flight=64, tenant_max_in_flight=8))
    assert fixed("a").max_in_flight == 8


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        TenantLimits(0)
    with pytest.raises(ValueError, match="rate_per_s"):
        TenantLimits(1, rate_per_s=-1)
