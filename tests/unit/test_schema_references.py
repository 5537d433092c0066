"""A skill schema whose $ref does not resolve inside it is refused with the field and the reference named."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.registry.validation import validate_card
from tests.fixtures.registry import make_card


def _card_with_input_schema(schema: dict[str, Any]) -> Any:
    card = make_card("triage")
    card.skills[0].input_schema.Clear()
    card.skills[0].input_schema.update(schema)
    return card


@pytest.mark.parametrize(
    "schema",
    [
        {"$defs": {"text": {"type": "string"}}, "properties": {"text": {"$ref": "#/$defs/text"}}},
        {"$id": "https://schemas.example/ticket", "$defs": {"t": {"type": "string"}}, "items": {"$ref": "#/$defs/t"}},
        {"properties": {"$ref": {"type": "string"}}, "enum": [{"$ref": "data, not a reference"}]},
        {"type": "object", "properties": {"child": {"$ref": "#"}}},
    ],
)
def test_schemas_whose_references_resolve_inside_them_are_accepted(schema: dict[str, Any]) -> None:
    validate_card(_card_with_input_schema(schema))


@pytest.mark.parametrize(
    ("schema", "reference"),
    [
        ({"properties": {"text": {"$ref": "#/$defs/missing"}}}, "#/$defs/missing"),
        ({"$ref": "https://schemas.example/elsewhere.json"}, "https://schemas.example/elsewhere.json"),
        ({"items": {"$ref": "other.json#/x"}}, "other.json#/x"),
    ],
)
def test_an_unresolvable_reference_is_refused(schema: dict[str, Any], reference: str) -> None:
    with pytest.raises(InvalidArgumentError, match="does not resolve") as refused:
        validate_card(_card_with_input_schema(schema))
    assert reference in refused.value.message
    assert refused.value.field.endswith("input_schema")


def test_struct_round_trip_keeps_the_reference_key() -> None:
    struct = struct_pb2.Struct()
    struct.update({"$ref": "#"})
    assert dict(struct)["$ref"] == "#"
