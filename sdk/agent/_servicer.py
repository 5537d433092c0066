"""``AgentServicer``: ``AgentService`` over gRPC, translating protos to and from :class:`SkillRunner` calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2

from agentmesh import security, telemetry
from agentmesh.agent._agent import Agent
from agentmesh.agent._context import Progress
from agentmesh.agent._runner import Invocation, InvocationResult, SkillRunner
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["AgentServicer", "build_card"]


def build_card(agent: Agent, *, endpoint: str, spiffe_id: str) -> agent_pb2.AgentCard:
    """The full ``AgentCard``: the agent's :class:`AgentInfo`, its skills with schemas, and where it runs."""
    info = agent.card
    skills = [
        agent_pb2.Skill(
            name=spec.name,
            description=spec.description,
            input_schema=_struct(spec.input_schema),
            output_schema=_struct(spec.output_schema),
            tags=list(spec.tags),
        )
        for spec in agent.skills.values()
    ]
    return agent_pb2.AgentCard(
        name=info.name,
        namespace=info.namespace,
        version=info.version,
        purpose=info.purpose,
        description=info.description,
        policies=list(info.policies),
        labels=dict(info.labels),
        endpoint=endpoint,
        skills=skills,
        owner=info.owner,
        spiffe_id=spiffe_id,
    )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Describe, Invoke and InvokeStream of one agent."""

    def __init__(self, runner: SkillRunner, card: agent_pb2.AgentCard) -> None:
        self._runner = runner
        self.card = card  # the runtime sets the endpoint once the port is known

    async def Describe(
        self,
        request: agent_pb2.DescribeRequest,
        context: grpc.aio.ServicerContext[agent_pb2.DescribeRequest, agent_pb2.DescribeResponse],
    ) -> agent_pb2.DescribeResponse:
        """The agent's card."""
        return agent_pb2.DescribeResponse(card=self.card)

    async def Invoke(
        self,
        request: agent_pb2.InvokeRequest,
        context: grpc.aio.ServicerContext[agent_pb2.InvokeRequest, agent_pb2.InvokeResponse],
    ) -> agent_pb2.InvokeResponse:
        """Run one skill (or replay an idempotent result)."""
        result = await self._runner.invoke(_invocation(request, context))
        return self._response(result)

    async def InvokeStream(
        self,
        request: agent_pb2.InvokeStreamRequest,
        context: grpc.aio.ServicerContext[agent_pb2.InvokeStreamRequest, agent_pb2.InvokeStreamResponse],
    ) -> AsyncIterator[agent_pb2.InvokeStreamResponse]:
        """Run one skill, streaming its progress events, then its result."""
        invocation = _invocation(request.invocation, context)
        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        # A task (it copies this call's context vars: identity, trace) so events flow while the skill runs.
        run = asyncio.create_task(self._runner.invoke(invocation, progress=events.put))
        run.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                detail = _struct(event.detail) if event.detail else None
                yield agent_pb2.InvokeStreamResponse(
                    progress=agent_pb2.InvokeProgress(message=event.message, fraction=event.fraction, detail=detail)
                )
            result = await run
        finally:
            if not run.done():  # the caller went away: stop the skill
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        yield agent_pb2.InvokeStreamResponse(result=self._response(result))

    def _response(self, result: InvocationResult) -> agent_pb2.InvokeResponse:
        return agent_pb2.InvokeResponse(
            output=_struct(result.output),
            agent_name=self.card.name,
            agent_version=self.card.version,
            model_usages=[
                agent_pb2.ModelUsage(model_name=u.model_name, model_version=u.model_version, latency=_duration(u.latency))
                for u in result.model_usages
            ],
            replayed=result.replayed,
            duration=_duration(result.duration),
        )


def _invocation(request: agent_pb2.InvokeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Invocation:
    remaining = context.time_remaining()
    return Invocation(
        skill=request.skill,
        input=struct_to_dict(request.input),
        task_id=request.task_id,
        step_id=request.step_id,
        conversation_id=request.conversation_id,
        idempotency_key=request.idempotency_key,
        delegation_token=request.delegation_token,
        caller=_caller(),
        trace_id=telemetry.current_trace_id(),
        deadline=None if remaining is None else time.monotonic() + remaining,
    )


def _caller() -> str:
    identity = security.current_identity()
    return identity.uri if identity is not None else ""




def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A ``Struct`` as plain JSON values (several times faster than ``json_format.MessageToDict``)."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; integral values arrive as int (2, not 2.0) for fields typed Any or dict.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration
