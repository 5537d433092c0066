"""Checks on a request before anything is forwarded or stored: its size and its input's JSON Schema.

The input schema of a task is its playbook's ``input_schema``. The gateway does not import the planner
(services talk over gRPC only), so :class:`PlaybookSchemas` asks the planner for it, when the contract has
an RPC for that (``TaskService.GetPlaybook``), and caches the answer for a short while.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import grpc
import jsonschema
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agentmesh._errors import InvalidArgumentError, NotFoundError, from_rpc_error
from agentmesh.services.gateway.upstream import public_error
from agentmesh.v1 import task_pb2

__all__ = ["PlaybookSchemas", "SchemaSource", "StaticSchemas", "check_json_numbers", "check_size", "validate_input"]

_SCHEMA_TTL = 30.0
_GET_PLAYBOOK = "GetPlaybook"


def check_size(request: Message, limit: int, method: str) -> None:
    """Refuse a request whose serialized size is above ``limit`` bytes (INVALID_ARGUMENT)."""
    size = request.ByteSize()
    if size > limit:
        raise InvalidArgumentError(
            f"the request to {method} is {size:,} bytes; the gateway accepts at most {limit:,}",
            reason="REQUEST_TOO_LARGE",
            metadata={"size": str(size), "limit": str(limit)},
        )


def _non_finite(message: Message, path: str) -> Iterator[str]:
    def at(name: object) -> str:
        return f"{path}.{name}" if path else str(name)

    if isinstance(message, struct_pb2.Value):
        kind = message.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(message.number_value):
            yield path
        elif kind in ("struct_value", "list_value"):
            yield from _non_finite(getattr(message, kind), path)
    elif isinstance(message, struct_pb2.Struct):
        for key, value in message.fields.items():
            yield from _non_finite(value, at(key))
    elif isinstance(message, struct_pb2.ListValue):
        for index, value in enumerate(message.values):
            yield from _non_finite(value, at(index))
    else:
        for field, value in message.ListFields():
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            if not field.is_repeated:
                yield from _non_finite(value, at(field.name))
            elif isinstance(value, Mapping):  # a map field: the values may be messages
                for key, item in value.items():
                    if isinstance(item, Message):
                        yield from _non_finite(item, at(f"{field.name}.{key}"))
            else:
                for index, item in enumerate(value):
                    yield from _non_finite(item, at(f"{field.name}.{index}"))


def check_json_numbers(request: Message) -> None:
    """Refuse NaN or an infinity in a Struct or Value of ``request`` (INVALID_ARGUMENT naming the field):
    JSON has no such numbers, so the input could be neither checked against its schema nor stored."""
    for field in _non_finite(request, ""):
        raise InvalidArgumentError(
            f"{field} is NaN or infinite, which JSON cannot hold", field=field, reason="INPUT_NOT_JSON"
        )


def validate_input(schema: Mapping[str, Any], value: Any, *, what: str) -> None:
    """Raise InvalidArgumentError naming the first place ``value`` breaks ``schema``."""
    validator_class = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(value))
    if error is not None:
        path = ".".join(str(part) for part in error.absolute_path)
        field = f"input.{path}" if path else "input"
        raise InvalidArgumentError(
            f"the input does not match {what}'s schema at {field}: {error.message}",
            field=field,
            reason="INPUT_SCHEMA_VIOLATION",
        )


class SchemaSource(Protocol):
    """Where the gateway finds the input schema of a playbook (None: no schema to check against)."""

    async def input_schema(self, playbook: str) -> Mapping[str, Any] | None: ...


class StaticSchemas:
    """Schemas given up front, by playbook name (configuration, tests)."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self._schemas = dict(schemas)

    async def input_schema(self, playbook: str) -> Mapping[str, Any] | None:
        """The schema configured for ``playbook``, if any."""
        return self._schemas.get(playbook)


class PlaybookSchemas:
    """Playbook input schemas asked from the planner (``TaskService.GetPlaybook``) and cached briefly."""

    def __init__(
        self, channel: Callable[[], grpc.aio.Channel], *, ttl: float = _SCHEMA_TTL, metadata: Any = None
    ) -> None:
        self._channel = channel
        self._ttl = ttl
        self._metadata = metadata
        self._cache: dict[str, tuple[float, Mapping[str, Any] | None]] = {}
        service = task_pb2.DESCRIPTOR.services_by_name["TaskService"]
        self._method = service.methods_by_name.get(_GET_PLAYBOOK)

    async def input_schema(self, playbook: str) -> Mapping[str, Any] | None:
        """The playbook's input schema; NotFoundError for an unknown playbook (refused before it is stored)."""
        if self._method is None or not playbook:
            return None  # the contract has no way to ask yet: the planner validates on its own
        now = time.monotonic()
        cached = self._cache.get(playbook)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        from agentmesh.v1 import task_pb2_grpc

        stub = task_pb2_grpc.TaskServiceStub(self._channel())
        request_class = getattr(task_pb2, self._method.input_type.name)
        try:
            reply = await getattr(stub, _GET_PLAYBOOK)(request_class(name=playbook), timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFoundError):
                raise InvalidArgumentError(f"there is no playbook {playbook!r}", field="playbook") from None
            raise public_error(exc, "planner") from None
        document = json_format.MessageToDict(reply, preserving_proto_field_name=True)
        body = document.get("playbook", document)
        schema = body.get("input_schema") or None
        self._cache[playbook] = (now, schema)
        return schema
