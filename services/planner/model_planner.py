"""A model-made plan on CPU: MiniLM (on Triton) composes a plan from the discovered skills' descriptions.

The goal and every discovered skill's description are embedded; the skills most similar to the goal (cosine
at least ``min_similarity``, at most ``max_steps``) become independent steps fed the task input. The result is
an ordinary proposal: the planner validates it against the plan schema and refuses any agent discovery did
not return, exactly as it would a generative model's JSON plan (production points the planner at one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentmesh._registry_client import RegistryClient
from agentmesh.inference import InferenceClient

__all__ = ["EmbeddingPlanner"]


class EmbeddingPlanner:
    """``await planner(goal, task_input, candidates)`` -> a proposed plan document, or None when nothing fits."""

    def __init__(
        self,
        inference: InferenceClient,
        registry: RegistryClient,
        *,
        min_similarity: float = 0.25,
        max_steps: int = 3,
        deadline: float = 5.0,
    ) -> None:
        self._inference = inference
        self._registry = registry
        self._min_similarity = min_similarity
        self._max_steps = max_steps
        self._deadline = deadline

    async def _skills(self, candidates: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        """(agent "ns/name", skill, description) of every skill of the discovered agents (full cards)."""
        skills: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for candidate in candidates:
            agent = f"{candidate['namespace']}/{candidate['name']}"
            if agent in seen:
                continue
            seen.add(agent)
            card = (
                await self._registry.get_agent(candidate["namespace"], candidate["name"], deadline=self._deadline)
            ).card
            skills += [(agent, s.name, s.description or s.name.replace("_", " ")) for s in card.skills]
        return skills

    async def __call__(
        self, goal: str, task_input: dict[str, Any], candidates: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        skills = await self._skills(candidates)
        if not skills:
            return None
        texts = [goal] + [f"{skill.replace('_', ' ')}: {description}" for _, skill, description in skills]
        vectors = (await self._inference.embed(texts, deadline=self._deadline)).embeddings
        similarity = vectors[1:] @ vectors[0]
        ranked = [int(i) for i in np.argsort(-similarity) if similarity[i] >= self._min_similarity]
        # One step per skill; other agents offering the same skill become its alternatives (for a re-plan).
        order: list[int] = []
        for index in ranked:
            if all(skills[index][1] != skills[i][1] for i in order):
                order.append(index)
        order = order[: self._max_steps]
        if not order:
            return None
        steps = []
        for rank, index in enumerate(order):
            agent, skill, description = skills[index]
            step: dict[str, Any] = {
                "id": f"{skill}_{rank + 1}"[:63],
                "description": f"{description} (similarity {float(similarity[index]):.2f} to the goal)",
                "skill": skill,
                "agent": {"names": [agent]},
                "input": {key: f"${{task.input.{key}}}" for key in task_input},
            }
            others = list(dict.fromkeys(a for i in ranked if skills[i][1] == skill and (a := skills[i][0]) != agent))
            if others:
                step["alternatives"] = [{"agent": {"names": [a]}} for a in others[:2]]
            steps.append(step)
        return {"strategy": "LLM", "goal": goal, "steps": steps}
