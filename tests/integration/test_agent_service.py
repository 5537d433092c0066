"""AgentService served by the SDK over mTLS: Describe, Invoke, InvokeStream, validation, idempotency, drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import jsonschema
import pytest
from google.protobuf import json_format
from prometheus_client import REGISTRY

from agentmesh._channel import create_channel
from agentmesh._errors import InvalidArgumentError, from_rpc_error
from agentmesh._health import check_health
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.integration.echo_agent import EchoAgent

PLANNER = "spiffe://agentmesh.test/service/planner"


@pytest.fixture
def agent_settings(mesh_settings: Settings, issue_identity: IssueIdentity) -> Settings:
    issue_identity("agent", "testing/echo")
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    return mesh_settings.replace(readiness_interval=0.05, shutdown_grace=5.0)


@pytest.fixture
async def runtime(agent_settings: Settings) -> AsyncIterator[AgentRuntime]:
    async with AgentRuntime(EchoAgent(agent_settings), port=0, register=False) as served:
        yield served


@pytest.fixture
async def planner(runtime: AgentRuntime, agent_settings: Settings) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    """The agent as the planner (the only identity allowed to invoke agents) sees it."""
    async with create_channel(runtime.address, agent_settings, kind="service", name="planner") as channel:
        yield agent_pb2_grpc.AgentServiceStub(channel)


def agent_of(runtime: AgentRuntime) -> EchoAgent:
    assert isinstance(runtime.agent, EchoAgent)
    return runtime.agent


def field_of(error: grpc.aio.AioRpcError) -> str:
    """The field a failed call's ``google.rpc.BadRequest`` detail names."""
    mesh_error = from_rpc_error(error)
    assert isinstance(mesh_error, InvalidArgumentError)
    return mesh_error.field


def invoke(skill: str, key: str = "", **data: object) -> agent_pb2.InvokeRequest:
    request = agent_pb2.InvokeRequest(skill=skill, idempotency_key=key, task_id="task-1", step_id="step-1")
    request.input.update(data)
    return request


async def test_describe_returns_the_card_with_skill_schemas(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    card = (await planner.Describe(agent_pb2.DescribeRequest())).card
    assert (card.name, card.namespace, card.version, card.purpose) == ("echo", "testing", "1.2.0", "echo")
    assert list(card.policies) == ["pii:none"] and dict(card.labels) == {"team": "platform"}
    assert card.endpoint == runtime.address == f"127.0.0.1:{runtime.port}"
    assert card.spiffe_id == "spiffe://agentmesh.test/agent/testing/echo"
    assert [s.name for s in card.skills] == ["echo", "hold", "broken"]
    echo = card.skills[0]
    schema = json_format.MessageToDict(echo.input_schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.Draft202012Validator(schema).is_valid({"text": "hi", "times": 2})
    assert not jsonschema.Draft202012Validator(schema).is_valid({"text": "hi", "times": 9})
    assert json_format.MessageToDict(echo.output_schema)["required"] == ["text"]


async def test_invoke_runs_the_skill_and_reports_who_ran_it_and_which_models(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    response = await planner.Invoke(invoke("echo", text="hello", times=2))
    assert json_format.MessageToDict(response.output) == {"text": "hello hello", "caller": PLANNER, "task_id": "task-1"}
    assert (response.agent_name, response.agent_version, response.replayed) == ("echo", "1.2.0", False)
    assert [(u.model_name, u.model_version, u.latency.ToMilliseconds()) for u in response.model_usages] == [
        ("echo-model", "3", 250)
    ]
    assert response.duration.ToNanoseconds() > 0
    assert agent_of(runtime).runs["echo"] == 1


async def test_invoke_stream_yields_progress_then_the_result(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent_of(runtime).release.set()
    events = [e async for e in planner.InvokeStream(agent_pb2.InvokeStreamRequest(invocation=invoke("hold", label="x")))]
    assert [e.WhichOneof("event") for e in events] == ["progress", "progress", "result"]
    assert [(e.progress.message, round(e.progress.fraction, 2)) for e in events[:2]] == [("started", 0.1), ("released", 0.9)]
    assert json_format.MessageToDict(events[0].progress.detail) == {"label": "x"}
    assert json_format.MessageToDict(events[2].result.output) == {"label": "x", "steps": 2.0}


@pytest.mark.parametrize(
    ("data", "field"),
    [({"times": 2}, "input.text"), ({"text": "hi", "times": 9}, "input.times"), ({"text": "hi", "customer": {}}, "input.customer.email")],
)
async def test_invalid_input_is_invalid_argument_naming_the_field_and_runs_nothing(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub, data: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        request = invoke("echo")
        request.input.update(data)
        await planner.Invoke(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(failure.value) == field
    assert field in (failure.value.details() or "")
    assert agent_of(runtime).runs["echo"] == 0


async def test_a_repeated_idempotency_key_replays_without_running_the_skill_again(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    first = await planner.Invoke(invoke("echo", key="step-1/attempt", text="once"))
    again = await planner.Invoke(invoke("echo", key="step-1/attempt", text="once"))
    streamed = [e async for e in planner.InvokeStream(agent_pb2.InvokeStreamRequest(invocation=invoke("echo", key="step-1/attempt", text="once")))]
    assert agent_of(runtime).runs["echo"] == 1
    assert (first.replayed, again.replayed, streamed[-1].result.replayed) == (False, True, True)
    assert again.output == first.output and again.duration == first.duration
    assert list(again.model_usages) == list(first.model_usages)
    # Without a key every call runs.
    await planner.Invoke(invoke("echo", text="once"))
    await planner.Invoke(invoke("echo", text="once"))
    assert agent_of(runtime).runs["echo"] == 3


async def test_concurrent_calls_with_one_key_run_the_skill_once(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    responses = await asyncio.gather(*(planner.Invoke(invoke("echo", key="same", text="x")) for _ in range(8)))
    assert agent_of(runtime).runs["echo"] == 1
    assert sorted(r.replayed for r in responses) == [False] + [True] * 7


async def test_a_key_reused_with_another_input_is_invalid_argument(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    await planner.Invoke(invoke("echo", key="k", text="first"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await planner.Invoke(invoke("echo", key="k", text="second"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(failure.value) == "idempotency_key"
    assert agent_of(runtime).runs["echo"] == 1


async def test_an_output_that_breaks_its_schema_is_internal_and_never_a_success(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):  # the failure is not cached as if it were a result
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await planner.Invoke(invoke("broken", key="b", text="x"))
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert "breaks its schema" in (failure.value.details() or "")
        assert "12345" not in (failure.value.details() or "")
    assert agent_of(runtime).runs["broken"] == 2
    assert "output.text: Input should be a valid string" in caplog.text


async def test_unknown_skill_is_not_found_and_a_missing_one_invalid(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await planner.Invoke(invoke("translate", text="x"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "echo, hold, broken" in (unknown.value.details() or "") or "broken, echo, hold" in (unknown.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await planner.Invoke(invoke("", text="x"))
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(missing.value) == "skill"


async def test_a_caller_that_leaves_a_stream_cancels_the_skill(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    call = planner.InvokeStream(agent_pb2.InvokeStreamRequest(invocation=invoke("hold", label="gone")))
    first = await call.read()
    assert first.progress.message == "started"
    call.cancel()
    async with asyncio.timeout(5):
        await agent_of(runtime).cancelled.wait()
    assert runtime.runner.in_flight == 0


async def test_skill_latency_and_replays_are_measured_per_agent_skill_and_outcome(
    runtime: AgentRuntime, planner: agent_pb2_grpc.AgentServiceStub
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"agent": "echo", **labels}) or 0.0

    ok_before = sample("agentmesh_agent_skill_duration_seconds_count", skill="echo", outcome="OK")
    bad_before = sample("agentmesh_agent_skill_duration_seconds_count", skill="broken", outcome="INTERNAL")
    replays_before = sample("agentmesh_agent_skill_replays_total", skill="echo")
    for _ in range(3):
        await planner.Invoke(invoke("echo", key="metrics", text="m"))
    with pytest.raises(grpc.aio.AioRpcError):
        await planner.Invoke(invoke("broken", text="m"))
    assert sample("agentmesh_agent_skill_duration_seconds_count", skill="echo", outcome="OK") == ok_before + 1
    assert sample("agentmesh_agent_skill_duration_seconds_count", skill="broken", outcome="INTERNAL") == bad_before + 1
    assert sample("agentmesh_agent_skill_replays_total", skill="echo") == replays_before + 2


async def test_only_the_planner_may_invoke_but_anyone_may_describe(
    runtime: AgentRuntime, agent_settings: Settings
) -> None:
    async with create_channel(runtime.address, agent_settings, kind="client", name="ops") as channel:
        ops = agent_pb2_grpc.AgentServiceStub(channel)
        assert (await ops.Describe(agent_pb2.DescribeRequest())).card.name == "echo"
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await ops.Invoke(invoke("echo", text="x"))
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert agent_of(runtime).runs["echo"] == 0


async def test_stop_drains_an_in_flight_call_before_the_server_goes(agent_settings: Settings) -> None:
    agent = EchoAgent(agent_settings)
    runtime = AgentRuntime(agent, port=0, register=False)
    await runtime.start()
    async with create_channel(runtime.address, agent_settings, kind="service", name="planner") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        await wait_for_health(channel, "SERVING")
        in_flight = asyncio.ensure_future(stub.Invoke(invoke("hold", label="late")))
        await agent.entered.wait()
        stopping = asyncio.create_task(runtime.stop())
        await wait_for_health(channel, "NOT_SERVING")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Invoke(invoke("echo", text="too late"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not stopping.done() and not agent.stopped  # still waiting for the call in flight
        agent.release.set()
        response = await in_flight
        assert json_format.MessageToDict(response.output)["label"] == "late"
        await stopping
    assert agent.stopped
    assert agent.runs == {"hold": 1}


async def wait_for_health(channel: grpc.aio.Channel, status: str) -> None:
    """Poll the agent's health until it reports ``status`` (at most 5 s)."""
    async with asyncio.timeout(5):
        while await check_health(channel, "agentmesh.v1.AgentService") != status:  # noqa: ASYNC110 - polled by design
            await asyncio.sleep(0.02)
