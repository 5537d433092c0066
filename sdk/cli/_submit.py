"""``agentmesh submit``: submit a task to the planner (or the gateway) and print its id."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``agentmesh submit``."""
    parser.add_argument("goal", help="what you want done, in words")
    parser.add_argument("--input", default="{}", help="task input as JSON, or @FILE to read it from a file")
    parser.add_argument("--playbook", default="", help="name of the playbook to plan with")
    parser.add_argument("--request-id", default="", help="idempotency key: resubmitting returns the same task")
    from agentmesh.cli._client import add_client_arguments

    add_client_arguments(parser, default_address_setting="planner_address")


def run(args: argparse.Namespace) -> int:
    """Submit the task and print its id and state."""
    from google.protobuf import struct_pb2

    from agentmesh._errors import InvalidArgumentError
    from agentmesh.cli._client import call, print_json
    from agentmesh.v1 import task_pb2, task_pb2_grpc

    raw = open(args.input[1:]).read() if args.input.startswith("@") else args.input
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"--input is not JSON: {exc}", field="input") from None
    task_input = struct_pb2.Struct()
    task_input.update(payload)
    request = task_pb2.SubmitTaskRequest(
        goal=args.goal, input=task_input, playbook=args.playbook, request_id=args.request_id
    )

    async def submit(channel: object, settings: object) -> task_pb2.SubmitTaskResponse:
        stub = task_pb2_grpc.TaskServiceStub(channel)  # type: ignore[arg-type]
        return await stub.SubmitTask(request, timeout=30)

    reply = call(args, "planner_address", submit)
    if args.json:
        print_json(reply)
    else:
        print(f"task {reply.task.task_id} {task_pb2.TaskState.Name(reply.task.state)}")
    return 0
