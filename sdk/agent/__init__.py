"""The Agent SDK: write an agent as a class of typed ``@skill`` methods and serve it on the mesh.

::

    from pydantic import BaseModel
    from agentmesh.agent import Agent, AgentInfo, SkillContext, run_agent, skill

    class TicketIn(BaseModel):
        text: str

    class TriageOut(BaseModel):
        intent: str
        priority: str

    class Triage(Agent):
        card = AgentInfo(name="triage", namespace="support", version="1.0.0", purpose="ticket-triage")

        @skill(description="Classify a ticket's intent and priority")
        async def classify(self, ticket: TicketIn, ctx: SkillContext) -> TriageOut:
            await ctx.progress("classifying", 0.5)
            return TriageOut(intent="refund", priority="high")

    run_agent(Triage())  # or: agentmesh agent run my_module:Triage

Input and output JSON Schemas come from the pydantic models. Bad input is ``INVALID_ARGUMENT`` naming
the field (``input.text``); an output that breaks its schema is ``INTERNAL`` (logged, never returned);
an unknown skill is ``NOT_FOUND``; a repeated idempotency key replays the first result, and reusing a key
from another caller, under another delegation (token kind, subject or scopes) or with a different input is
``INVALID_ARGUMENT`` on ``idempotency_key`` (``IDEMPOTENCY_KEY_REUSED``). The call's delegation token is
verified for this agent before the skill runs: ``ctx.delegation`` holds the verified claims, or None (a bad
token does not fail the call; ``ctx.delegation_refusal`` says why).
"""

from agentmesh.agent._agent import Agent
from agentmesh.agent._context import ModelUsage, Progress, SkillContext
from agentmesh.agent._idempotency import IdempotencyCache
from agentmesh.agent._info import AgentInfo
from agentmesh.agent._registration import Registration
from agentmesh.agent._runner import Invocation, InvocationResult, SkillRunner
from agentmesh.agent._runtime import AgentRuntime, run_agent
from agentmesh.agent._servicer import AgentServicer, build_card, struct_to_dict
from agentmesh.agent._skill import SkillSpec, skill

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentRuntime",
    "AgentServicer",
    "IdempotencyCache",
    "Invocation",
    "InvocationResult",
    "ModelUsage",
    "Progress",
    "Registration",
    "SkillContext",
    "SkillRunner",
    "SkillSpec",
    "build_card",
    "run_agent",
    "skill",
    "struct_to_dict",
]
