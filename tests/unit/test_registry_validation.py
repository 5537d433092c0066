"""Card and query validation: every refusal names the offending field."""

from __future__ import annotations

import pytest

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.registry.validation import (
    compile_patterns,
    parse_specifier,
    parse_version,
    validate_card,
)
from agentmesh.services.registry.visibility import compile_all
from tests.fixtures.registry import make_card


def _field_of(card_change: dict[str, object]) -> str:
    card = make_card("triage")
    for key, value in card_change.items():
        setattr(card, key, value)
    with pytest.raises(InvalidArgumentError) as refused:
        validate_card(card)
    return refused.value.field


def test_a_valid_card_passes_and_gives_its_version() -> None:
    assert str(validate_card(make_card("triage", version="2.0.0rc1"))) == "2.0.0rc1"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "-triage"}, "card.name"),
        ({"name": "x" * 64}, "card.name"),
        ({"namespace": "Support"}, "card.namespace"),
        ({"version": ""}, "card.version"),
        ({"version": "v1"}, "card.version"),
        ({"version": "1.0.0-rc1"}, "card.version"),
        ({"purpose": "Ticket Triage"}, "card.purpose"),
        ({"endpoint": "127.0.0.1"}, "card.endpoint"),
        ({"endpoint": "127.0.0.1:70000"}, "card.endpoint"),
        ({"endpoint": "[::zz]:80"}, "card.endpoint"),
        ({"spiffe_id": "https://agentmesh.test/agent/triage"}, "card.spiffe_id"),
        ({"description": "x" * 5000}, "card.description"),
    ],
)
def test_bad_fields_are_named(change: dict[str, object], field: str) -> None:
    assert _field_of(change) == field


def test_policies_labels_and_skills_are_bounded() -> None:
    card = make_card("triage", policies=("pii:allowed", "pii:allowed"))
    with pytest.raises(InvalidArgumentError, match="unique") as refused:
        validate_card(card)
    assert refused.value.field == "card.policies"
    card = make_card("triage", labels={"team": "sup port"})
    with pytest.raises(InvalidArgumentError) as refused:
        validate_card(card)
    assert refused.value.field == "card.labels[team]"
    card = make_card("triage", skills=("classify_ticket", "classify_ticket"))
    with pytest.raises(InvalidArgumentError, match="twice") as refused:
        validate_card(card)
    assert refused.value.field == "card.skills[1].name"
    card = make_card("triage", skills=())
    with pytest.raises(InvalidArgumentError) as refused:
        validate_card(card)
    assert refused.value.field == "card.skills"


def test_skill_schemas_must_be_json_schema() -> None:
    card = make_card("triage")
    card.skills[0].input_schema.update({"type": "object", "required": "text"})
    with pytest.raises(InvalidArgumentError, match="JSON Schema") as refused:
        validate_card(card)
    assert refused.value.field == "card.skills[0].input_schema"


def test_versions_and_constraints_are_pep_440() -> None:
    assert parse_version("1.2.0").release == (1, 2, 0)
    assert parse_specifier(">=1.0,<2").contains("1.5")
    with pytest.raises(InvalidArgumentError) as refused:
        parse_specifier("~1")
    assert refused.value.field == "characteristics.version_constraint"


def test_visibility_patterns_are_compiled_once_and_bounded() -> None:
    first = compile_patterns(["support/.*"])
    assert first[0] is compile_patterns(["support/.*"])[0]
    with pytest.raises(InvalidArgumentError) as refused:
        compile_all(compile_patterns(["ok", "(["]))  # RE2 compiles on first use (on the worker in a server)
    assert refused.value.field == "visibility.patterns[1]"
    with pytest.raises(InvalidArgumentError):
        compile_patterns(["a"] * 33)
    with pytest.raises(InvalidArgumentError):
        compile_patterns([""])
