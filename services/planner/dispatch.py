"""Choosing the agent instance for a step (discovery, BASIC view) and calling it (``AgentService.Invoke``).

A retry goes back to the instance of the earlier attempt while that instance is alive: the agent's
idempotency cache is per instance, so only that instance can replay a result it already computed (a
planner that died after the call but before recording it). When that instance is gone, its cache went
with it and any live instance is as good as another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc

from agentmesh._channel import create_channel
from agentmesh._errors import FailedPreconditionError, MeshError, UnavailableError, from_rpc_error
from agentmesh._registry_client import RegistryClient
from agentmesh._settings import Settings
from agentmesh.services.planner.plans import StepSpec
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, registry_pb2

__all__ = ["Choice", "Dispatcher"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """The instance a step attempt goes to, and the record of why."""

    namespace: str
    name: str
    version: str
    endpoint: str
    instance_id: str
    spiffe_id: str
    query: dict[str, Any]
    candidates: list[dict[str, Any]]
    reason: str

    @property
    def agent(self) -> dict[str, str]:
        """The ResolvedAgent as stored."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "endpoint": self.endpoint,
            "instance_id": self.instance_id,
        }

    def record(self) -> dict[str, Any]:
        """The collaborator-choice row (query, ranked candidates, chosen, reason)."""
        return {"query": self.query, "candidates": self.candidates, "chosen": self.agent, "reason": self.reason}


def _candidate(c: registry_pb2.Candidate) -> dict[str, Any]:
    card = c.instance.card
    return {
        "namespace": card.namespace,
        "name": card.name,
        "version": card.version,
        "endpoint": card.endpoint,
        "instance_id": c.instance.instance_id,
        "spiffe_id": card.spiffe_id,
        "score": round(c.score, 6),
        "reasons": list(c.reasons),
        "matched_skill": c.matched_skill,
    }


_KEEP_WARM = 30.0  # seconds a discovery query is kept fresh after a step last asked it
_AWAY_PAUSE = 5.0  # seconds between refresh rounds while the registry does not answer (its breaker counts them)


def _key(query: dict[str, Any]) -> str:
    return repr(sorted(query.items()))


def _age_note(age: float) -> str:
    return f" (discovery answer {age * 1000:.0f} ms old)" if age else ""


class Dispatcher:
    """Discovery with a short per-query cache, instance choice, and one channel per agent endpoint."""

    def __init__(self, settings: Settings, registry: RegistryClient | None = None) -> None:
        self._settings = settings
        self.registry = registry
        self._answers: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._used: dict[str, tuple[dict[str, Any], float]] = {}  # query by key, and when a step last asked it
        self._channels: dict[tuple[str, str, str], grpc.aio.Channel] = {}  # by endpoint and agent name

    def query_of(self, spec: StepSpec) -> dict[str, Any]:
        """The discovery query of a step (as recorded)."""
        agent = spec.agent
        return {
            "names": list(agent.get("names", ())),
            "patterns": list(agent.get("patterns", ())),
            "purpose": agent.get("purpose", ""),
            "required_policies": list(agent.get("policies", ())),
            "skill": spec.skill,
            "labels": dict(agent.get("labels", {})),
            "version_constraint": agent.get("version", ""),
            "intent": agent.get("intent", ""),
            "max_results": 8,
            "view": "BASIC",
        }

    async def discover(
        self, query: dict[str, Any], *, fresh: bool = False, refresh: bool = False
    ) -> tuple[list[dict[str, Any]], float]:
        """Ranked candidates for a query and the answer's age in seconds (cached for a short while); with
        ``refresh``, the cache is being kept fresh (not a use of the query)."""
        key = _key(query)
        now = time.monotonic()
        if not refresh:
            self._used[key] = (query, now)
        cached = self._answers.get(key)
        if cached is not None and not fresh and now - cached[0] < self._settings.planner_discovery_cache_ttl:
            return cached[1], now - cached[0]
        arguments = {k: v for k, v in query.items() if k != "view"}
        if self.registry is None:
            raise UnavailableError("the planner is not connected to the registry yet")
        answer = await self.registry.discover(view=registry_pb2.INSTANCE_VIEW_BASIC, **arguments)
        candidates = [_candidate(c) for c in answer.candidates]
        self._answers[key] = (time.monotonic(), candidates)
        return candidates, 0.0

    async def keep_fresh(self) -> None:
        """Run until cancelled: re-ask, every half cache lifetime, the queries steps asked in the last
        ``_KEEP_WARM`` seconds, so a step finds a fresh answer without waiting for the registry (and starts in
        the transaction that claims it); a query no step asked for that long is forgotten."""
        interval = self._settings.planner_discovery_cache_ttl / 2
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, (query, used) in list(self._used.items()):
                if now - used > _KEEP_WARM:
                    del self._used[key]
                    self._answers.pop(key, None)
                    continue
                answered = self._answers.get(key)
                if answered is not None and now - answered[0] < interval:
                    continue
                try:
                    await self.discover(query, fresh=True, refresh=True)
                except Exception as exc:  # the registry away: steps ask on their own; few probes from here meanwhile
                    logger.debug("refreshing discovery answers paused (%s)", exc)
                    await asyncio.sleep(_AWAY_PAUSE)
                    break

    def peek(self, spec: StepSpec) -> Choice | None:
        """A first attempt's instance from a fresh cached discovery answer, without waiting; None when the answer
        is not cached (or has aged out), or lists no candidate: then :meth:`choose` asks the registry."""
        query = self.query_of(spec)
        key, now = _key(query), time.monotonic()
        self._used[key] = (query, now)
        cached = self._answers.get(key)
        if cached is None:
            return None
        age = now - cached[0]
        if age >= self._settings.planner_discovery_cache_ttl or not cached[1]:
            return None
        return self._choice(query, cached[1], cached[1][0], self._ranked_first(cached[1], age))

    async def choose(self, spec: StepSpec, *, previous_instance_id: str = "") -> Choice:
        """The instance for an attempt: the earlier attempt's while it lives, else the best candidate."""
        query = self.query_of(spec)
        candidates, age = await self.discover(query)
        if previous_instance_id and all(c["instance_id"] != previous_instance_id for c in candidates):
            candidates, age = await self.discover(query, fresh=True)
        if not candidates:
            raise FailedPreconditionError(f"discovery found no live agent offering skill {spec.skill!r}")
        chosen = candidates[0]
        reason = self._ranked_first(candidates, age)
        if previous_instance_id:
            cached = _age_note(age)
            earlier = next((c for c in candidates if c["instance_id"] == previous_instance_id), None)
            if earlier is None:
                earlier = await self._live_instance(candidates, previous_instance_id)
            if earlier is not None:
                chosen = earlier
                reason = (
                    f"the instance of the earlier attempt ({previous_instance_id}) is alive: its idempotency cache "
                    f"replays a result it already computed{cached}"
                )
            else:
                reason = f"the earlier attempt's instance {previous_instance_id} is gone; {reason}"
        return self._choice(query, candidates, chosen, reason)

    @staticmethod
    def _ranked_first(candidates: list[dict[str, Any]], age: float) -> str:
        first = candidates[0]
        return f"ranked first of {len(candidates)}: {'; '.join(first['reasons']) or 'best score'}{_age_note(age)}"

    def _choice(self, query: dict[str, Any], candidates: list[dict[str, Any]], chosen: dict[str, Any], reason: str) -> Choice:
        spiffe_id = chosen["spiffe_id"] or (
            f"spiffe://{self._settings.trust_domain}/agent/{chosen['namespace']}/{chosen['name']}"
        )
        return Choice(
            namespace=chosen["namespace"],
            name=chosen["name"],
            version=chosen["version"],
            endpoint=chosen["endpoint"],
            instance_id=chosen["instance_id"],
            spiffe_id=spiffe_id,
            query=query,
            candidates=candidates,
            reason=reason,
        )

    async def _live_instance(self, candidates: list[dict[str, Any]], instance_id: str) -> dict[str, Any] | None:
        """The earlier attempt's instance, if it still serves one of the candidates' versions.

        Discovery answers one instance per agent version (the least loaded), so a live earlier instance can be
        missing from it while another instance of the same version is picked; going there would run the skill
        again beside the result the earlier instance holds. Its version's live instances (GetAgent) tell."""
        if self.registry is None:
            return None
        versions = list(dict.fromkeys((c["namespace"], c["name"], c["version"]) for c in candidates))[:3]
        for namespace, name, version in versions:
            try:
                answer = await self.registry.get_agent(namespace, name, version, deadline=2.0)
            except MeshError:
                continue  # the registry cannot say: the best candidate it is
            for instance in answer.instances:
                if instance.instance_id == instance_id and instance.state == agent_pb2.SERVING_STATE_SERVING:
                    like = next(c for c in candidates if (c["namespace"], c["name"], c["version"]) == (namespace, name, version))
                    return {**like, "endpoint": instance.card.endpoint or like["endpoint"], "instance_id": instance_id,
                            "spiffe_id": instance.card.spiffe_id or like["spiffe_id"]}
        return None

    def forget(self, spec: StepSpec) -> None:
        """Drop the cached answer of a step's query (its instance failed to answer)."""
        self._answers.pop(_key(self.query_of(spec)), None)

    def forget_version(self, namespace: str, name: str, version: str) -> None:
        """Drop every cached answer that offers ``namespace/name@version`` (its routing changed: a canary rolled
        back); the next step asks the registry again."""
        for key, (_, candidates) in list(self._answers.items()):
            if any((c["namespace"], c["name"], c["version"]) == (namespace, name, version) for c in candidates):
                del self._answers[key]

    async def invoke(
        self, choice: Choice, request: agent_pb2.InvokeRequest, deadline: float
    ) -> agent_pb2.InvokeResponse:
        """Call ``Invoke`` on the chosen agent instance within ``deadline`` seconds; failures raise the matching
        MeshError. The server must prove it is that agent (its certificate's name for ``agent/<namespace>/<name>``),
        not just any workload of the mesh at the card's endpoint: the step's input and token are for it alone."""
        key = (choice.endpoint, choice.namespace, choice.name)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = create_channel(
                choice.endpoint, self._settings, kind="service", name="planner",
                server_identity=f"agent/{choice.namespace}/{choice.name}",
            )
        try:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            return await stub.Invoke(request, timeout=deadline)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def close(self) -> None:
        """Close every agent channel."""
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close(grace=None) for c in channels), return_exceptions=True)
