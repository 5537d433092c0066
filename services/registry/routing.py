"""Version routing (canary weights), sticky per routing key, and automatic canary rollback.

A policy gives each version of one agent name an integer weight. A routing key (e.g. a task id) hashes to
a fixed point of the weight line, so the same key picks the same version while the weights stand. The
*baseline* is the version with the largest weight; every other version with a positive weight is a
*canary*, rolled back to 0 when its error rate over the window exceeds the policy's threshold.
Outcome windows are per replica (each judges what it is told); the rollback itself is one database
write under the registry's writer lock, so it happens once and every replica applies it from the log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from packaging.version import Version

from agentmesh._canaries import baseline_version, canary_versions

__all__ = ["CanaryRule", "OutcomeWindows", "RoutePolicy", "choose_version"]


@dataclass(frozen=True)
class CanaryRule:
    """When a canary is rolled back: error rate above ``max_error_rate`` over ``min_requests`` or more in ``window``."""

    max_error_rate: float
    min_requests: int
    window: float  # seconds

    def to_json(self) -> dict[str, float | int]:
        """The stored form (``routing_policies.canary``)."""
        return {
            "max_error_rate": self.max_error_rate,
            "min_requests": self.min_requests,
            "window_seconds": self.window,
        }

    @classmethod
    def from_json(cls, data: dict[str, float | int] | None) -> CanaryRule | None:
        """Parse the stored form; empty means no automatic rollback."""
        if not data:
            return None
        return cls(float(data["max_error_rate"]), int(data["min_requests"]), float(data["window_seconds"]))


@dataclass(frozen=True)
class RoutePolicy:
    """Weights per version of ``namespace/name``, the canary rule and why it is so."""

    namespace: str
    name: str
    weights: dict[str, int]
    canary: CanaryRule | None = None
    reason: str = ""
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def baseline(self) -> str | None:
        """The version with the largest weight (ties: the highest version)."""
        return baseline_version(self.weights)

    def canaries(self) -> list[str]:
        """Versions other than the baseline that still receive traffic."""
        return canary_versions(self.weights)


def _bucket(routing_key: str, agent: str, total: int) -> int:
    digest = hashlib.blake2b(f"{routing_key}\x00{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total


def choose_version(policy: RoutePolicy | None, versions: Sequence[str], routing_key: str) -> tuple[str, str]:
    """Pick one of the live, matching ``versions`` (PEP 440 strings) and say why.

    With a policy, versions are drawn by weight (sticky when ``routing_key`` is set, random otherwise)
    among those given weight; without one, or when no weighted version is available, the highest wins.
    """
    ordered = sorted(versions, key=Version)
    if policy is not None:
        weighted = [(v, policy.weights.get(v, 0)) for v in ordered if policy.weights.get(v, 0) > 0]
        total = sum(w for _, w in weighted)
        if total > 0:
            agent = f"{policy.namespace}/{policy.name}"
            point = _bucket(routing_key, agent, total) if routing_key else random.randrange(total)
            for version, weight in weighted:
                if point < weight:
                    how = f"sticky for key {routing_key!r}" if routing_key else "random draw"
                    return version, f"routing: version {version} by weight {weight}/{total} ({how})"
                point -= weight
        return ordered[-1], f"routing: no weighted version live; highest version {ordered[-1]}"
    if len(ordered) == 1:
        return ordered[0], f"version {ordered[0]}"
    return ordered[-1], f"routing: highest live version {ordered[-1]} of {len(ordered)}"


class OutcomeWindows:
    """Sliding windows of call outcomes per ``(namespace, name, version)``."""

    def __init__(self, clock: object = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str, str], deque[tuple[float, bool]]] = {}

    def record(
        self, key: tuple[str, str, str], success: bool, window: float, at: float | None = None
    ) -> tuple[int, int]:
        """Add one outcome (at epoch ``at``, default now); returns ``(failures, total)`` within ``window`` s."""
        now: float = self._clock()  # type: ignore[operator]
        self._windows.setdefault(key, deque()).append((now if at is None else at, success))
        return self.counts(key, window)

    def counts(self, key: tuple[str, str, str], window: float) -> tuple[int, int]:
        """``(failures, total)`` of ``key`` within the last ``window`` seconds."""
        now: float = self._clock()  # type: ignore[operator]
        outcomes = self._windows.get(key)
        if not outcomes:
            return 0, 0
        while outcomes and outcomes[0][0] < now - window:
            outcomes.popleft()
        failures = sum(1 for _, ok in outcomes if not ok)
        return failures, len(outcomes)

    def reset(self, key: tuple[str, str, str]) -> None:
        """Forget the outcomes of ``key`` (after a rollback or a policy change)."""
        self._windows.pop(key, None)


def rollback_reason(policy: RoutePolicy, version: str, failures: int, total: int) -> str | None:
    """Why ``version`` must be rolled back, or ``None`` when it may keep its weight."""
    rule = policy.canary
    if rule is None or version not in policy.canaries() or total < rule.min_requests:
        return None
    rate = failures / total
    if rate <= rule.max_error_rate:
        return None
    return (
        f"canary {version} rolled back to weight 0: error rate {rate:.2f} > {rule.max_error_rate:.2f} "
        f"({failures}/{total} calls failed within {rule.window:g}s)"
    )
