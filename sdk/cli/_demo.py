"""The demo of ``make demo``: the shipped support tickets submitted through the gateway, one explained.

It acts as an outside caller would: a dev access token from the dev JWKS (``agentmesh token issue``), TLS to
the gateway's public port, no client certificate. The planner runs the ``support`` playbook for each ticket
(triage → sentiment ∥ kb_search ∥ crm → responder → quality_check, regenerating with the reviewer's reasons,
escalating after three drafts); this client only submits, follows, and draws ``ExplainTask``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib import resources
from typing import TYPE_CHECKING

from rich.console import Console

from agentmesh._settings import Settings

if TYPE_CHECKING:
    from agentmesh.v1 import task_pb2, task_pb2_grpc

_TICKET_FIELDS = ("id", "email", "subject", "text")
_DEMO_SCOPES = ("tasks:read", "tasks:submit")


def load_tickets() -> list[dict[str, str]]:
    """The example tickets shipped with the agents, as the fields a caller would send."""
    tickets = json.loads(resources.files("agentmesh.agents").joinpath("examples/tickets.json").read_text())
    if isinstance(tickets, dict):
        tickets = tickets.get("tickets", [])
    found = []
    for ticket in tickets:
        ticket.setdefault("text", ticket.get("body", ""))
        found.append({k: str(ticket[k]) for k in _TICKET_FIELDS if k in ticket})
    return found


def load_ticket(ticket_id: str | None) -> dict[str, str]:
    """One example ticket (the first unless ``ticket_id`` names another)."""
    tickets = load_tickets()
    for ticket in tickets:
        if ticket_id is None or ticket.get("id") == ticket_id:
            return ticket
    raise SystemExit(f"no example ticket {ticket_id!r}; ids: {[t.get('id') for t in tickets]}")


def _request(ticket: dict[str, str], run: str) -> task_pb2.SubmitTaskRequest:
    """The submission of one ticket in demo run ``run``: a retry of it is the same task, another run's is new."""
    from agentmesh.v1 import task_pb2

    request = task_pb2.SubmitTaskRequest(
        goal=f"Answer support ticket {ticket.get('id', '')}", playbook="support",
        request_id=f"demo-{run}-{ticket.get('id')}",
    )
    request.input.update({"ticket": ticket})
    return request


def dev_token(settings: Settings) -> str:
    """A short-lived dev access token for the demo user (makes the dev JWKS if the mesh has none yet)."""
    from agentmesh.services.gateway.devtokens import DevIssuer

    issuer = DevIssuer.from_settings(settings)
    if not issuer.jwks_path.exists():
        issuer.rotate()
    return issuer.issue(subject="demo-user", scopes=_DEMO_SCOPES, ttl_seconds=900)


async def run_demo(
    settings: Settings,
    *,
    ticket_id: str | None,
    console: Console,
    gateway_address: str | None = None,
    token: str | None = None,
) -> int:
    """Submit the example tickets through the gateway, print the explanation of one; 0 when all succeeded.

    With ``ticket_id`` only that ticket runs; otherwise every shipped ticket does and the first is explained.
    ``gateway_address`` defaults to the local gateway port, ``token`` to a dev token from the mesh's dev JWKS.
    """
    from agentmesh.cli._client import gateway_channel
    from agentmesh.cli._explain import render_explanation
    from agentmesh.cli._submit import submit_and_follow
    from agentmesh.v1 import task_pb2, task_pb2_grpc

    shown = load_ticket(ticket_id)
    others = [t for t in load_tickets() if t.get("id") != shown.get("id")] if ticket_id is None else []
    address = gateway_address or f"127.0.0.1:{settings.gateway_port}"
    console.print(f"[bold]Submitting {1 + len(others)} support ticket(s) through the gateway[/] ({address}, dev token)")
    channel = gateway_channel(address, settings, token or dev_token(settings))
    run = uuid.uuid4().hex[:12]  # each run answers the tickets anew (a fixed request id returned the last run's tasks)
    try:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        # The rest run concurrently in the background while the shown one is followed step by step.
        background = [asyncio.ensure_future(stub.SubmitTask(_request(t, run), timeout=30)) for t in others]
        task = await submit_and_follow(channel, _request(shown, run), console=console, within=300.0)
        submitted = [(await f).task.task_id for f in background]
        finals = [task.state]
        with console.status(f"waiting for the other {len(submitted)} ticket(s)"):
            for task_id in submitted:
                finals.append(await _wait(stub, task_id))
        reply = await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task.task_id), timeout=30)
    finally:
        await channel.close(None)
    render_explanation(console, reply)
    succeeded = sum(1 for s in finals if s == task_pb2.TASK_STATE_SUCCEEDED)
    console.print(f"[bold]{succeeded} of {len(finals)} ticket task(s) succeeded[/]")
    console.print(f"[dim]agentmesh explain {task.task_id}  # draws this again; --json prints it raw[/]")
    return 0 if succeeded == len(finals) else 1


async def _wait(
    stub: task_pb2_grpc.TaskServiceAsyncStub, task_id: str, *, within: float = 300.0
) -> task_pb2.TaskState.ValueType:
    """Poll GetTask until the task ends; its final state."""
    from agentmesh.v1 import task_pb2

    final = (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED)
    async with asyncio.timeout(within):
        while True:
            task = (await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_id), timeout=10)).task
            if task.state in final:
                return task.state
            await asyncio.sleep(0.2)
