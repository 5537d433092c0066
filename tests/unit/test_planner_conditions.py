"""``when`` and approval conditions see the outputs they name, and their result does not depend on the rest."""

from __future__ import annotations

from agentmesh.services.planner.rules import evaluate
from agentmesh.services.planner.templates import Scope

_SCOPE = Scope(
    {"amount": 150},
    {"lookup": {"amount": 120}, "kb": {"articles": [{"body": "x" * 10_000}] * 20}, "check_1": {"passed": False}},
    {"check": ["check_1", "check_2"]},
)


def test_a_condition_is_given_only_the_steps_it_names() -> None:
    activation = _SCOPE.cel_activation("steps.lookup.output.amount > 100 && task.input.amount > 100")
    assert set(activation["steps"]) == {"lookup"}
    assert activation["task"] == {"input": {"amount": 150}}
    assert evaluate("steps.lookup.output.amount > 100", activation) == (True, "")


def test_an_alias_is_given_as_the_latest_round_that_succeeded() -> None:
    activation = _SCOPE.cel_activation("!steps . check.output.passed")
    assert activation["steps"] == {"check": {"output": {"passed": False}}}
    assert evaluate("!steps . check.output.passed", activation)[0] is True


def test_a_condition_that_uses_steps_as_a_whole_is_given_every_step() -> None:
    for rule in ("size(steps) == 4", "'kb' in steps", "steps['lookup'].output.amount > 100", "steps.size() == 4",
                 "steps.exists(s, s == 'kb')", "steps.all(s, s != 'x') && steps.lookup.output.amount > 100"):
        activation = _SCOPE.cel_activation(rule)
        assert set(activation["steps"]) == {"lookup", "kb", "check_1", "check"}, rule
        assert evaluate(rule, activation)[0] is True, rule


def test_a_condition_naming_a_step_that_did_not_succeed_is_false_with_why() -> None:
    holds, why = evaluate("steps.missing.output.ok", _SCOPE.cel_activation("steps.missing.output.ok"))
    assert holds is False and "could not be evaluated" in why
