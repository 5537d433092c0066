"""``agentmesh explain TASK_ID``: the stored plan, the agents chosen and why, every substitution and attempt,
approvals and sub-tasks, drawn as a tree and a timeline (``--json`` prints the raw reply)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    from rich.console import Console
    from rich.tree import Tree

    from agentmesh._settings import Settings
    from agentmesh.v1 import task_pb2


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``agentmesh explain``."""
    parser.add_argument("task_id", help="the task to explain")
    parser.add_argument("--max-depth", type=int, default=0, help="how deep to follow sub-tasks (0: all)")
    from agentmesh.cli._client import add_client_arguments

    add_client_arguments(parser, default_address_setting="planner_address")


def run(args: argparse.Namespace) -> int:
    """Fetch the explanation and draw it as a tree and a timeline."""
    from rich.console import Console

    from agentmesh.cli._client import call, print_json
    from agentmesh.v1 import task_pb2, task_pb2_grpc

    async def explain(channel: grpc.aio.Channel, settings: Settings) -> task_pb2.ExplainTaskResponse:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        request = task_pb2.ExplainTaskRequest(task_id=args.task_id, max_depth=args.max_depth)
        return await stub.ExplainTask(request, timeout=30)

    reply = call(args, "planner_address", explain)
    if args.json:
        print_json(reply)
        return 0
    render_explanation(Console(), reply)
    return 0


def _short(value: Any, width: int = 90) -> str:
    from rich.markup import escape

    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def render_explanation(console: Console, reply: task_pb2.ExplainTaskResponse) -> None:
    """Draw an ExplainTaskResponse: a tree of the task, its plan, choices, substitutions, attempts and
    sub-tasks; then a timeline of the attempts; then the task's output."""
    from google.protobuf import json_format
    from rich.markup import escape
    from rich.tree import Tree

    from agentmesh.v1 import task_pb2

    root = reply.explanation
    task = root.task
    tree = Tree(
        f"[bold]task {task.task_id}[/] — {escape(task.goal)} "
        f"[{_name(task_pb2.TaskState, task.state, 'TASK_STATE_')}] in {reply.elapsed.ToTimedelta().total_seconds():.2f}s"
    )
    _draw(root, tree)
    console.print(tree)
    _timeline(console, root)
    if task.error:
        console.print(f"[red]error:[/] {escape(task.error)}")
    if task.HasField("output"):
        console.print("[bold]output[/]")
        console.print_json(json.dumps(json_format.MessageToDict(task.output), ensure_ascii=False))


def _draw(explanation: task_pb2.TaskExplanation, tree: Tree) -> None:
    from google.protobuf import json_format
    from rich.markup import escape

    from agentmesh.v1 import task_pb2

    plan = explanation.plan
    strategy = _name(task_pb2.PlanStrategy, plan.strategy, "PLAN_STRATEGY_")
    plan_node = tree.add(
        f"plan v{plan.version} {strategy}{' ' + plan.playbook if plan.playbook else ''} "
        f"hash {plan.content_hash[:12]} — {escape(plan.reason)}"
    )
    for earlier in explanation.plan_versions[:-1]:  # re-planned: what each earlier version was and how it ended
        failed = [s.step_id for s in earlier.steps if s.state == task_pb2.STEP_STATE_FAILED]
        plan_node.add(
            f"[yellow]earlier plan v{earlier.version}[/] hash {earlier.content_hash[:12]}"
            + (f", failed: {', '.join(failed)}" if failed else "")
            + f" — {escape(earlier.reason)}"
        )
    for rejected in explanation.plan_rejections:
        plan_node.add(f"[yellow]rejected {_name(task_pb2.PlanStrategy, rejected.strategy, 'PLAN_STRATEGY_')} plan:[/] "
                      f"{escape(rejected.reason)}")
    choices: dict[str, list[Any]] = {}
    for choice in explanation.collaborators:
        choices.setdefault(choice.step_id, []).append(choice)
    subs: dict[tuple[str, int], list[Any]] = {}
    for sub in explanation.substitutions:
        subs.setdefault((sub.step_id, sub.attempt), []).append(sub)
    approvals = {a.step_id: a for a in explanation.approvals}
    for step in plan.steps:
        state = _name(task_pb2.StepState, step.state, "STEP_STATE_")
        colour = {"SUCCEEDED": "green", "FAILED": "red", "SKIPPED": "dim", "CANCELLED": "yellow"}.get(state, "cyan")
        label = f"[bold]{step.step_id}[/] {step.skill or '(planner)'} [{colour}]{state}[/]"
        if step.depends_on:
            label += f" after {', '.join(step.depends_on)}"
        node = plan_node.add(label)
        if step.when:
            node.add(f"when {escape(step.when)}")
        if step.step_id in approvals:
            a = approvals[step.step_id]
            node.add(
                f"approval {_name(task_pb2.ApprovalState, a.state, 'APPROVAL_STATE_')}"
                + (f" by {escape(a.decided_by)}" if a.decided_by else "")
                + (f": {escape(a.comment)}" if a.comment else "")
                + (f" ({escape(a.reason)})" if a.reason else "")
            )
        for attempt in (x for x in explanation.attempts if x.step_id == step.step_id):
            a_state = _name(task_pb2.StepState, attempt.state, "STEP_STATE_")
            took = "still running"
            if attempt.HasField("end_time"):
                ms = (attempt.end_time.ToDatetime() - attempt.start_time.ToDatetime()).total_seconds() * 1000
                took = f"{ms:.0f} ms"
            agent = attempt.agent
            who = f"{agent.namespace}/{agent.name}@{agent.version}" if agent.name else "no agent"
            where = f" {agent.endpoint}" if agent.endpoint else ""  # blank for end users (behind the gateway)
            line = f"attempt {attempt.attempt} {a_state} {took} on {who}{where} ({agent.instance_id})"
            if attempt.replayed:
                line += " [replayed]"
            if attempt.error_code:
                line += f" [red]{attempt.error_code}: {escape(attempt.error_message)}[/]"
            attempt_node = node.add(line)
            for choice in choices.get(step.step_id, []):
                if choice.attempt == attempt.attempt:
                    chosen = attempt_node.add(f"chosen because {escape(choice.reason)}")
                    for rank, c in enumerate(choice.candidates[:3], 1):
                        card = c.instance.card
                        chosen.add(
                            f"#{rank} {card.namespace}/{card.name}@{card.version} score={c.score:.3f} — "
                            f"{escape('; '.join(c.reasons))}"
                        )
            for sub in subs.get((step.step_id, attempt.attempt), []):
                value = json_format.MessageToDict(sub.value)
                attempt_node.add(f"{escape(sub.field_path)} = {escape(sub.template)} → {_short(value, 70)}")
            if attempt.model_usages:
                attempt_node.add("models: " + ", ".join(f"{m.model_name}:{m.model_version}" for m in attempt.model_usages))
        if step.HasField("output"):
            node.add(f"output {_short(json_format.MessageToDict(step.output))}")
    for sub_task in explanation.subtasks:
        _draw(sub_task, tree.add(f"sub-task {sub_task.task.task_id} (of step {sub_task.task.parent_step_id}): "
                                 f"{escape(sub_task.task.goal)}"))


def _timeline(console: Console, explanation: task_pb2.TaskExplanation) -> None:
    from rich.table import Table

    from agentmesh.v1 import task_pb2

    attempts = [a for a in explanation.attempts if a.HasField("start_time")]
    if not attempts:
        return
    start = min(a.start_time.ToDatetime() for a in attempts)
    end = max((a.end_time if a.HasField("end_time") else a.start_time).ToDatetime() for a in attempts)
    total = max((end - start).total_seconds(), 1e-3)
    headers = ("step", "agent", "start ms", "took ms", "state")
    rows, spans = [], []
    for a in attempts:
        began = (a.start_time.ToDatetime() - start).total_seconds()
        ended = (a.end_time.ToDatetime() - start).total_seconds() if a.HasField("end_time") else began
        spans.append((began, ended))
        rows.append((f"{a.step_id}#{a.attempt}", a.agent.name or "planner", f"{began * 1000:.0f}",
                     f"{(ended - began) * 1000:.0f}", _name(task_pb2.StepState, a.state, "STEP_STATE_")))
    # The bars get what the text columns leave of the terminal (3 cells of padding and rule per column), so
    # no column is cut short on an 80-column terminal.
    text = sum(max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers))
    width = max(10, min(60, console.width - text - 3 * (len(headers) + 1)))
    table = Table(title="timeline", show_edge=False)
    for column in headers:
        table.add_column(column, no_wrap=True)
    table.add_column("", no_wrap=True, min_width=width)
    for row, (began, ended) in zip(rows, spans, strict=True):
        offset = min(width - 1, int(width * began / total))
        bar = " " * offset + "█" * max(1, min(width - offset, round(width * (ended - began) / total)))
        table.add_row(*row, bar)
    console.print(table)
