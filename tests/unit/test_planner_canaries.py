"""The planner reports call outcomes only for versions the registry counts: canaries under a rollback rule."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentmesh._errors import NotFoundError, UnavailableError
from agentmesh.services.planner.canaries import Canaries
from agentmesh.v1 import registry_pb2

pytestmark = pytest.mark.asyncio


class _Registry:
    """GetRoutingPolicy answers from a dict; counts the reads."""

    def __init__(self, policies: dict[tuple[str, str], registry_pb2.RoutingPolicy]) -> None:
        self.policies, self.reads = policies, 0

    async def get_routing(self, namespace: str, name: str, **_: Any) -> registry_pb2.RoutingPolicy:
        self.reads += 1
        if (namespace, name) == ("s", "down"):
            raise UnavailableError("the registry is away")
        if (namespace, name) not in self.policies:  # as the registry answers an agent without a policy
            raise NotFoundError(f"agent {namespace}/{name} has no routing policy")
        return self.policies[(namespace, name)]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_only_canaries_under_a_rollback_rule_are_reported() -> None:
    canary = registry_pb2.RoutingPolicy(namespace="s", name="triage", weights={"1.0.0": 90, "1.1.0": 10})
    canary.canary.max_error_rate = 0.2
    weights_only = registry_pb2.RoutingPolicy(namespace="s", name="crm", weights={"1.0.0": 90, "1.1.0": 10})
    registry = _Registry({("s", "triage"): canary, ("s", "crm"): weights_only})
    canaries = Canaries(lambda: registry, ttl=60.0)  # type: ignore[arg-type, return-value]
    # Unknown yet: reported (the policy is read meanwhile).
    assert canaries.counted("s", "triage", "1.0.0") and canaries.counted("s", "crm", "1.1.0")
    assert canaries.counted("s", "kb", "2.0.0")
    await _settle()
    assert registry.reads == 3
    assert canaries.counted("s", "triage", "1.1.0")  # the canary
    assert not canaries.counted("s", "triage", "1.0.0")  # the baseline
    assert not canaries.counted("s", "crm", "1.1.0")  # weights without a rollback rule: nothing is counted
    assert not canaries.counted("s", "kb", "2.0.0")  # no policy at all
    # The registry away: reported, and not asked again before the ttl.
    assert canaries.counted("s", "down", "1.0.0")
    await _settle()
    assert canaries.counted("s", "down", "1.0.0")
    await _settle()
    assert registry.reads == 4  # fresh answers (and a failure) are not read again within the ttl
    await canaries.close()


async def test_a_stale_policy_is_read_again_and_an_absent_registry_means_report() -> None:
    policy = registry_pb2.RoutingPolicy(namespace="s", name="triage", weights={"1.0.0": 50})
    registry = _Registry({("s", "triage"): policy})
    canaries = Canaries(lambda: registry, ttl=0.0)  # type: ignore[arg-type, return-value]
    assert canaries.counted("s", "triage", "1.0.0")
    await _settle()
    policy.canary.max_error_rate = 0.5
    policy.weights["1.1.0"] = 10
    assert not canaries.counted("s", "triage", "1.1.0")  # as last read, while it is read again
    await _settle()
    assert canaries.counted("s", "triage", "1.1.0")
    assert Canaries(lambda: None, ttl=1.0).counted("s", "triage", "1.0.0")
    await canaries.close()
