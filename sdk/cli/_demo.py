"""The demo task of ``make demo``: one shipped support ticket submitted to the planner, then explained.

The planner runs the ``support`` playbook (triage → sentiment ∥ kb_search ∥ crm → responder → quality_check,
regenerating with the reviewer's reasons, escalating after three drafts); this client only submits, follows
the task's events, and draws ``ExplainTask`` as a tree and a timeline.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from rich.console import Console

from agentmesh._channel import create_channel
from agentmesh._settings import Settings

_TICKET_FIELDS = ("id", "email", "subject", "text")


def load_ticket(ticket_id: str | None) -> dict[str, Any]:
    """An example ticket shipped with the agents (the first one unless ``ticket_id`` names another)."""
    tickets = json.loads(resources.files("agentmesh.agents").joinpath("examples/tickets.json").read_text())
    if isinstance(tickets, dict):
        tickets = tickets.get("tickets", [])
    for ticket in tickets:
        if ticket_id is None or str(ticket.get("id")) == ticket_id:
            ticket.setdefault("text", ticket.get("body", ""))
            return {k: str(ticket[k]) for k in _TICKET_FIELDS if k in ticket}
    raise SystemExit(f"no example ticket {ticket_id!r}; ids: {[t.get('id') for t in tickets]}")


async def run_demo(settings: Settings, *, ticket_id: str | None, console: Console) -> int:
    """Submit one example ticket to the planner, follow it, print its explanation; 0 when the task succeeded."""
    from agentmesh.cli._explain import render_explanation
    from agentmesh.cli._submit import submit_and_follow
    from agentmesh.v1 import task_pb2, task_pb2_grpc

    ticket = load_ticket(ticket_id)
    request = task_pb2.SubmitTaskRequest(goal=f"Answer support ticket {ticket.get('id', '')}", playbook="support")
    request.input.update({"ticket": ticket})
    channel = create_channel(settings.planner_address, settings, kind="client", name="ops")
    try:
        task = await submit_and_follow(channel, request, console=console, within=300.0)
        stub = task_pb2_grpc.TaskServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task.task_id), timeout=30)
    finally:
        await channel.close()
    render_explanation(console, reply)
    console.print(f"[dim]agentmesh explain {task.task_id}  # draws this again; --json prints it raw[/]")
    return 0 if task.state == task_pb2.TASK_STATE_SUCCEEDED else 1
