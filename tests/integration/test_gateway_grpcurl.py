"""The README's grpcurl lines for the gateway work as written: each is run the way grpcurl runs it (server
reflection to find the method and its message types, JSON request, TLS with the mesh CA, `-H` headers)."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

README = Path(__file__).resolve().parents[2] / "README.md"


def _gateway_lines() -> list[str]:
    """The README's grpcurl commands that call the gateway (port 7443)."""
    return [line for line in README.read_text().splitlines() if line.startswith("grpcurl ") and "localhost:7443" in line]


def _grpcurl(argv: list[str], home: Path, address: str) -> Any:
    """A small grpcurl: ``-cacert``, ``-H``, ``-d``, ``list`` or a ``pkg.Service/Method``; returns the reply."""
    options: dict[str, list[str]] = {"-H": [], "-cacert": [], "-d": []}
    positional = []
    words = iter(argv[1:])
    for word in words:
        if word in options:
            options[word].append(next(words))
        else:
            positional.append(word)
    target, *command = positional
    assert target == "localhost:7443"
    ca = (home / Path(options["-cacert"][0]).relative_to(".agentmesh")).read_bytes()
    metadata = [tuple(part.strip() for part in header.split(":", 1)) for header in options["-H"]]
    metadata = [(key.lower(), value) for key, value in metadata]
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if command == ["list"]:
            return sorted(database.get_services())
        [method_path] = command
        service_name, method_name = method_path.split("/")
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(options["-d"][0] if options["-d"] else "{}", request_class())
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply_class.FromString,
        )
        return json_format.MessageToDict(call(request, metadata=metadata, timeout=10), preserving_proto_field_name=True)


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_the_readme_grpcurl_lines_work_against_the_gateway(
    start_gateway: Any, recording_planner: Any, migrated_database_url: str
) -> None:
    gateway = await start_gateway(planner=recording_planner.address, database_url=migrated_database_url)
    token = gateway.token()
    lines = _gateway_lines()
    assert len(lines) >= 5
    task_id = ""
    replies = []
    for line in lines:
        line = line.replace("$TOKEN", token).replace("TASK_ID", task_id)
        reply = await asyncio.to_thread(_grpcurl, shlex.split(line), Path(gateway.settings.home), gateway.address)
        replies.append(reply)
        if isinstance(reply, dict) and "task" in reply:
            task_id = task_id or reply["task"]["task_id"]
    services = replies[0]
    assert {"agentmesh.v1.TaskService", "agentmesh.v1.AuditService", "agentmesh.v1.RegistryService",
            "agentmesh.v1.ConversationService", "grpc.health.v1.Health"} <= set(services)
    assert task_id and any(r.get("explanation", {}).get("task", {}).get("task_id") == task_id
                           for r in replies if isinstance(r, dict))
    # The submission is on the audit trail, and the chain holds.
    listed = next(r for r in replies if isinstance(r, dict) and "records" in r)
    assert any(re.search("SubmitTask$", r["action"]) for r in listed["records"])
    assert next(r for r in replies if isinstance(r, dict) and "valid" in r)["valid"] is True
