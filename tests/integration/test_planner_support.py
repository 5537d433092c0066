"""The support playbook through the planner on PostgreSQL, with the six real agents and a real Triton:
the demo submits a shipped ticket, the planner runs triage → (sentiment ∥ kb_search ∥ crm) → responder →
quality_check, and the explanation shows every choice.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from rich.console import Console

from agentmesh._channel import create_channel
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.agents.crm import CrmAgent
from agentmesh.agents.kb_search import KbSearchAgent
from agentmesh.agents.quality_check import QualityCheckAgent
from agentmesh.agents.responder import ResponderAgent
from agentmesh.agents.sentiment import SentimentAgent
from agentmesh.agents.triage import TriageAgent
from agentmesh.audit import ensure_pseudonym_key, is_pseudonym
from agentmesh.cli._demo import run_demo
from agentmesh.v1 import task_pb2, task_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.gateway import StartGateway
from tests.fixtures.planner import StartPlanner
from tests.fixtures.registry import StartRegistry

pytestmark = [pytest.mark.triton, pytest.mark.postgres]

AGENTS = (TriageAgent, SentimentAgent, KbSearchAgent, CrmAgent, ResponderAgent, QualityCheckAgent)


@pytest.fixture
async def support_mesh(
    start_registry: StartRegistry,
    start_planner: StartPlanner,
    migrated_postgres_url: str,
    issue_identity: IssueIdentity,
    triton_url: str,
    tmp_path: Path,
) -> AsyncIterator[tuple[Any, Settings]]:
    """Registry and planner on one PostgreSQL database, the six support agents registered and serving.

    The returned settings name a pseudonym secret (``pseudonym_key_file``) that the CRM agent indexes its
    customers by; a gateway started with it puts the same pseudonyms in place of emails."""
    registry = await start_registry(migrated_postgres_url)
    # One process hosts every workload here, so they share a circuit breaker per address: agents' heartbeat
    # streams ended by the registry (GOAWAY) must not open the planner's way to discovery.
    planner = await start_planner(
        migrated_postgres_url,
        registry.address,
        planner_lease_ttl=5.0,
        breaker_failure_threshold=1000,
        triton_url=triton_url,
    )
    for name in ("triage", "sentiment", "kb-search", "crm", "responder", "quality-check"):
        issue_identity("agent", f"support/{name}")
    settings = registry.settings.replace(
        triton_url=triton_url,
        registry_address=registry.address,
        planner_address=planner.address,
        shutdown_grace=2.0,
        breaker_failure_threshold=1000,
        pseudonym_key_file=str(ensure_pseudonym_key(tmp_path / "secrets" / "pseudonym.key")),
    )
    runtimes = [AgentRuntime(agent(settings), port=0) for agent in AGENTS]
    try:
        await asyncio.gather(*(runtime.start() for runtime in runtimes))
        async with asyncio.timeout(30):
            await asyncio.gather(*(runtime.wait_registered() for runtime in runtimes))
        # A cold Triton on a busy machine takes a while to answer its first calls: warm each agent that uses it.
        async with asyncio.timeout(240):
            await asyncio.gather(*(_warm(runtime, settings) for runtime in runtimes))
        yield planner, settings
    finally:
        await asyncio.gather(*(runtime.stop() for runtime in runtimes))


WARM_UP = {
    "classify_ticket": {"subject": "refund", "text": "I want a refund"},
    "score_sentiment": {"text": "I want a refund"},
    "search_articles": {"query": "refund"},
    "check_reply": {"ticket": {"text": "refund"}, "reply": "We will refund you."},
}


async def _warm(runtime: AgentRuntime, settings: Settings) -> None:
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    skills = [name for name in runtime.agent.skills if name in WARM_UP]
    async with create_channel(runtime.address, settings, kind="service", name="planner") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for skill in skills:
            request = agent_pb2.InvokeRequest(skill=skill)
            request.input.update(WARM_UP[skill])
            while True:
                try:
                    await stub.Invoke(request, timeout=60)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(1.0)


async def test_the_demo_ticket_goes_through_the_gateway_runs_the_support_playbook_and_is_explained(
    support_mesh: tuple[Any, Settings], start_gateway: StartGateway, migrated_postgres_url: str
) -> None:
    planner, settings = support_mesh
    # The gateway holds the mesh's pseudonym secret, as `agentmesh up` arranges.
    gateway = await start_gateway(
        planner=planner.address,
        database_url=migrated_postgres_url,
        pseudonym_key_file=settings.pseudonym_key_file,
    )
    output = io.StringIO()
    status = await run_demo(
        settings,
        ticket_id="t01-damaged-blender",
        console=Console(file=output, width=200),
        gateway_address=gateway.address,
        token=gateway.token(["tasks:read", "tasks:submit"], subject="demo-user"),
    )
    text = output.getvalue()
    assert status == 0, text
    task_id = text[text.index("agentmesh explain task-") + len("agentmesh explain ") :].split()[0]
    # Running the demo again answers the ticket anew (not the stored task of the last run).
    again = io.StringIO()
    assert await run_demo(
        settings, ticket_id="t01-damaged-blender", console=Console(file=again, width=200),
        gateway_address=gateway.address, token=gateway.token(["tasks:read", "tasks:submit"], subject="demo-user"),
    ) == 0
    rerun = again.getvalue()
    assert rerun[rerun.index("agentmesh explain task-") + len("agentmesh explain ") :].split()[0] != task_id

    async with create_channel(planner.address, settings, kind="client", name="ops") as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        explanation = (await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task_id), timeout=30)).explanation
    task = explanation.task
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert task.output["intent"] == "refund" and task.output["passed"] is True, text
    reply = task.output["reply"]
    # The gateway replaces the sender's email by its keyed pseudonym before the task is stored; the CRM agent
    # indexes its customers by the same pseudonym, so the reply is personalised for the right customer.
    assert "maria.lopez@example.com" not in reply and "refund" in reply.lower()
    assert reply.startswith("Hi Maria,"), reply
    stored = json_format.MessageToDict(task.input)["ticket"]["email"]
    assert is_pseudonym(stored, "email"), stored
    crm = json_format.MessageToDict(next(s for s in explanation.plan.steps if s.step_id == "crm").output)
    assert crm["found"] and crm["customer"]["customer_id"] == "C-1001" and crm["masked"], crm
    # The reply cites the knowledge base, and the customer's email never reached the planner's tables: the
    # gateway redacted it before anything was stored.
    assert task.output["citations"] and all(str(c).startswith("kb-") for c in task.output["citations"]), reply
    assert "maria.lopez@example.com" not in json_format.MessageToJson(explanation)
    assert task.submitted_by.endswith("/service/gateway") or "demo-user" in json_format.MessageToJson(task)
    states = {s.step_id: s.state for s in explanation.plan.steps}
    for step in ("triage", "sentiment", "kb_search", "crm", "responder_1", "quality_check_1"):
        assert states[step] == task_pb2.STEP_STATE_SUCCEEDED, step
    # Only the drafts that were needed ran; the escalation did not.
    assert states["escalate"] == task_pb2.STEP_STATE_SKIPPED
    # sentiment, kb_search and crm ran in parallel after triage.
    attempts = {a.step_id: a for a in explanation.attempts}
    triage_end = attempts["triage"].end_time.ToDatetime()
    parallel = [attempts[s] for s in ("sentiment", "kb_search", "crm")]
    assert all(a.start_time.ToDatetime() >= triage_end for a in parallel)
    assert max(a.start_time.ToDatetime() for a in parallel) < min(a.end_time.ToDatetime() for a in parallel)
    chosen = {c.step_id: c.chosen.name for c in explanation.collaborators}
    assert chosen["triage"] == "triage" and chosen["crm"] == "crm" and chosen["quality_check_1"] == "quality-check"
    assert any(a.model_usages for a in explanation.attempts)  # models used are part of the execution log
    # The drawing has the tree and the timeline.
    assert "timeline" in text and "chosen because" in text and "responder_1" in text

    # No playbook fits this goal: MiniLM on Triton composes the plan from the discovered skills' descriptions.
    async with create_channel(planner.address, settings, kind="client", name="ops") as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        request = task_pb2.SubmitTaskRequest(goal="score how happy or unhappy this message sounds")
        request.input.update({"text": "This is the third time the app crashed, I am so fed up."})
        made = (await stub.SubmitTask(request, timeout=60)).task
        explained = (await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=made.task_id), timeout=30)).explanation
    assert explained.plan.strategy == task_pb2.PLAN_STRATEGY_LLM, explained.plan_rejections
    assert explained.plan.steps[0].skill == "score_sentiment"
    assert explained.plan.steps[0].agent_query.visibility.names == ["support/sentiment"]


async def test_a_ticket_the_support_steps_cannot_take_is_refused_at_the_door(
    support_mesh: tuple[Any, Settings], migrated_postgres_url: str
) -> None:
    # No text a triage could read, more than it reads, or no sender for the CRM lookup: each once failed
    # mid-plan (at the triage or crm step), after the task had been stored and started.
    planner, settings = support_mesh
    async with create_channel(planner.address, settings, kind="client", name="ops") as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        blender = {"email": "maria.lopez@example.com", "subject": "Broken blender"}
        for ticket, field in (
            ({**blender, "text": ""}, "text"),
            ({**blender, "text": "  \n\t "}, "text"),
            ({**blender, "text": "My blender broke. " * 1200}, "text"),
            ({"subject": "Where is my parcel?", "text": "My order has not arrived after two weeks."}, "email"),
            ({"email": " ", "subject": "Where is my parcel?", "text": "My order has not arrived."}, "email"),
        ):
            request = task_pb2.SubmitTaskRequest(goal="Answer a support ticket", playbook="support")
            request.input.update({"ticket": ticket})
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SubmitTask(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert field in refused.value.details(), refused.value.details()
        listed = await stub.ListTasks(task_pb2.ListTasksRequest(page_size=50), timeout=10)
        assert not listed.tasks, [t.task_id for t in listed.tasks]
