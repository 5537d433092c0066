"""``SkillRunner``: runs one invocation of an agent's skill, without any gRPC (the servicer is a thin shell).

It validates the input, verifies the call's delegation token (with :attr:`SkillRunner.verifier`, whose
audience is this agent), applies the idempotency cache (bound to the caller, the verified delegation and the
input), runs the skill with a :class:`SkillContext`, validates the output, records metrics, and counts calls
in flight so a stopping agent can drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Histogram

from agentmesh._errors import InvalidArgumentError, MeshError, NotFoundError, UnavailableError
from agentmesh.agent._agent import Agent
from agentmesh.agent._context import ModelUsage, ProgressSink, SkillContext
from agentmesh.agent._idempotency import IdempotencyCache, call_fingerprint
from agentmesh.agent._metrics import SKILL_IN_FLIGHT, SKILL_LATENCY, SKILL_REPLAYS
from agentmesh.agent._skill import SkillSpec
from agentmesh.security import DelegationClaims, DelegationVerifier

__all__ = ["Invocation", "InvocationResult", "SkillRunner"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    """One request to run a skill (the domain form of ``InvokeRequest``)."""

    skill: str
    input: dict[str, Any]
    task_id: str = ""
    step_id: str = ""
    conversation_id: str = ""
    idempotency_key: str = ""
    delegation_token: str = ""
    caller: str = ""
    trace_id: str = ""
    deadline: float | None = None  # time.monotonic() deadline


@dataclass(frozen=True)
class InvocationResult:
    """A skill's validated JSON output and what it cost (the domain form of ``InvokeResponse``)."""

    output: dict[str, Any]
    model_usages: tuple[ModelUsage, ...] = ()
    duration: float = 0.0  # seconds; the original run's when replayed
    replayed: bool = False


class SkillRunner:
    """Runs invocations of ``agent``'s skills; one per served agent."""

    def __init__(
        self,
        agent: Agent,
        *,
        cache: IdempotencyCache[InvocationResult] | None = None,
        verifier: DelegationVerifier | None = None,
    ) -> None:
        type(agent).check()
        self.agent = agent
        # Verifies delegation tokens addressed to this agent; without one no token is ever accepted.
        self.verifier = verifier
        self.name = agent.card.name
        self.cache: IdempotencyCache[InvocationResult] = cache if cache is not None else IdempotencyCache()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._in_flight_gauge = SKILL_IN_FLIGHT.labels(self.name)
        self._latencies: dict[tuple[str, str], Histogram] = {}

    @property
    def in_flight(self) -> int:
        """Invocations being served right now."""
        return self._in_flight

    @property
    def load(self) -> float:
        """In-flight calls as a fraction of the agent's ``max_concurrency``, in [0, 1]."""
        return min(1.0, self._in_flight / max(1, self.agent.max_concurrency))

    @property
    def draining(self) -> bool:
        """True once :meth:`start_draining` was called: new invocations are refused."""
        return self._draining

    def start_draining(self) -> None:
        """Refuse new invocations with ``UNAVAILABLE`` (the caller retries another instance)."""
        self._draining = True

    async def wait_idle(self) -> None:
        """Wait until no invocation is in flight (bound it with ``asyncio.timeout``)."""
        await self._idle.wait()

    def spec(self, name: str) -> SkillSpec:
        """The skill called ``name``; ``INVALID_ARGUMENT`` when empty, ``NOT_FOUND`` when unknown."""
        if not name:
            raise InvalidArgumentError("skill is required", field="skill")
        spec = self.agent.skills.get(name)
        if spec is None:
            known = ", ".join(sorted(self.agent.skills))
            raise NotFoundError(
                f"agent {self.name!r} has no skill {name!r} (it has: {known})",
                reason="SKILL_NOT_FOUND",
                metadata={"agent": self.name, "skill": name},
            )
        return spec

    async def invoke(self, invocation: Invocation, progress: ProgressSink | None = None) -> InvocationResult:
        """Run ``invocation`` (or replay its idempotent result); raises a ``MeshError`` on failure."""
        if self._draining:
            raise UnavailableError(f"agent {self.name!r} is draining; retry on another instance", reason="DRAINING")
        spec = self.spec(invocation.skill)
        value = spec.parse_input(invocation.input)
        delegation, refusal = self.verify_delegation(invocation)
        self._enter()
        try:
            if not invocation.idempotency_key:
                return await self._execute(spec, value, invocation, progress, delegation, refusal)
            # The token's kind too: a user token must not replay what a step token unlocked (e.g. PII).
            principal = (
                None
                if delegation is None
                else (delegation.kind, delegation.tenant, delegation.subject, *sorted(delegation.scopes))
            )
            result, replayed = await self.cache.run(
                spec.name,
                invocation.idempotency_key,
                call_fingerprint(caller=invocation.caller, delegation=principal, input=invocation.input),
                lambda: self._execute(spec, value, invocation, progress, delegation, refusal),
            )
            if replayed:
                SKILL_REPLAYS.labels(self.name, spec.name).inc()
                return dataclasses.replace(result, replayed=True)
            return result
        finally:
            self._leave()

    def verify_delegation(self, invocation: Invocation) -> tuple[DelegationClaims | None, str]:
        """``(claims, "")`` for a valid token, ``(None, reason)`` for a refused one, ``(None, "")`` for none.

        A refused token never fails the call here: the skill sees no verified delegation and decides.
        """
        token = invocation.delegation_token
        if not token:
            return None, ""
        if self.verifier is None:
            return None, "TOKEN_NOT_VERIFIABLE"
        try:
            return self.verifier.verify(token, task_id=invocation.task_id), ""
        except MeshError as exc:
            logger.debug("agent %s: delegation token refused (%s): %s", self.name, exc.reason, exc.message)
            return None, exc.reason

    async def _execute(
        self,
        spec: SkillSpec,
        value: Any,
        invocation: Invocation,
        progress: ProgressSink | None,
        delegation: DelegationClaims | None,
        refusal: str,
    ) -> InvocationResult:
        ctx = SkillContext(
            agent_name=self.name,
            skill=spec.name,
            delegation=delegation,
            delegation_refusal=refusal,
            _progress_sink=progress,
            **_call_fields(invocation),
        )
        started = time.perf_counter()
        outcome = "OK"
        try:
            output = spec.dump_output(await spec.call(self.agent, value, ctx))
        except asyncio.CancelledError:
            outcome = grpc.StatusCode.CANCELLED.name
            raise
        except MeshError as exc:
            outcome = exc.code.name
            raise
        except Exception:
            outcome = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            duration = time.perf_counter() - started
            self._latency(spec.name, outcome).observe(duration)
        return InvocationResult(output=output, model_usages=tuple(ctx.model_usages), duration=duration)

    def _latency(self, skill: str, outcome: str) -> Histogram:
        # labels() takes a lock and builds a key on every call; resolve each child once.
        child = self._latencies.get((skill, outcome))
        if child is None:
            child = self._latencies[skill, outcome] = SKILL_LATENCY.labels(self.name, skill, outcome)
        return child

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        self._in_flight_gauge.inc()

    def _leave(self) -> None:
        self._in_flight -= 1
        self._in_flight_gauge.dec()
        if self._in_flight == 0:
            self._idle.set()


# The invocation fields a skill sees on its context (ids, caller, deadline), derived so the two never drift.
_CONTEXT_FIELDS = tuple(
    f.name for f in dataclasses.fields(SkillContext) if f.name in {g.name for g in dataclasses.fields(Invocation)}
    and f.name != "skill"
)


def _call_fields(invocation: Invocation) -> dict[str, Any]:
    return {name: getattr(invocation, name) for name in _CONTEXT_FIELDS}
