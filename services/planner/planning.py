"""Planning strategies, tried in order: a playbook (named, or matched to the task), a model-made plan, and
capability matching (one step to the best discovered skill).

Each strategy returns a plan document (see :mod:`plans`) or None; a proposed plan that fails validation is
returned as a rejection (strategy, reason, proposal) and the next strategy is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from agentmesh._errors import FailedPreconditionError, InvalidArgumentError, MeshError
from agentmesh.services.planner.dispatch import Dispatcher
from agentmesh.services.planner.plans import validate_plan
from agentmesh.services.planner.playbooks import Playbook, PlaybookLibrary

__all__ = ["ModelPlanner", "PlanOutcome", "Planner", "alternatives_of", "capability_plan", "check_references"]

logger = logging.getLogger(__name__)
_MAX_INTENT = 512  # the longest discovery intent the registry accepts (services/registry/servicer.py)

# A model-made plan strategy: (goal, task input, discovered candidates) -> proposed plan document or None.
ModelPlanner = Callable[[str, dict[str, Any], list[dict[str, Any]]], Awaitable[dict[str, Any] | None]]


@dataclass
class PlanOutcome:
    """The plan chosen, why, and the proposals rejected on the way."""

    plan: dict[str, Any]
    reason: str
    rejections: list[tuple[str, str, Any]] = field(default_factory=list)


class Planner:
    """Makes the first plan of a task."""

    def __init__(
        self, playbooks: PlaybookLibrary, dispatcher: Dispatcher | None, model: ModelPlanner | None = None
    ) -> None:
        self.playbooks = playbooks
        self._dispatcher = dispatcher
        self._model = model

    def use_model(self, model: ModelPlanner | None) -> None:
        """Try ``model`` for tasks no playbook fits (before capability matching)."""
        self._model = model

    async def plan(self, goal: str, task_input: dict[str, Any], playbook: str = "") -> PlanOutcome:
        """The plan of a new task, validated against the plan schema (the store trusts it);
        FailedPreconditionError when no strategy can make one."""
        chosen = self.check_input(goal, task_input, playbook)
        if chosen is not None and playbook:
            return PlanOutcome(chosen.render(goal), f"playbook {playbook!r} was requested")
        if chosen is not None:
            return PlanOutcome(chosen.render(goal), f"playbook {chosen.name!r} matched the task ({chosen.description})")
        rejections: list[tuple[str, str, Any]] = []
        candidates = await self._candidates(goal)
        if self._model is not None and candidates:
            proposal: Any = None
            try:
                proposal = await self._model(goal, task_input, candidates)
                if proposal is not None:
                    check_references(proposal, candidates)
                    return PlanOutcome(proposal, "a model composed the plan from the discovered skills", rejections)
            except MeshError as exc:
                rejections.append(("LLM", exc.message, proposal))
                logger.info("model-made plan rejected: %s", exc.message)
        if candidates:
            reason = _why(candidates[0])
            if rejections:  # the plan replaces a rejected proposal: say so where the plan says why it exists
                reason += f"; instead of the {rejections[-1][0]} plan, rejected: {rejections[-1][1]}"
            plan = capability_plan(goal, task_input, candidates)
            validate_plan(plan)  # built from discovery's answer: checked like any plan before it is stored
            return PlanOutcome(plan, reason, rejections)
        raise FailedPreconditionError(
            f"no plan for {goal!r}: no playbook matches and discovery found no agent for it"
            + (f" (rejected: {rejections[-1][1]})" if rejections else "")
        )

    def check_input(self, goal: str, task_input: dict[str, Any], playbook: str = "") -> Playbook | None:
        """The playbook a task would run (named, or matched to its goal; None: another strategy plans it), after
        checking the task's input against its ``input_schema`` (InvalidArgumentError naming the field;
        NotFoundError for an unknown named playbook). Nothing is planned or stored."""
        chosen = self.playbooks.get(playbook) if playbook else self.playbooks.match(goal, task_input)
        if chosen is not None:
            _check_input(chosen.source.get("input_schema"), task_input, chosen.name, matched=not playbook)
        return chosen

    async def _candidates(self, goal: str) -> list[dict[str, Any]]:
        if self._dispatcher is None or not goal.strip():
            return []
        query = {"intent": _intent(goal), "max_results": 8, "view": "BASIC"}
        candidates, _ = await self._dispatcher.discover(query)
        return [c for c in candidates if c["matched_skill"]]


def _intent(goal: str) -> str:
    """The discovery intent of a goal: its first ``_MAX_INTENT`` characters, cut at a word where there is one.

    A goal may be 10,000 characters; the registry refuses a longer intent (INVALID_ARGUMENT 'intent longer than
    512 characters', which named a field the caller never sent), and the start of a goal says what it is about.
    """
    if len(goal) <= _MAX_INTENT:
        return goal
    head = goal[:_MAX_INTENT]
    cut = head.rstrip().rfind(" ")
    return head[:cut] if cut > _MAX_INTENT // 2 else head


def _check_input(schema: Any, task_input: dict[str, Any], playbook: str, *, matched: bool) -> None:
    """Refuse, before anything is stored, a task whose input its playbook's ``input_schema`` rejects: its steps
    would fail one by one on the missing fields (e.g. triage's 'input.text: Field required')."""
    if not schema:
        return
    validator_class = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(task_input))
    if error is None:
        return
    path = ".".join(str(part) for part in error.absolute_path)
    place = f"input.{path}" if path else "input"
    if matched:
        message = (
            f"playbook {playbook!r} matched the goal, but the input does not match its input schema at {place}: "
            f"{error.message} (give the input it asks for, or name another playbook)"
        )
    else:
        message = f"the input does not match playbook {playbook!r}'s input schema at {place}: {error.message}"
    raise InvalidArgumentError(message, field=place, reason="INPUT_SCHEMA_VIOLATION")


def check_references(proposal: Any, candidates: list[dict[str, Any]]) -> None:
    """Validate a proposed plan, and that every step names a discovered agent and one of its skills."""
    validate_plan(proposal)
    offered = {(f"{c['namespace']}/{c['name']}", c["matched_skill"]) for c in candidates}
    agents = {a for a, _ in offered}
    for step in proposal["steps"]:
        if step.get("kind", "agent") != "agent":
            continue
        # An alternative is a reference too (a re-plan would call it): it must name discovered agents as well.
        for where, part in [("", step), *((f" alternative {i + 1}", a) for i, a in enumerate(step.get("alternatives", [])))]:
            if where and "agent" not in part:
                continue  # the alternative keeps the step's agent (checked above)
            names = (part.get("agent") or {}).get("names") or []
            if not names:
                raise FailedPreconditionError(f"step {step['id']!r}{where} names no agent", reason="PLAN_UNKNOWN_AGENT")
            unknown = [n for n in names if n not in agents]
            if unknown:
                raise FailedPreconditionError(
                    f"step {step['id']!r}{where} names {unknown}, which discovery did not return for this task",
                    reason="PLAN_UNKNOWN_AGENT",
                )


def capability_plan(goal: str, task_input: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """One step to the best discovered skill, fed the whole task input; the next-ranked other agents are its
    alternatives (a re-plan goes to them if the best one fails for good)."""
    best = candidates[0]
    step: dict[str, Any] = {
        "id": "main",
        "description": f"{best['matched_skill']} on {best['namespace']}/{best['name']}",
        "skill": best["matched_skill"],
        "agent": {"names": [f"{best['namespace']}/{best['name']}"]},
        "input": {key: f"${{task.input.{key}}}" for key in task_input},
    }
    alternatives = alternatives_of(best, candidates)
    if alternatives:
        step["alternatives"] = alternatives
    return {"strategy": "CAPABILITY_MATCH", "goal": goal, "steps": [step]}


def alternatives_of(chosen: dict[str, Any], candidates: list[dict[str, Any]], limit: int = 2) -> list[dict[str, Any]]:
    """Other discovered agents (ranked order, one entry each) offering a skill, as plan-step alternatives."""
    seen = {f"{chosen['namespace']}/{chosen['name']}"}
    alternatives: list[dict[str, Any]] = []
    for c in candidates:
        agent = f"{c['namespace']}/{c['name']}"
        if agent in seen or not c.get("matched_skill") or len(alternatives) >= limit:
            continue
        seen.add(agent)
        alternatives.append(
            {"description": f"{c['matched_skill']} on {agent}", "skill": c["matched_skill"], "agent": {"names": [agent]}}
        )
    return alternatives


def _why(best: dict[str, Any]) -> str:
    return (
        f"capability matching: {best['namespace']}/{best['name']} skill {best['matched_skill']} ranked first "
        f"({'; '.join(best['reasons'])})"
    )
