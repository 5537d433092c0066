"""A retry goes back to the instance of the earlier attempt while it lives, even when discovery (one instance
per agent version, the least loaded) answers with the other instance."""

from __future__ import annotations

from typing import Any

from agentmesh._errors import UnavailableError
from agentmesh._settings import Settings
from agentmesh.services.planner.dispatch import Dispatcher
from agentmesh.services.planner.plans import StepSpec
from agentmesh.v1 import agent_pb2, registry_pb2


def _instance(instance_id: str, port: int, state: int = agent_pb2.SERVING_STATE_SERVING) -> registry_pb2.AgentInstance:
    card = agent_pb2.AgentCard(namespace="testing", name="worker", version="1.0.0", endpoint=f"127.0.0.1:{port}")
    return registry_pb2.AgentInstance(instance_id=instance_id, card=card, state=state)  # type: ignore[arg-type]


class Registry:
    """Discovery picks instance b (less loaded); GetAgent lists the version's live instances."""

    def __init__(self, live: list[registry_pb2.AgentInstance], *, down: bool = False) -> None:
        self.live = live
        self.down = down
        self.lookups = 0

    async def discover(self, **_: Any) -> registry_pb2.DiscoverAgentsResponse:
        pick = registry_pb2.Candidate(instance=_instance("b", 2), score=1.0, reasons=["best"], matched_skill="slow")
        return registry_pb2.DiscoverAgentsResponse(candidates=[pick])

    async def get_agent(self, namespace: str, name: str, version: str = "", **_: Any) -> registry_pb2.GetAgentResponse:
        self.lookups += 1
        if self.down:
            raise UnavailableError("registry away")
        return registry_pb2.GetAgentResponse(card=self.live[0].card, instances=self.live)


SPEC = StepSpec(step_id="one", skill="slow", agent={"names": ["testing/worker"]})


async def test_a_retry_goes_back_to_the_earlier_instance_that_discovery_did_not_pick() -> None:
    registry = Registry([_instance("a", 1), _instance("b", 2)])
    dispatcher = Dispatcher(Settings(), registry)  # type: ignore[arg-type]
    choice = await dispatcher.choose(SPEC, previous_instance_id="a")
    assert (choice.instance_id, choice.endpoint) == ("a", "127.0.0.1:1")
    assert "earlier attempt (a) is alive" in choice.reason
    # A first attempt takes discovery's pick, with no extra lookup.
    first = await dispatcher.choose(SPEC)
    assert first.instance_id == "b" and registry.lookups == 1


async def test_a_retry_whose_earlier_instance_is_gone_or_unknown_takes_the_best_candidate() -> None:
    for registry in (
        Registry([_instance("b", 2)]),
        Registry([_instance("a", 1, agent_pb2.SERVING_STATE_DRAINING), _instance("b", 2)]),
        Registry([_instance("a", 1)], down=True),
    ):
        choice = await Dispatcher(Settings(), registry).choose(SPEC, previous_instance_id="a")  # type: ignore[arg-type]
        assert choice.instance_id == "b" and "earlier attempt's instance a is gone" in choice.reason
