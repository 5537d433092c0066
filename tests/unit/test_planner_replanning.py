"""Plan alternatives and the plan a re-plan makes from them (no servers needed)."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh._errors import FailedPreconditionError, InvalidArgumentError
from agentmesh.services.planner.planning import capability_plan, check_references
from agentmesh.services.planner.plans import PlanDocument, validate_plan
from agentmesh.services.planner.playbooks import Playbook
from agentmesh.services.planner.replanning import with_alternatives

PLAYBOOK = """
name: alt
defaults: {agent: {patterns: ["support/.*"]}, timeout: 5}
steps:
  - {id: a, skill: one, input: {x: "${task.input.x}"}}
  - id: b
    skill: two
    depends_on: [a]
    agent: {names: [support/primary]}
    input: {y: "${steps.a.output.y}"}
    alternatives:
      - {description: the backup, agent: {names: [support/backup]}}
      - {skill: two_slow, agent: {names: [support/slow]}, input: {y: "${steps.a.output.y}", slow: true}}
"""


def _candidate(name: str, skill: str) -> dict[str, Any]:
    return {"namespace": "ns", "name": name, "matched_skill": skill, "reasons": ["r"], "version": "1"}


def test_a_playbook_alternative_keeps_the_playbook_defaults_and_is_in_the_plan() -> None:
    doc = Playbook.from_yaml(PLAYBOOK).render("goal")
    step = PlanDocument.parse(doc).steps["b"]
    assert step.alternatives[0]["agent"] == {"patterns": ["support/.*"], "names": ["support/backup"]}
    assert len(step.alternatives) == 2


def test_each_replan_takes_the_next_alternative_and_keeps_the_rest() -> None:
    doc = Playbook.from_yaml(PLAYBOOK).render("goal")
    made = with_alternatives(doc, ["b"])
    assert made is not None
    second, used = made
    step = PlanDocument.parse(second).steps["b"]
    assert used["b"]["description"] == "the backup"
    assert step.agent["names"] == ["support/backup"] and step.skill == "two" and step.depends_on == ("a",)
    assert step.input == {"y": "${steps.a.output.y}"} and len(step.alternatives) == 1
    third, _ = with_alternatives(second, ["b"]) or ({}, {})
    step = PlanDocument.parse(third).steps["b"]
    assert step.skill == "two_slow" and step.input["slow"] is True and not step.alternatives
    assert with_alternatives(third, ["b"]) is None  # used up: the task fails
    assert with_alternatives(doc, ["a"]) is None  # a step without alternatives cannot be re-planned
    assert doc["steps"][1]["agent"]["names"] == ["support/primary"]  # the old version is untouched


def test_an_alternative_must_change_something_the_schema_knows() -> None:
    doc: dict[str, Any] = {"strategy": "PLAYBOOK", "steps": [{"id": "a", "skill": "s", "alternatives": [{}]}]}
    with pytest.raises(InvalidArgumentError):
        validate_plan(doc)
    doc["steps"][0]["alternatives"] = [{"depends_on": ["x"]}]
    with pytest.raises(InvalidArgumentError):
        validate_plan(doc)


def test_capability_matching_lists_the_other_discovered_agents_as_alternatives() -> None:
    candidates = [_candidate("a", "s"), _candidate("a", "t"), _candidate("b", "s2"), _candidate("c", "s"), _candidate("d", "s")]
    doc = capability_plan("goal", {"x": 1}, candidates)
    validate_plan(doc)
    alternatives = doc["steps"][0]["alternatives"]
    assert [a["agent"]["names"] for a in alternatives] == [["ns/b"], ["ns/c"]]
    assert alternatives[0]["skill"] == "s2"
    assert "alternatives" not in capability_plan("goal", {}, candidates[:1])["steps"][0]


def test_a_model_made_plan_whose_alternative_names_an_undiscovered_agent_is_rejected() -> None:
    proposal: dict[str, Any] = {
        "strategy": "LLM",
        "steps": [{"id": "a", "skill": "s", "agent": {"names": ["ns/a"]}, "alternatives": [{"agent": {"names": ["ns/zz"]}}]}],
    }
    with pytest.raises(FailedPreconditionError, match="alternative 1 names"):
        check_references(proposal, [_candidate("a", "s")])
    proposal["steps"][0]["alternatives"] = [{"agent": {"names": ["ns/b"]}}]
    check_references(proposal, [_candidate("a", "s"), _candidate("b", "s")])


async def test_a_capability_plan_made_after_a_rejected_model_plan_says_why_it_exists() -> None:
    from agentmesh.services.planner.planning import Planner
    from agentmesh.services.planner.playbooks import PlaybookLibrary

    class Discovery:
        async def discover(self, query: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
            return [_candidate("a", "s"), _candidate("b", "s")], 0.0

    async def model(goal: str, task_input: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"strategy": "LLM", "steps": [{"id": "x", "skill": "s", "agent": {"names": ["ghost/agent"]}}]}

    planner = Planner(PlaybookLibrary(), Discovery(), model)  # type: ignore[arg-type]
    outcome = await planner.plan("do the thing", {"x": 1})
    assert outcome.plan["strategy"] == "CAPABILITY_MATCH"
    assert outcome.plan["steps"][0]["alternatives"] == [
        {"description": "s on ns/b", "skill": "s", "agent": {"names": ["ns/b"]}}
    ]
    (rejected,) = outcome.rejections
    assert rejected[0] == "LLM" and "ghost/agent" in rejected[1]
    assert "instead of the LLM plan, rejected:" in outcome.reason and "ghost/agent" in outcome.reason
