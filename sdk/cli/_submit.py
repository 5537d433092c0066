"""``agentmesh submit``: submit a task to the planner (or the gateway), then follow it with a progress display
until it ends (``--no-wait`` prints the id at once)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc
    from rich.console import Console

    from agentmesh._settings import Settings
    from agentmesh.v1 import task_pb2


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``agentmesh submit``."""
    parser.add_argument("goal", help="what you want done, in words")
    parser.add_argument("--input", default="{}", help="task input as JSON, or @FILE to read it from a file")
    parser.add_argument("--playbook", default="", help="name of the playbook to plan with")
    parser.add_argument("--request-id", default="", help="idempotency key: resubmitting returns the same task")
    parser.add_argument("--no-wait", action="store_true", help="print the task id and return at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the task to end")
    from agentmesh.cli._client import add_client_arguments

    add_client_arguments(parser, default_address_setting="planner_address")


def run(args: argparse.Namespace) -> int:
    """Submit the task; unless --no-wait, follow it and print how it ended (exit 0 only when it succeeded)."""
    from google.protobuf import struct_pb2

    from agentmesh._errors import InvalidArgumentError
    from agentmesh.cli._client import call, print_json
    from agentmesh.v1 import task_pb2

    try:
        raw = open(args.input[1:]).read() if args.input.startswith("@") else args.input
    except OSError as exc:
        raise InvalidArgumentError(f"--input {args.input}: cannot read it: {exc.strerror}", field="input") from None
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"--input is not JSON: {exc}", field="input") from None
    if not isinstance(payload, dict):
        raise InvalidArgumentError(
            f"--input must be a JSON object ({{...}}), not a {type(payload).__name__}", field="input"
        )
    task_input = struct_pb2.Struct()
    task_input.update(payload)
    request = task_pb2.SubmitTaskRequest(
        goal=args.goal, input=task_input, playbook=args.playbook, request_id=args.request_id
    )

    async def submit(channel: grpc.aio.Channel, settings: Settings) -> task_pb2.Task:
        from rich.console import Console

        console = Console(stderr=True, quiet=args.json)
        return await submit_and_follow(channel, request, console=console, wait=not args.no_wait, within=args.timeout)

    task = call(args, "planner_address", submit)
    if args.json:
        print_json(task)
    else:
        print(f"task {task.task_id} {task_pb2.TaskState.Name(task.state).removeprefix('TASK_STATE_')}")
        if task.error:
            print(f"error: {task.error}")
        if task.HasField("output"):
            from google.protobuf import json_format

            print(json.dumps(json_format.MessageToDict(task.output), indent=2, ensure_ascii=False))
    if args.no_wait:
        return 0
    return 0 if task.state == task_pb2.TASK_STATE_SUCCEEDED else 1


async def submit_and_follow(
    channel: grpc.aio.Channel,
    request: task_pb2.SubmitTaskRequest,
    *,
    console: Console,
    wait: bool = True,
    within: float = 300.0,
) -> task_pb2.Task:
    """Submit ``request`` on ``channel`` and, when ``wait``, follow WatchTask with a live status line until the
    task ends (resuming from the last cursor if the stream breaks); returns the final Task."""
    import asyncio

    import grpc

    from agentmesh.v1 import task_pb2, task_pb2_grpc

    stub = task_pb2_grpc.TaskServiceStub(channel)
    task = (await stub.SubmitTask(request, timeout=30)).task
    if not wait:
        return task
    steps: dict[str, str] = {}
    cursor = ""
    final = (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED)
    with console.status(f"task {task.task_id}: planned") as status, _still_running(lambda: task, within):
        async with asyncio.timeout(within):
            while task.state not in final:
                try:
                    watch = task_pb2.WatchTaskRequest(task_id=task.task_id, cursor=cursor)
                    async for event in stub.WatchTask(watch):
                        cursor, task = event.cursor, event.task
                        if event.HasField("step"):
                            steps[event.step.step_id] = task_pb2.StepState.Name(event.step.state).removeprefix("STEP_STATE_")
                        running = [s for s, v in steps.items() if v in ("RUNNING", "WAITING_APPROVAL")]
                        done = sum(v == "SUCCEEDED" for v in steps.values())
                        status.update(
                            f"task {task.task_id}: {done} step(s) done"
                            + (f", running {', '.join(running)}" if running else "")
                        )
                        for step_id, state in list(steps.items()):
                            if state in ("SUCCEEDED", "FAILED") and event.HasField("step") and event.step.step_id == step_id:
                                console.print(f"  {step_id}: {state.lower()}")
                    task = (await stub.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), timeout=10)).task
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    # The planner is restarting or failing over (the task is stored and goes on): keep following
                    # until --timeout, resuming from the cursor.
                    status.update(f"task {task.task_id}: waiting for the planner ({exc.details()})")
                    await asyncio.sleep(1.0)
    return task


@contextlib.contextmanager
def _still_running(current: Callable[[], task_pb2.Task], within: float) -> Iterator[None]:
    """Turn the end of ``--timeout`` into a readable refusal that names the task, which goes on running."""
    try:
        yield
    except TimeoutError:
        from agentmesh._errors import DeadlineExceededError
        from agentmesh.v1 import task_pb2

        task = current()
        state = task_pb2.TaskState.Name(task.state).removeprefix("TASK_STATE_")
        raise DeadlineExceededError(
            f"task {task.task_id} is still {state} after {within:g}s (--timeout); it goes on running: "
            f"`agentmesh explain {task.task_id}` shows where it is"
        ) from None
