"""Rate limits: a token bucket per end user and one per tenant, in this gateway replica's memory.

Across replicas: each replica keeps its own buckets and a load balancer spreads a caller's calls over
them, so with N replicas a caller may get up to N times the configured rate (and burst) in all. Set the
per-replica rate to the mesh-wide limit divided by the replica count; with sticky routing by token (or one
replica) the limit is exact. Buckets are not shared through the database on purpose: a shared counter would
put a database write on every call at the mesh's front door.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agentmesh._errors import ResourceExhaustedError
from agentmesh._settings import Settings

__all__ = ["RateLimiter", "RefusalBudget", "TokenBucket"]

_MAX_BUCKETS = 100_000


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; a call takes one."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for_one(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


class _Buckets:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.buckets: dict[str, TokenBucket] = {}

    def get(self, key: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= _MAX_BUCKETS:
                self._forget_full(now)
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        else:
            bucket.refill(now)
            self.buckets[key] = self.buckets.pop(key)  # most recently used last (eviction order)
        return bucket

    def _forget_full(self, now: float) -> None:
        # A full bucket holds no information: drop those, so idle callers do not grow memory. If that frees too
        # little, drop the half touched least recently, never all: clearing every bucket let a caller who
        # spread calls over many principals reset the bucket of one being throttled (and rescanning a full
        # map on every new caller cost O(n) each).
        for key, bucket in list(self.buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.capacity:
                del self.buckets[key]
        excess = len(self.buckets) - _MAX_BUCKETS // 2
        for key in list(self.buckets)[: max(excess, 0)]:
            del self.buckets[key]


class RateLimiter:
    """Admits a call when both the caller's and its tenant's bucket have a token; takes one from each."""

    def __init__(
        self,
        *,
        principal_rate: float,
        principal_burst: float,
        tenant_rate: float,
        tenant_burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._principals = _Buckets(principal_rate, principal_burst)
        self._tenants = _Buckets(tenant_rate, tenant_burst)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """Limits from the ``gateway_rate_*`` / ``gateway_burst_*`` settings."""
        return cls(
            principal_rate=settings.gateway_rate_per_principal,
            principal_burst=settings.gateway_burst_per_principal,
            tenant_rate=settings.gateway_rate_per_tenant,
            tenant_burst=settings.gateway_burst_per_tenant,
        )

    def admit(self, principal: str, tenant: str) -> None:
        """Take a token for ``principal`` (``tenant/subject``) and ``tenant``, or raise ResourceExhaustedError."""
        now = self._clock()
        mine = self._principals.get(principal, now)
        shared = self._tenants.get(tenant, now)
        for bucket, whose in ((mine, f"caller {principal!r}"), (shared, f"tenant {tenant!r}")):
            wait = bucket.wait_for_one()
            if wait > 0:
                raise ResourceExhaustedError(
                    f"rate limit of {whose} reached ({bucket.rate:g}/s, burst {bucket.capacity:g}); "
                    f"retry in {wait:.2f}s",
                    retry_after=wait,
                    reason="RATE_LIMITED",
                    metadata={"limit": "principal" if bucket is mine else "tenant"},
                )
        mine.tokens -= 1.0
        shared.tokens -= 1.0


class RefusalBudget:
    """How many refusals of one caller get an audit record of their own: ``burst`` at once, then ``rate`` per
    second. The rest are counted, and the count goes into that caller's next recorded refusal.

    Refusals come before the rate limit (a caller without a valid token has no bucket there), so without this
    anyone on the network could append a hash-chained, undeletable audit row per call, a thousand a second.
    """

    def __init__(self, *, rate: float = 1.0, burst: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = _Buckets(rate, burst)
        self._unrecorded: dict[str, int] = {}
        self._clock = clock

    def take(self, caller: str) -> int | None:
        """None when this refusal of ``caller`` goes unrecorded (counted); else how many went unrecorded before."""
        bucket = self._buckets.get(caller, self._clock())
        if bucket.tokens < 1.0:
            if len(self._unrecorded) >= _MAX_BUCKETS and caller not in self._unrecorded:
                self._unrecorded.clear()  # bounded; the counts are a courtesy, the refusals themselves still happen
            self._unrecorded[caller] = self._unrecorded.get(caller, 0) + 1
            return None
        bucket.tokens -= 1.0
        return self._unrecorded.pop(caller, 0)
