"""``@skill``: a typed async method becomes a skill whose JSON Schemas come from its pydantic models."""

from __future__ import annotations

import functools
import inspect
import logging
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ValidationError

from agentmesh._errors import InternalError, InvalidArgumentError
from agentmesh.agent._context import SkillContext

__all__ = ["SkillSpec", "skill", "skill_spec"]

logger = logging.getLogger(__name__)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SKILL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ATTR = "__agentmesh_skill__"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class SkillSpec:
    """One declared skill: its name, description and the method that implements it.

    Types are resolved on first use (not at decoration), so models may be defined after the class.
    """

    name: str
    description: str
    tags: tuple[str, ...]
    method: Callable[..., Awaitable[Any]]
    # Names visible where the agent class was defined (models local to a function resolve too).
    localns: dict[str, Any] | None = field(default=None, repr=False)
    _resolved: tuple[type[BaseModel], type[BaseModel], bool] | None = field(default=None, repr=False)

    def _resolve(self) -> tuple[type[BaseModel], type[BaseModel], bool]:
        if self._resolved is None:
            self._resolved = _signature(self.method, self.localns)
        return self._resolved

    @property
    def input_model(self) -> type[BaseModel]:
        """The pydantic model every input is validated against."""
        return self._resolve()[0]

    @property
    def output_model(self) -> type[BaseModel]:
        """The pydantic model every output is validated against."""
        return self._resolve()[1]

    @functools.cached_property
    def input_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of the input."""
        return _json_schema(self.input_model, "validation")

    @functools.cached_property
    def output_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of the output."""
        return _json_schema(self.output_model, "serialization")

    def check(self) -> None:
        """Resolve the signature now, raising ``TypeError`` for a malformed skill."""
        self._resolve()

    def parse_input(self, data: dict[str, Any]) -> BaseModel:
        """Validate a JSON input; a violation is ``InvalidArgumentError`` naming the field (``input.a.b``)."""
        try:
            return self.input_model.model_validate(data)
        except ValidationError as exc:
            raise _invalid_input(self.name, exc) from None

    def dump_output(self, result: object) -> dict[str, Any]:
        """The JSON form of a skill's result, re-validated; a violation is a bug, so ``InternalError``."""
        model = self.output_model
        try:
            if isinstance(result, BaseModel):
                # Re-validate: a model built with model_construct() or mutated after creation skipped checks.
                data = result.model_dump(mode="json", warnings=False)
                model.model_validate(data)
            elif isinstance(result, dict):
                data = model.model_validate(result).model_dump(mode="json")
            else:
                raise TypeError(f"expected {model.__name__} or dict, got {type(result).__name__}")
        except (TypeError, ValueError) as exc:  # ValidationError and PydanticSerializationError are ValueErrors
            # Field paths and messages only: the values themselves may hold customer data.
            problems = (
                "; ".join(f"{_field_path(e['loc'], 'output')}: {e['msg']}" for e in exc.errors(include_input=False))
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            logger.error("skill %r returned an output that breaks its schema: %s", self.name, problems)
            raise InternalError(
                f"skill {self.name!r} produced an output that breaks its schema; see the agent log",
                reason="INVALID_SKILL_OUTPUT",
                metadata={"skill": self.name},
            ) from exc
        return data

    async def call(self, agent: object, value: BaseModel, ctx: SkillContext) -> object:
        """Run the skill on an already validated input."""
        wants_ctx = self._resolve()[2]
        if wants_ctx:
            return await self.method(agent, value, ctx)
        return await self.method(agent, value)


@overload
def skill(fn: F, /) -> F: ...


@overload
def skill(
    *, name: str | None = None, description: str | None = None, tags: tuple[str, ...] | list[str] = ()
) -> Callable[[F], F]: ...


def skill(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: tuple[str, ...] | list[str] = (),
) -> F | Callable[[F], F]:
    """Declare an ``async def`` method of an :class:`~agentmesh.agent.Agent` as a skill.

    The method takes one pydantic model (the input), optionally a :class:`SkillContext`, and returns a
    pydantic model (the output)::

        @skill(description="Classify a ticket's intent and priority")
        async def classify(self, ticket: TicketIn, ctx: SkillContext) -> TriageOut: ...

    ``name`` defaults to the method name, ``description`` to the first paragraph of its docstring.
    """

    def decorate(method: F) -> F:
        if not inspect.iscoroutinefunction(typing.cast(Callable[..., Any], method)):
            raise TypeError(f"skill {method.__qualname__} must be an 'async def' method")
        skill_name = name or method.__name__
        if not _SKILL_NAME.match(skill_name):
            raise TypeError(f"skill name {skill_name!r} must be lower_snake_case")
        text = description if description is not None else (inspect.getdoc(method) or "").split("\n\n")[0]
        spec = SkillSpec(name=skill_name, description=" ".join(text.split()), tags=tuple(tags), method=method)
        setattr(method, _ATTR, spec)
        return method

    return decorate(fn) if fn is not None else decorate


def skill_spec(member: object) -> SkillSpec | None:
    """The :class:`SkillSpec` a ``@skill`` method carries, if any."""
    spec = getattr(member, _ATTR, None)
    return spec if isinstance(spec, SkillSpec) else None


def _signature(
    method: Callable[..., Any], localns: dict[str, Any] | None = None
) -> tuple[type[BaseModel], type[BaseModel], bool]:
    where = method.__qualname__
    try:
        hints = typing.get_type_hints(method, localns=localns)
    except NameError as exc:
        raise TypeError(f"skill {where}: cannot resolve its type hints ({exc})") from None
    params = list(inspect.signature(method).parameters.values())[1:]  # drop self
    if len(params) not in (1, 2):
        raise TypeError(f"skill {where} must take (self, input: Model) or (self, input: Model, ctx: SkillContext)")
    input_model = hints.get(params[0].name)
    if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
        raise TypeError(f"skill {where}: parameter {params[0].name!r} must be annotated with a pydantic model")
    wants_ctx = len(params) == 2
    if wants_ctx and hints.get(params[1].name) is not SkillContext:
        raise TypeError(f"skill {where}: second parameter {params[1].name!r} must be annotated SkillContext")
    output_model = hints.get("return")
    if not (isinstance(output_model, type) and issubclass(output_model, BaseModel)):
        raise TypeError(f"skill {where} must declare a pydantic model as its return type")
    return input_model, output_model, wants_ctx


def _json_schema(model: type[BaseModel], mode: typing.Literal["validation", "serialization"]) -> dict[str, Any]:
    # pydantic emits "$defs" with "#/$defs/..." references: valid draft 2020-12 as it stands.
    return {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(mode=mode)}


def _invalid_input(skill_name: str, exc: ValidationError) -> InvalidArgumentError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = _field_path(first["loc"])
    problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return InvalidArgumentError(
        f"invalid input for skill {skill_name!r}: {problems}{more}",
        field=path,
        reason="INVALID_SKILL_INPUT",
        metadata={"skill": skill_name},
    )


def _field_path(loc: tuple[int | str, ...], root: str = "input") -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
