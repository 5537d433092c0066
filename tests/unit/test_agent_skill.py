"""Declaring skills: schemas from pydantic models, signature checks, input and output validation."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

import agentmesh.agent
from agentmesh._errors import InternalError, InvalidArgumentError
from agentmesh.agent import Agent, AgentInfo, SkillContext, skill
from tests.integration.echo_agent import EchoAgent, EchoIn, EchoOut


class In(BaseModel):
    text: str


class Out(BaseModel):
    text: str


def test_package_exports_a_sorted_all() -> None:
    assert agentmesh.agent.__all__ == sorted(agentmesh.agent.__all__)
    for name in agentmesh.agent.__all__:
        assert hasattr(agentmesh.agent, name)


def test_skills_are_collected_with_names_descriptions_and_tags() -> None:
    assert list(EchoAgent.skills) == ["echo", "hold", "broken"]
    echo = EchoAgent.skills["echo"]
    assert echo.description == "Repeat the text ``times`` times."  # first docstring paragraph only
    assert echo.tags == ("text",)
    assert echo.input_model is EchoIn and echo.output_model is EchoOut


def test_schemas_are_valid_draft_2020_12_and_describe_the_models() -> None:
    echo = EchoAgent.skills["echo"]
    for schema in (echo.input_schema, echo.output_schema):
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(echo.input_schema)
    assert validator.is_valid({"text": "hi", "customer": {"email": "a@b.c"}})
    assert not validator.is_valid({"text": "hi", "customer": {"email": "x"}})  # nested $defs are resolved
    assert not validator.is_valid({"times": 2})
    assert echo.output_schema["required"] == ["text"]


def test_invalid_input_names_the_field_path() -> None:
    echo = EchoAgent.skills["echo"]
    with pytest.raises(InvalidArgumentError) as missing:
        echo.parse_input({"times": 2})
    assert missing.value.field == "input.text"
    with pytest.raises(InvalidArgumentError) as nested:
        echo.parse_input({"text": "hi", "customer": {"email": "x"}})
    assert nested.value.field == "input.customer.email"
    assert "at least 3 characters" in nested.value.message


class Many(BaseModel):
    items: list[In]


def test_list_positions_are_written_with_brackets() -> None:
    class Lists(Agent):
        card = AgentInfo(name="lists")

        @skill
        async def run(self, request: Many) -> Out:
            return Out(text="")

    with pytest.raises(InvalidArgumentError) as error:
        Lists.skills["run"].parse_input({"items": [{"text": "a"}, {}]})
    assert error.value.field == "input.items[1].text"


def test_an_output_that_breaks_its_schema_is_an_internal_error() -> None:
    echo = EchoAgent.skills["echo"]
    assert echo.dump_output(EchoOut(text="ok")) == {"text": "ok", "caller": "", "task_id": ""}
    assert echo.dump_output({"text": "ok"})["text"] == "ok"
    for bad in (EchoOut.model_construct(text=5), {"text": None}, "just a string"):
        with pytest.raises(InternalError) as error:
            echo.dump_output(bad)
        assert error.value.reason == "INVALID_SKILL_OUTPUT"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(self, x: In) -> Out: ...", "must be an 'async def'"),
        ("async def f(self) -> Out: ...", "must take (self, input: Model)"),
        ("async def f(self, x: str) -> Out: ...", "annotated with a pydantic model"),
        ("async def f(self, x: In, ctx: str) -> Out: ...", "must be annotated SkillContext"),
        ("async def f(self, x: In) -> dict: ...", "pydantic model as its return type"),
    ],
)
def test_malformed_skills_are_refused_with_a_reason(source: str, message: str) -> None:
    namespace: dict[str, object] = {"In": In, "Out": Out, "SkillContext": SkillContext}
    exec(source, namespace)

    def declare() -> None:
        class Bad(Agent):
            card = AgentInfo(name="bad")
            f = skill(namespace["f"])  # type: ignore[call-overload]

        Bad.check()

    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        declare()


def test_an_agent_needs_a_card_and_a_skill() -> None:
    class NoCard(Agent):
        @skill
        async def run(self, request: In) -> Out:
            return Out(text=request.text)

    class NoSkill(Agent):
        card = AgentInfo(name="empty")

    with pytest.raises(TypeError, match="no 'card"):
        NoCard.check()
    with pytest.raises(TypeError, match="no @skill"):
        NoSkill.check()


def test_subclasses_inherit_and_override_skills() -> None:
    class Base(Agent):
        card = AgentInfo(name="base")

        @skill
        async def one(self, request: In) -> Out:
            return Out(text="one")

        @skill
        async def two(self, request: In) -> Out:
            return Out(text="two")

    class Child(Base):
        card = AgentInfo(name="child")

        async def two(self, request: In) -> Out:  # no longer a skill
            return Out(text="plain")

        @skill(name="three", description="Third")
        async def third(self, request: In) -> Out:
            return Out(text="three")

    assert list(Child.skills) == ["one", "three"]
    assert list(Base.skills) == ["one", "two"]


def test_agent_info_checks_names_versions_and_policies() -> None:
    AgentInfo(name="kb_search", namespace="support", version="2.0.0rc1", policies=("pii:restricted",))
    for bad in ({"name": "Triage"}, {"name": "ok", "version": "one"}, {"name": "ok", "policies": ("nocolon",)}):
        with pytest.raises(ValidationError):
            AgentInfo(**bad)  # type: ignore[arg-type]


def test_models_defined_inside_a_function_resolve() -> None:
    class LocalIn(BaseModel):
        name: str

    class LocalOut(BaseModel):
        greeting: str

    class Local(Agent):
        card = AgentInfo(name="local")

        @skill
        async def greet(self, request: LocalIn) -> LocalOut:
            return LocalOut(greeting=f"hi {request.name}")

    Local.check()
    assert Local.skills["greet"].input_model is LocalIn
    assert Local.skills["greet"].output_schema["required"] == ["greeting"]


def test_struct_inputs_become_plain_json_with_integral_numbers_as_int() -> None:
    from google.protobuf import json_format, struct_pb2

    from agentmesh.agent._servicer import struct_to_dict

    data: dict[str, Any] = {"s": "x", "i": 2, "f": 2.5, "b": True, "n": None, "l": [1, "a", {"k": [False]}], "o": {"deep": {"x": -3}}}
    struct = struct_pb2.Struct()
    struct.update(data)
    assert struct_to_dict(struct) == json_format.MessageToDict(struct) == data
    assert type(struct_to_dict(struct)["i"]) is int and type(struct_to_dict(struct)["o"]["deep"]["x"]) is int
    assert struct_to_dict(struct_pb2.Struct()) == {}
