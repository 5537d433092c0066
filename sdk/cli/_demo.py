"""The demo task of ``make demo``: one support ticket through the customer-service agents, explained.

The planner is not built yet, so this runs the support playbook from the client side with the planner's
identity, through the same contracts the planner will use: discovery (recorded with its ranked answer and
reasons), parameter substitution (recorded), idempotent Invoke with an idempotency key per step, a
regeneration loop driven by quality_check, and an explanation drawn as a tree and a timeline.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from google.protobuf import json_format, struct_pb2
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from agentmesh._channel import create_channel
from agentmesh._errors import from_rpc_error
from agentmesh._settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, registry_pb2, registry_pb2_grpc

# (step id, agent card name, skill, input template). ${...} pulls from the ticket and earlier outputs.
SUPPORT_PLAYBOOK: list[tuple[str, str, str, dict[str, Any]]] = [
    ("triage", "triage", "classify_ticket", {"subject": "${ticket.subject}", "text": "${ticket.text}"}),
    ("sentiment", "sentiment", "score_sentiment", {"text": "${ticket.text}"}),
    ("retrieve", "kb-search", "search_articles", {"query": "${ticket.subject} ${ticket.text}", "top_k": 3}),
    ("customer", "crm", "lookup_customer", {"email": "${ticket.email}"}),
    (
        "draft",
        "responder",
        "draft_reply",
        {
            "ticket": {"subject": "${ticket.subject}", "text": "${ticket.text}"},
            "intent": "${steps.triage.output.intent}",
            "articles": "${steps.retrieve.output.articles}",
            "customer": "${steps.customer.output.customer}",
            "feedback": "${feedback}",
        },
    ),
    (
        "review",
        "quality-check",
        "check_reply",
        {
            "ticket": {"subject": "${ticket.subject}", "text": "${ticket.text}"},
            "reply": "${steps.draft.output.reply}",
            "citations": "${steps.draft.output.citations}",
            "articles": "${steps.retrieve.output.articles}",
        },
    ),
]
MAX_DRAFTS = 3


@dataclass
class StepRecord:
    """Everything the explanation shows about one step attempt."""

    step_id: str
    agent: str
    skill: str
    attempt: int
    candidates: list[tuple[str, float, list[str]]] = field(default_factory=list)
    chosen: str = ""
    substitutions: list[tuple[str, str, Any]] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    models: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


def load_ticket(ticket_id: str | None) -> dict[str, Any]:
    """An example ticket shipped with the agents (the first one unless ``ticket_id`` names another)."""
    tickets = json.loads(resources.files("agentmesh.agents").joinpath("examples/tickets.json").read_text())
    if isinstance(tickets, dict):
        tickets = tickets.get("tickets", [])
    for ticket in tickets:
        if ticket_id is None or str(ticket.get("id")) == ticket_id:
            return ticket
    raise SystemExit(f"no example ticket {ticket_id!r}; ids: {[t.get('id') for t in tickets]}")


def substitute(template: Any, scope: dict[str, Any], path: str, log: list[tuple[str, str, Any]]) -> Any:
    """Resolve ``${a.b.c}`` references in ``template`` from ``scope``, logging each one."""
    if isinstance(template, dict):
        return {k: substitute(v, scope, f"{path}.{k}" if path else k, log) for k, v in template.items()}
    if not isinstance(template, str) or "${" not in template:
        return template
    if template.startswith("${") and template.endswith("}") and template.count("${") == 1:
        value = _lookup(scope, template[2:-1])
        log.append((path, template, value))
        return value
    result = template
    while "${" in result:
        start = result.index("${")
        end = result.index("}", start)
        value = _lookup(scope, result[start + 2 : end])
        result = f"{result[:start]}{'' if value is None else value}{result[end + 1:]}"
    log.append((path, template, result))
    return result


def _lookup(scope: dict[str, Any], dotted: str) -> Any:
    value: Any = scope
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


async def run_demo(settings: Settings, *, ticket_id: str | None, console: Console) -> int:
    """Run the support playbook on one example ticket and print its explanation; 0 when the reply passed."""
    ticket = load_ticket(ticket_id)
    ticket.setdefault("text", ticket.get("body", ""))
    task_id = f"demo-{uuid.uuid4().hex[:8]}"
    registry_channel = create_channel(settings.registry_address, settings, kind="service", name="planner")
    registry = registry_pb2_grpc.RegistryServiceStub(registry_channel)
    scope: dict[str, Any] = {"ticket": ticket, "steps": {}, "feedback": []}
    records: list[StepRecord] = []
    started = time.monotonic()
    passed = False
    try:
        with console.status(f"task {task_id}: running the support playbook") as status:
            for step_id, agent, skill, template in SUPPORT_PLAYBOOK[:4]:
                status.update(f"task {task_id}: {step_id} ({agent}.{skill})")
                await _run_step(settings, registry, task_id, step_id, agent, skill, template, scope, records, 1)
            for attempt in range(1, MAX_DRAFTS + 1):
                for step_id, agent, skill, template in SUPPORT_PLAYBOOK[4:]:
                    status.update(f"task {task_id}: {step_id} ({agent}.{skill}), draft {attempt}")
                    await _run_step(
                        settings, registry, task_id, step_id, agent, skill, template, scope, records, attempt
                    )
                review = scope["steps"]["review"]["output"]
                if review.get("passed"):
                    passed = True
                    break
                scope["feedback"] = list(review.get("reasons", []))
    finally:
        await registry_channel.close()
    _print_explanation(console, task_id, ticket, records, scope, started, passed)
    return 0 if passed else 1


async def _run_step(
    settings: Settings,
    registry: registry_pb2_grpc.RegistryServiceStub,
    task_id: str,
    step_id: str,
    agent: str,
    skill: str,
    template: dict[str, Any],
    scope: dict[str, Any],
    records: list[StepRecord],
    attempt: int,
) -> None:
    record = StepRecord(step_id, agent, skill, attempt, start=time.monotonic())
    records.append(record)
    query = registry_pb2.DiscoverAgentsRequest(
        visibility=registry_pb2.VisibilityScope(patterns=["support/.*"]),
        characteristics=registry_pb2.CharacteristicsScope(skill=skill, intent=skill.replace("_", " ")),
        max_results=3,
        routing_key=task_id,
    )
    answer = await registry.DiscoverAgents(query, timeout=settings.default_deadline)
    record.candidates = [
        (f"{c.instance.card.name}@{c.instance.card.version} {c.instance.card.endpoint}", c.score, list(c.reasons))
        for c in answer.candidates
    ]
    if not answer.candidates:
        record.error = f"no live agent offers {skill}"
        record.end = time.monotonic()
        raise SystemExit(f"demo failed: discovery found no agent for {agent}.{skill}")
    best = answer.candidates[0].instance
    record.chosen = f"{best.card.namespace}/{best.card.name}@{best.card.version} at {best.card.endpoint}"
    payload = substitute(template, scope, "", record.substitutions)
    request_input = struct_pb2.Struct()
    request_input.update(payload)
    channel = create_channel(best.card.endpoint, settings, kind="service", name="planner")
    try:
        reply = await agent_pb2_grpc.AgentServiceStub(channel).Invoke(
            agent_pb2.InvokeRequest(
                skill=skill,
                input=request_input,
                task_id=task_id,
                step_id=step_id,
                idempotency_key=f"{task_id}/{step_id}/{attempt}",
            ),
            timeout=settings.default_deadline * 3,
        )
    except Exception as exc:
        error = from_rpc_error(exc) if hasattr(exc, "code") else exc
        record.error = str(error)
        record.end = time.monotonic()
        raise SystemExit(f"demo failed at step {step_id}: {record.error}") from None
    finally:
        await channel.close()
    record.output = json_format.MessageToDict(reply.output)
    record.models = [f"{m.model_name}:{m.model_version}" for m in reply.model_usages]
    record.end = time.monotonic()
    scope["steps"][step_id] = {"output": record.output}


def _short(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return escape(text if len(text) <= width else text[: width - 1] + "…")  # shown through rich markup


def _print_explanation(
    console: Console,
    task_id: str,
    ticket: dict[str, Any],
    records: list[StepRecord],
    scope: dict[str, Any],
    started: float,
    passed: bool,
) -> None:
    tree = Tree(f"[bold]task {task_id}[/] — ticket {ticket.get('id')}: {_short(ticket.get('subject', ''), 60)}")
    for record in records:
        label = f"[bold]{record.step_id}[/] attempt {record.attempt}: {record.agent}.{record.skill}"
        node = tree.add(label + (f" [red]{escape(record.error)}[/]" if record.error else ""))
        chosen = node.add(f"chosen: {escape(record.chosen)}")
        for rank, (who, score, reasons) in enumerate(record.candidates, 1):
            chosen.add(f"#{rank} {escape(who)} score={score:.3f} — {escape('; '.join(reasons))}")
        if record.substitutions:
            subs = node.add("parameters")
            for path, template, value in record.substitutions:
                subs.add(f"{escape(path)} = {escape(template)} → {_short(value, 70)}")
        if record.models:
            node.add(f"models: {', '.join(record.models)}")
        node.add(f"output: {_short(record.output)}")
    console.print(tree)
    timeline = Table(title="timeline", show_edge=False)
    for column in ("step", "agent", "start ms", "took ms", ""):
        timeline.add_column(column)
    total = max(r.end for r in records) - started if records else 0.0
    for record in records:
        offset, took = (record.start - started) * 1000, (record.end - record.start) * 1000
        width = 24
        begin = int(width * (record.start - started) / total) if total else 0
        length = max(1, int(width * (record.end - record.start) / total)) if total else 1
        timeline.add_row(
            f"{record.step_id}#{record.attempt}", record.agent, f"{offset:.0f}", f"{took:.0f}",
            " " * begin + "█" * length,
        )
    console.print(timeline)
    draft = scope["steps"].get("draft", {}).get("output", {})
    console.print(f"[bold]reply[/] ({'passed' if passed else 'FAILED'} quality check):")
    console.print(draft.get("reply", ""), markup=False, highlight=False)
    console.print(
        "[dim]The planner service is not built yet: this demo ran the support playbook from the client with "
        "the planner's identity, through registry discovery and AgentService.Invoke over mTLS.[/]"
    )
