"""The support agents on a real mesh: they register with a registry replica, are discovered by skill, and
the support playbook runs on the planner (tests/integration/test_planner_support.py).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmesh._channel import create_channel
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.agents.crm import CrmAgent
from agentmesh.agents.kb_search import KbSearchAgent
from agentmesh.agents.quality_check import QualityCheckAgent
from agentmesh.agents.responder import ResponderAgent
from agentmesh.agents.sentiment import SentimentAgent
from agentmesh.agents.triage import TriageAgent
from agentmesh.v1 import registry_pb2, registry_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.registry import RegistryReplica, StartRegistry

pytestmark = pytest.mark.triton

SKILLS = {
    "triage": (TriageAgent, "classify_ticket"),
    "sentiment": (SentimentAgent, "score_sentiment"),
    "kb-search": (KbSearchAgent, "search_articles"),
    "crm": (CrmAgent, "lookup_customer"),
    "responder": (ResponderAgent, "draft_reply"),
    "quality-check": (QualityCheckAgent, "check_reply"),
}


@pytest.fixture
async def mesh(
    start_registry: StartRegistry,
    sqlite_template: Path,
    tmp_path: Path,
    issue_identity: IssueIdentity,
    triton_url: str,
) -> AsyncIterator[tuple[RegistryReplica, Settings]]:
    """A registry replica (SQLite) with the six support agents registered and serving."""
    shutil.copyfile(sqlite_template, tmp_path / "registry.db")
    replica = await start_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    for name in SKILLS:
        issue_identity("agent", f"support/{name}")
    issue_identity("service", "planner")
    settings = replica.settings.replace(
        triton_url=triton_url, registry_address=replica.address, shutdown_grace=2.0
    )
    runtimes = [AgentRuntime(agent(settings), port=0) for agent, _ in SKILLS.values()]
    try:
        await asyncio.gather(*(runtime.start() for runtime in runtimes))
        async with asyncio.timeout(30):
            await asyncio.gather(*(runtime.wait_registered() for runtime in runtimes))
        yield replica, settings
    finally:
        await asyncio.gather(*(runtime.stop() for runtime in runtimes))


async def test_each_agent_is_discovered_by_its_skill_in_the_support_namespace(
    mesh: tuple[RegistryReplica, Settings],
) -> None:
    replica, settings = mesh
    async with create_channel(replica.address, settings, kind="service", name="planner") as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        for name, (_, skill) in SKILLS.items():
            answer = await registry.DiscoverAgents(
                registry_pb2.DiscoverAgentsRequest(
                    visibility=registry_pb2.VisibilityScope(patterns=["support/.*"]),
                    characteristics=registry_pb2.CharacteristicsScope(skill=skill),
                ),
                timeout=10,
            )
            assert [c.instance.card.name for c in answer.candidates][:1] == [name]
        private = await registry.DiscoverAgents(
            registry_pb2.DiscoverAgentsRequest(
                visibility=registry_pb2.VisibilityScope(patterns=["support/.*"]),
                characteristics=registry_pb2.CharacteristicsScope(required_policies=["pii:restricted"]),
            ),
            timeout=10,
        )
        assert [c.instance.card.name for c in private.candidates] == ["crm"]


# The support playbook end to end now runs on the planner: tests/integration/test_planner_support.py.
