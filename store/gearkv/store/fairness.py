"""Fair shares of the store between tenants: requests in flight and request rate, per tenant.

The store is shared by tenants who may be careless or hostile. A global in-flight limit alone lets one
tenant take every slot (260 idle upload streams made every other tenant's calls fail), so each tenant
also has its own cap on requests in flight and a token-bucket rate limit; both are configurable per
tenant, like the quota. Pure bookkeeping on the event loop: no locks, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gearkv.store.config import StoreConfig
from gearkv.store.errors import ResourceExhausted


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's share: ``max_in_flight`` requests at once, ``rate_per_s`` requests per second on
    average with bursts of ``burst`` (``rate_per_s`` 0: no rate limit)."""

    max_in_flight: int
    rate_per_s: float = 0.0
    burst: int = 0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("a tenant's max_in_flight must be >= 1")
        if self.rate_per_s < 0 or self.burst < 0:
            raise ValueError("a tenant's rate_per_s and burst must be >= 0")


class _Bucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``capacity``."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token; returns 0 when granted, else the seconds until one is due."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0 - 1e-9:  # float refills land a hair under a whole token
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Fairness:
    """Admits a request of a tenant, or raises ResourceExhausted naming the limit it hit.

    The global limit (``max_in_flight``) sheds load when the whole store is busy; a tenant's own
    limits (``limits_for``) keep it from taking the others' share.
    """

    def __init__(
        self,
        max_in_flight: int,
        limits_for: Callable[[str], TenantLimits],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._limits_for = limits_for
        self._clock = clock
        self._tenant_in_flight: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    def tenant_in_flight(self, tenant: str) -> int:
        return self._tenant_in_flight.get(tenant, 0)

    def acquire(self, tenant: str) -> None:
        """Take one of the tenant's and one of the store's in-flight slots; ``release`` gives them back."""
        limits = self._limits_for(tenant)
        mine = self._tenant_in_flight.get(tenant, 0)
        if mine >= limits.max_in_flight:
            raise ResourceExhausted(
                f"too many requests in flight for this tenant: {mine} (its limit is {limits.max_in_flight})"
            )
        if self.in_flight >= self.max_in_flight:
            raise ResourceExhausted(
                f"server busy: {self.in_flight} requests in flight (limit {self.max_in_flight}); retry later"
            )
        if limits.rate_per_s > 0:
            now = self._clock()
            bucket = self._buckets.get(tenant)
            if bucket is None:
                capacity = float(max(1, limits.burst or round(limits.rate_per_s)))
                bucket = self._buckets[tenant] = _Bucket(limits.rate_per_s, capacity, now)
            wait = bucket.take(now)
            if wait:
                raise ResourceExhausted(
                    f"request rate limit of this tenant reached ({limits.rate_per_s:g}/s); "
                    f"retry in {wait:.2f} s"
                )
        self.in_flight += 1
        self._tenant_in_flight[tenant] = mine + 1

    def release(self, tenant: str) -> None:
        self.in_flight -= 1
        left = self._tenant_in_flight[tenant] - 1
        if left:
            self._tenant_in_flight[tenant] = left
        else:
            del self._tenant_in_flight[tenant]


def tenant_limits(cfg: StoreConfig) -> Callable[[str], TenantLimits]:
    """Each tenant's limits: its own settings, else the store's defaults.

    A tenant's default in-flight cap is half the store's limit when several tenants share the store
    (so one cannot starve the others), and the whole limit for a store with one tenant.
    """
    shared = len(cfg.tenants) > 1
    cap = cfg.tenant_max_in_flight or (max(1, cfg.max_in_flight // 2) if shared else cfg.max_in_flight)
    default = TenantLimits(cap, cfg.tenant_rate_per_s, cfg.tenant_burst)
    table = {
        t.name: TenantLimits(
            t.max_in_flight or cap, t.rate_per_s or cfg.tenant_rate_per_s, t.burst or cfg.tenant_burst
        )
        for t in cfg.tenants
    }
    return lambda tenant: table.get(tenant, default)


class UploadBuffer:
    """Bytes of uploads held in memory, all requests together, and each tenant's share of them.

    An upload is held whole until its digest is checked; without a bound, one 200 MiB partial upload
    raised the store's memory by 230 MB (and many would exhaust it). A request reserves its declared
    size at the header and is refused at once when it does not fit (never queued).
    """

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.held = 0
        self._tenant_held: dict[str, int] = {}

    def reserve(self, tenant: str, nbytes: int) -> None:
        mine = self._tenant_held.get(tenant, 0)
        if mine + nbytes > self.per_tenant:
            raise ResourceExhausted(
                f"this tenant's uploads in flight would hold {mine + nbytes} bytes (its share is "
                f"{self.per_tenant}); retry when some finish"
            )
        if self.held + nbytes > self.total:
            raise ResourceExhausted(
                f"server busy: uploads in flight hold {self.held} bytes (limit {self.total}); retry later"
            )
        self.held += nbytes
        self._tenant_held[tenant] = mine + nbytes

    def release(self, tenant: str, nbytes: int) -> None:
        self.held -= nbytes
        left = self._tenant_held[tenant] - nbytes
        if left:
            self._tenant_held[tenant] = left
        else:
            del self._tenant_held[tenant]

    @classmethod
    def for_store(cls, cfg: StoreConfig) -> UploadBuffer:
        """Half of the buffer per tenant when several share the store (at least one largest chunk)."""
        total = cfg.max_upload_buffer_bytes
        share = max(total // 2, cfg.max_chunk_bytes) if len(cfg.tenants) > 1 else total
        return cls(total, min(share, total))
