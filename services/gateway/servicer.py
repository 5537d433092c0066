"""The gateway's public RPC surface: TaskService (with approvals), ConversationService, AuditService and
read-only RegistryService, each forwarded to the planner or the registry over mTLS after admission.

Handlers are made from the contract's service descriptors, so an RPC added to the contract (e.g. an
approval RPC of TaskService) is forwarded with the permission its name implies, without code here:
reads (Get/List/Watch/Explain/Discover/Verify) need ``<area>:read``; TaskService Approve*/Reject* need
``approve``; other TaskService writes ``tasks:submit``; other ConversationService writes
``conversations:write``. RegistryService writes are not served at the gateway at all (read-only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from agentmesh._errors import InvalidArgumentError, MeshError, PermissionDeniedError
from agentmesh._server import ServiceBinding, bind
from agentmesh.audit import Pseudonyms, redact, redact_json
from agentmesh.services.gateway.gate import Admitted, Gate, PublicContext
from agentmesh.services.gateway.screening import SCREENING_FIELD, screen
from agentmesh.services.gateway.upstream import public_error
from agentmesh.services.gateway.validation import SchemaSource, validate_input
from agentmesh.v1 import audit_pb2, conversation_pb2, registry_pb2, task_pb2

__all__ = ["PublicService", "permission_for", "public_services"]

_READ_PREFIXES = ("Get", "List", "Watch", "Explain", "Discover", "Verify")
_AREAS = {
    "TaskService": ("tasks:read", "tasks:submit"),
    "ConversationService": ("conversations:read", "conversations:write"),
    "AuditService": ("audit:read", None),
    "RegistryService": ("agents:read", None),
}
# Free-text fields of requests: PII is redacted from these (and from every Struct) before forwarding.
_TEXT_FIELDS = frozenset({"goal", "text", "title", "reason", "comment", "note"})
_DEFAULT_TIMEOUT = 30.0

Channel = Callable[[], grpc.aio.Channel]
Prepare = Callable[[Message, Admitted], Awaitable[Message]]


def permission_for(service: str, method: str) -> str | None:
    """The scope an RPC needs at the gateway; None when the gateway does not serve it."""
    read, write = _AREAS[service]
    if method.startswith(_READ_PREFIXES):
        return read
    if service == "TaskService" and method.startswith(("Approve", "Reject")):
        return "approve"
    return write


def redact_message(message: Message, pseudonyms: Pseudonyms | None = None) -> None:
    """Redact PII in place: free-text string fields and every Struct, in nested messages too (emails and
    phone numbers become keyed pseudonyms when the mesh has a pseudonym secret)."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for item in items:
                if isinstance(item, struct_pb2.Struct):
                    cleaned = redact_json(json_format.MessageToDict(item), pseudonyms)
                    item.Clear()
                    item.update(cleaned)
                elif isinstance(item, Message):
                    redact_message(item, pseudonyms)
        elif field.type == FieldDescriptor.TYPE_STRING and field.name in _TEXT_FIELDS:
            if field.is_repeated:
                value[:] = [redact(v, pseudonyms) for v in value]
            else:
                setattr(message, field.name, redact(value, pseudonyms))


def _resource(request: Message, reply: Message | None) -> str:
    for source in (request, reply):
        if source is None:
            continue
        for name, prefix in (("task_id", "tasks"), ("conversation_id", "conversations")):
            if name in source.DESCRIPTOR.fields_by_name and getattr(source, name):
                return f"{prefix}/{getattr(source, name)}"
        for name, prefix in (("task", "tasks"), ("conversation", "conversations")):
            if name in source.DESCRIPTOR.fields_by_name and source.HasField(name):
                nested = getattr(source, name)
                key = f"{name}_id"
                if key in nested.DESCRIPTOR.fields_by_name and getattr(nested, key):
                    return f"{prefix}/{getattr(nested, key)}"
    return ""


def _timeout(context: PublicContext) -> float:
    remaining = context.time_remaining()
    return _DEFAULT_TIMEOUT if remaining is None else max(0.001, min(remaining, 3600.0))


class PublicService:
    """One contract service at the gateway: a generated servicer subclass whose RPCs admit and forward."""

    def __init__(
        self,
        descriptor: ServiceDescriptor,
        base: type,
        stub_class: Callable[[grpc.aio.Channel], Any],
        channel: Channel,
        gate: Gate,
        prepare: Mapping[str, Prepare] | None = None,
        pseudonyms: Pseudonyms | None = None,
        upstream: str = "planner",
    ) -> None:
        self.full_name = descriptor.full_name
        self.upstream = upstream
        self._service = descriptor.name
        self._stub_class = stub_class
        self._channel = channel
        self._stub: Any = None
        self._gate = gate
        self._prepare = dict(prepare or {})
        self._pseudonyms = pseudonyms
        handlers = {m.name: self._handler(m) for m in descriptor.methods}
        self.servicer = type(f"Public{descriptor.name}", (base,), handlers)()

    def stub(self) -> Any:
        """The stub of the upstream service (planner or registry), made on first use."""
        if self._stub is None:
            self._stub = self._stub_class(self._channel())
        return self._stub

    def _handler(self, method: MethodDescriptor) -> Callable[..., Any]:
        full = f"/{self.full_name}/{method.name}"
        permission = permission_for(self._service, method.name)
        mutating = permission is not None and not method.name.startswith(_READ_PREFIXES)
        prepare = self._prepare.get(method.name)
        gate = self._gate

        async def admit(request: Message, context: PublicContext) -> tuple[Admitted, Message]:
            if permission is None:
                error = PermissionDeniedError(f"{full} is not served at the gateway (read-only there)")
                await gate.refused(full, error, None, context)
                raise error
            call = await gate.admit(full, permission, request, context)
            if prepare is not None:
                try:
                    request = await prepare(request, call)
                except MeshError as error:
                    await gate.refused(full, error, call.principal, context)
                    raise
            elif mutating:
                redact_message(request, self._pseudonyms)
            return call, request

        if method.server_streaming:

            async def stream(_servicer: object, request: Message, context: PublicContext) -> AsyncIterator[Message]:
                call, request = await admit(request, context)
                try:
                    gate.open_stream(call.principal)
                except MeshError as error:
                    await gate.refused(full, error, call.principal, context)
                    raise
                try:
                    # A watch lasts as long as its caller wants: the caller's deadline, or none.
                    upstream = getattr(self.stub(), method.name)(
                        request, metadata=call.metadata, timeout=context.time_remaining()
                    )
                    try:
                        async for item in upstream:
                            yield item
                    except grpc.aio.AioRpcError as exc:
                        raise public_error(exc, self.upstream) from None
                finally:
                    gate.close_stream(call.principal)

            return stream

        async def unary(_servicer: object, request: Message, context: PublicContext) -> Message:
            call, request = await admit(request, context)
            try:
                reply: Message = await getattr(self.stub(), method.name)(
                    request, metadata=call.metadata, timeout=_timeout(context)
                )
            except grpc.aio.AioRpcError as exc:
                error = public_error(exc, self.upstream)
                if mutating:
                    await gate.record(
                        call, outcome=error.code.name, resource=_resource(request, None), detail={"message": error.message}
                    )
                raise error from None
            if mutating:
                await gate.record(call, outcome="OK", resource=_resource(request, reply))
            return reply

        return unary


async def _checked_input(
    goal: str, task_input: dict[str, Any], playbook: str, schemas: SchemaSource, injection_policy: str
) -> dict[str, Any]:
    """A task's input after the schema check and the injection screen (flag added, or refused by policy)."""
    task_input.pop(SCREENING_FIELD, None)  # only the gateway sets the flag
    schema = await schemas.input_schema(playbook)
    if schema is not None:
        validate_input(schema, task_input, what=f"playbook {playbook!r}")
    verdict = screen(goal, task_input)
    if verdict.flagged:
        if injection_policy == "reject":
            raise InvalidArgumentError(
                f"the task looks like a prompt injection ({', '.join(verdict.markers)}); refused by policy",
                reason="PROMPT_INJECTION",
                field="input",
            )
        task_input[SCREENING_FIELD] = verdict.as_input_field()
    return task_input


def _replace_struct(struct: struct_pb2.Struct, value: dict[str, Any]) -> None:
    struct.Clear()
    struct.update(value)


def submit_preparer(
    schemas: SchemaSource, injection_policy: str, pseudonyms: Pseudonyms | None = None
) -> Prepare:
    """SubmitTask's checks: the input against its playbook's schema, the injection screen, then redaction."""

    async def prepare(request: Message, call: Admitted) -> Message:
        assert isinstance(request, task_pb2.SubmitTaskRequest)
        checked = await _checked_input(
            request.goal, json_format.MessageToDict(request.input), request.playbook, schemas, injection_policy
        )
        forwarded = task_pb2.SubmitTaskRequest()
        forwarded.CopyFrom(request)
        _replace_struct(forwarded.input, checked)
        redact_message(forwarded, pseudonyms)
        return forwarded

    return prepare


def message_preparer(
    schemas: SchemaSource, injection_policy: str, pseudonyms: Pseudonyms | None = None
) -> Prepare:
    """SendMessage's checks: the message (and the task it starts) screened and checked like a submission."""

    async def prepare(request: Message, call: Admitted) -> Message:
        assert isinstance(request, conversation_pb2.SendMessageRequest)
        forwarded = conversation_pb2.SendMessageRequest()
        forwarded.CopyFrom(request)
        data = await _checked_input(
            request.text, json_format.MessageToDict(request.data), "", schemas, injection_policy
        )
        _replace_struct(forwarded.data, data)
        if request.HasField("task"):
            template = request.task
            task_input = await _checked_input(
                f"{request.text}\n{template.goal}",
                json_format.MessageToDict(template.input),
                template.playbook,
                schemas,
                injection_policy,
            )
            _replace_struct(forwarded.task.input, task_input)
        redact_message(forwarded, pseudonyms)
        return forwarded

    return prepare


def public_services(
    gate: Gate,
    *,
    planner: Channel,
    registry: Channel,
    schemas: SchemaSource,
    injection_policy: str,
    pseudonyms: Pseudonyms | None = None,
) -> list[ServiceBinding]:
    """The four services the gateway serves, wired to their upstreams, ready to add to a MeshServer.

    ``pseudonyms``: the mesh's keyed pseudonyms, which redaction then puts in place of emails and phone
    numbers (None: plain markers)."""
    from agentmesh.v1 import audit_pb2_grpc, conversation_pb2_grpc, registry_pb2_grpc, task_pb2_grpc

    wiring: list[tuple[Any, Any, str, Channel, Mapping[str, Prepare]]] = [
        (
            task_pb2,
            task_pb2_grpc,
            "TaskService",
            planner,
            {"SubmitTask": submit_preparer(schemas, injection_policy, pseudonyms)},
        ),
        (
            conversation_pb2,
            conversation_pb2_grpc,
            "ConversationService",
            planner,
            {"SendMessage": message_preparer(schemas, injection_policy, pseudonyms)},
        ),
        (audit_pb2, audit_pb2_grpc, "AuditService", planner, {}),
        (registry_pb2, registry_pb2_grpc, "RegistryService", registry, {}),
    ]
    bindings = []
    for messages, stubs, name, channel, prepare in wiring:
        public = PublicService(
            messages.DESCRIPTOR.services_by_name[name],
            getattr(stubs, f"{name}Servicer"),
            getattr(stubs, f"{name}Stub"),
            channel,
            gate,
            prepare=prepare,
            pseudonyms=pseudonyms,
            upstream="registry" if channel is registry else "planner",
        )
        bindings.append(bind(public.servicer, getattr(stubs, f"add_{name}Servicer_to_server"), public.full_name))
    return bindings
