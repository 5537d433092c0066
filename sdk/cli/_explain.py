"""``agentmesh explain TASK_ID``: the stored plan, the agents chosen and why, and every attempt."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``agentmesh explain``."""
    parser.add_argument("task_id", help="the task to explain")
    parser.add_argument("--max-depth", type=int, default=0, help="how deep to follow sub-tasks (0: all)")
    from agentmesh.cli._client import add_client_arguments

    add_client_arguments(parser, default_address_setting="planner_address")


def run(args: argparse.Namespace) -> int:
    """Fetch the explanation and draw it as a tree and a timeline."""
    from rich.console import Console
    from rich.tree import Tree

    from agentmesh.cli._client import call, print_json
    from agentmesh.v1 import task_pb2, task_pb2_grpc

    async def explain(channel: object, settings: object) -> task_pb2.ExplainTaskResponse:
        stub = task_pb2_grpc.TaskServiceStub(channel)  # type: ignore[arg-type]
        request = task_pb2.ExplainTaskRequest(task_id=args.task_id, max_depth=args.max_depth)
        return await stub.ExplainTask(request, timeout=30)

    reply = call(args, "planner_address", explain)
    if args.json:
        print_json(reply)
        return 0

    def draw(explanation: task_pb2.TaskExplanation, tree: Tree) -> None:
        choices = {c.step_id: c for c in explanation.collaborators}
        for step in explanation.plan.steps:
            node = tree.add(f"[bold]{step.step_id}[/] {step.skill} — {task_pb2.StepState.Name(step.state)}")
            if step.step_id in choices:
                chosen = choices[step.step_id].chosen
                node.add(f"agent {chosen.namespace}/{chosen.name}@{chosen.version} ({choices[step.step_id].reason})")
            for attempt in (a for a in explanation.attempts if a.step_id == step.step_id):
                took = attempt.end_time.ToDatetime() - attempt.start_time.ToDatetime()
                node.add(f"attempt {attempt.attempt}: {task_pb2.StepState.Name(attempt.state)} in {took}")
        for sub in explanation.subtasks:
            draw(sub, tree.add(f"sub-task {sub.task.task_id}: {sub.task.goal}"))

    root = reply.explanation
    tree = Tree(f"task {root.task.task_id}: {root.task.goal} [{task_pb2.TaskState.Name(root.task.state)}]")
    draw(root, tree)
    Console().print(tree)
    return 0
