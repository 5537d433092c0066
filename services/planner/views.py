"""Stored planner records as ``agentmesh.v1`` messages: tasks, plans, attempts, explanations, events."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from agentmesh.services.planner.plans import StepSpec
from agentmesh.services.planner.store import PlannerStore, TaskRow
from agentmesh.v1 import registry_pb2, task_pb2

__all__ = ["approval_proto", "event_proto", "explain", "task_proto", "without_endpoints"]


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _struct(data: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if data is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, int | float):
        value.number_value = float(data)
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, dict):
        value.struct_value.update(data)
    else:
        value.list_value.extend(list(data))
    return value


def task_proto(task: TaskRow) -> task_pb2.Task:
    """A stored task as a ``Task``."""
    return task_pb2.Task(
        task_id=task.task_id,
        goal=task.goal,
        input=_struct(task.input),
        playbook=task.playbook,
        state=task_pb2.TaskState.Value(f"TASK_STATE_{task.state}"),
        output=_struct(task.output),
        error=task.error,
        conversation_id=task.conversation_id or "",
        parent_task_id=task.parent_task_id or "",
        submitted_by=task.submitted_by,
        on_behalf_of=task.on_behalf_of,
        trace_id=task.trace_id,
        create_time=_ts(task.created_at),
        update_time=_ts(task.updated_at),
        parent_step_id=task.parent_step_id,
        depth=task.depth,
        deadline=_ts(task.deadline_at),
    )


def _query(query: dict[str, Any]) -> registry_pb2.DiscoverAgentsRequest:
    return registry_pb2.DiscoverAgentsRequest(
        visibility=registry_pb2.VisibilityScope(names=query.get("names", []), patterns=query.get("patterns", [])),
        characteristics=registry_pb2.CharacteristicsScope(
            purpose=query.get("purpose", ""),
            required_policies=query.get("required_policies", []),
            skill=query.get("skill", ""),
            labels=query.get("labels", {}),
            version_constraint=query.get("version_constraint", ""),
            intent=query.get("intent", ""),
        ),
        max_results=int(query.get("max_results", 0)),
        view=registry_pb2.INSTANCE_VIEW_BASIC,
    )


def _resolved(agent: dict[str, Any]) -> task_pb2.ResolvedAgent:
    return task_pb2.ResolvedAgent(
        namespace=agent.get("namespace", ""),
        name=agent.get("name", ""),
        version=agent.get("version", ""),
        endpoint=agent.get("endpoint", ""),
        instance_id=agent.get("instance_id", ""),
    )


def _step_proto(spec: StepSpec, row: Any | None) -> task_pb2.PlanStep:
    step = task_pb2.PlanStep(
        step_id=spec.step_id,
        description=spec.description,
        skill=spec.skill,
        input_template=_struct(spec.input),
        depends_on=list(spec.depends_on),
        acceptance_schema=_struct(spec.accept_schema),
        acceptance_rule=spec.accept_rule,
        retry_policy=task_pb2.RetryPolicy(
            max_attempts=spec.retry.max_attempts,
            initial_backoff=_duration(spec.retry.initial_backoff),
            max_backoff=_duration(spec.retry.max_backoff),
            backoff_multiplier=spec.retry.multiplier,
        ),
        when=spec.when,
    )
    if spec.kind == "agent":
        step.agent_query.CopyFrom(_query({**_agent_query(spec), "skill": spec.skill}))
    if spec.timeout:
        step.timeout.CopyFrom(_duration(spec.timeout))
    if spec.approval is not None:
        step.approval.CopyFrom(
            task_pb2.ApprovalRule(
                when=spec.approval.get("when", ""),
                reason=spec.approval.get("reason", ""),
                timeout=_duration(float(spec.approval.get("timeout") or 3600.0)),
            )
        )
    if row is not None:
        step.state = task_pb2.StepState.Value(f"STEP_STATE_{row.state}")
        step.idempotency_key = row.idempotency_key
        step.error = f"{row.error_code} {row.error_message}".strip()
        if row.output is not None:
            step.output.update(row.output)
        if row.agent_name:
            step.agent.CopyFrom(
                _resolved(
                    {
                        "namespace": row.agent_namespace,
                        "name": row.agent_name,
                        "version": row.agent_version,
                        "endpoint": row.agent_endpoint,
                        "instance_id": row.agent_instance_id,
                    }
                )
            )
    return step


def _agent_query(spec: StepSpec) -> dict[str, Any]:
    agent = spec.agent
    return {
        "names": agent.get("names", []),
        "patterns": agent.get("patterns", []),
        "purpose": agent.get("purpose", ""),
        "required_policies": agent.get("policies", []),
        "labels": agent.get("labels", {}),
        "version_constraint": agent.get("version", ""),
        "intent": agent.get("intent", ""),
    }


async def _plan_proto(store: PlannerStore, row: Any, steps: list[Any]) -> task_pb2.Plan:
    document = await store.plan(row.plan_id)
    by_id = {s.step_id: s for s in steps if s.plan_id == row.plan_id}
    return task_pb2.Plan(
        plan_id=row.plan_id,
        strategy=task_pb2.PlanStrategy.Value(f"PLAN_STRATEGY_{row.strategy}"),
        playbook=row.playbook,
        content_hash=row.content_hash,
        steps=[_step_proto(spec, by_id.get(spec.step_id)) for spec in document.steps.values()],
        create_time=_ts(row.created_at),
        version=row.version,
        previous_plan_id=row.previous_plan_id or "",
        reason=row.reason,
    )


def approval_proto(row: Any) -> task_pb2.Approval:
    """A stored approval as an ``Approval``."""
    m = row if isinstance(row, dict) else row._mapping
    return task_pb2.Approval(
        task_id=m["task_id"],
        step_id=m["step_id"],
        state=task_pb2.ApprovalState.Value(f"APPROVAL_STATE_{m['state']}"),
        reason=m["reason"],
        decided_by=m["decided_by"],
        comment=m["comment"],
        request_time=_ts(m["requested_at"]),
        decide_time=_ts(m["decided_at"]),
        deadline=_ts(m["deadline_at"]),
    )


def _attempt_proto(row: Any) -> task_pb2.StepAttempt:
    from agentmesh.v1 import agent_pb2

    return task_pb2.StepAttempt(
        step_id=row.step_id,
        attempt=row.attempt,
        agent=_resolved(
            {
                "namespace": row.agent_namespace,
                "name": row.agent_name,
                "version": row.agent_version,
                "endpoint": row.agent_endpoint,
                "instance_id": row.agent_instance_id,
            }
        ),
        state=task_pb2.StepState.Value(f"STEP_STATE_{row.state}"),
        error_code=row.error_code,
        error_message=row.error_message,
        trace_id=row.trace_id,
        start_time=_ts(row.started_at),
        end_time=_ts(row.finished_at),
        model_usages=[
            agent_pb2.ModelUsage(
                model_name=u.get("model", ""), model_version=u.get("version", ""), latency=_duration(u.get("latency", 0))
            )
            for u in row.model_usages or []
        ],
        replayed=bool(row.replayed),
        planner=row.planner,
    )


def _candidate_proto(c: dict[str, Any]) -> registry_pb2.Candidate:
    from agentmesh.v1 import agent_pb2

    card = agent_pb2.AgentCard(
        namespace=c.get("namespace", ""),
        name=c.get("name", ""),
        version=c.get("version", ""),
        endpoint=c.get("endpoint", ""),
        spiffe_id=c.get("spiffe_id", ""),
    )
    return registry_pb2.Candidate(
        instance=registry_pb2.AgentInstance(instance_id=c.get("instance_id", ""), card=card),
        score=float(c.get("score", 0.0)),
        reasons=list(c.get("reasons", [])),
        matched_skill=c.get("matched_skill", ""),
    )


MAX_EXPLAINED_TASKS = 100  # tasks of one tree ExplainTask explains in full


async def explain(
    store: PlannerStore, task_id: str, max_depth: int = 0, _depth: int = 0, _budget: list[int] | None = None
) -> task_pb2.TaskExplanation:
    """Everything stored about a task, with its sub-tasks as a tree (``max_depth`` 0 = all).

    At most ``MAX_EXPLAINED_TASKS`` tasks of the tree are explained in full (about ten queries each); the
    sub-tasks beyond come with their id only (explain them on their own). A tree may hold 1,111 tasks (depth 3,
    fan-out 10) that any caller who may submit can build, and explaining all of them on every call let one
    caller keep the planner's database busy.
    """
    budget = _budget if _budget is not None else [MAX_EXPLAINED_TASKS]
    budget[0] -= 1
    task = await store.get_task(task_id)
    records = await store.explanation(task_id)
    plans = [await _plan_proto(store, row, records["steps"]) for row in records["plans"]]
    explanation = task_pb2.TaskExplanation(
        task=task_proto(task),
        plan=plans[-1] if plans else None,
        plan_versions=plans,
        collaborators=[
            task_pb2.CollaboratorChoice(
                step_id=c.step_id,
                query=_query(c.query or {}),
                candidates=[_candidate_proto(x) for x in c.candidates or []],
                chosen=_resolved(c.chosen or {}),
                reason=c.reason,
                attempt=c.attempt,
            )
            for c in records["choices"]
        ],
        substitutions=[
            task_pb2.ParameterSubstitution(
                step_id=s.step_id,
                field_path=s.field_path,
                template=s.template,
                value=_value(s.value),
                source=s.source,
                attempt=s.attempt,
                source_step_id=s.source_step_id,
            )
            for s in records["substitutions"]
        ],
        attempts=[_attempt_proto(a) for a in records["attempts"]],
        approvals=[approval_proto(a) for a in records["approvals"]],
        plan_rejections=[
            task_pb2.PlanRejection(
                strategy=task_pb2.PlanStrategy.Value(f"PLAN_STRATEGY_{r.strategy}"),
                reason=r.reason,
                proposed=_struct(r.proposed if isinstance(r.proposed, dict) else None),
                create_time=_ts(r.created_at),
            )
            for r in records["rejections"]
        ],
    )
    if max_depth == 0 or _depth + 1 < max_depth:
        for child in records["children"]:
            if budget[0] > 0:
                explanation.subtasks.append(await explain(store, child.task_id, max_depth, _depth + 1, budget))
            else:
                explanation.subtasks.append(task_pb2.TaskExplanation(task=task_pb2.Task(task_id=child.task_id)))
    return explanation


_EVENT_TYPES = {
    "TASK_STATE": task_pb2.TASK_EVENT_TYPE_TASK_STATE,
    "PLAN_CREATED": task_pb2.TASK_EVENT_TYPE_PLAN_CREATED,
    "STEP_STATE": task_pb2.TASK_EVENT_TYPE_STEP_STATE,
    "ATTEMPT": task_pb2.TASK_EVENT_TYPE_ATTEMPT,
    "APPROVAL": task_pb2.TASK_EVENT_TYPE_APPROVAL,
}


def event_proto(row: Any, task: task_pb2.Task) -> task_pb2.WatchTaskResponse:
    """A stored task event as a ``WatchTaskResponse`` (the step, attempt or approval carries its new state)."""
    event = task_pb2.WatchTaskResponse(
        type=_EVENT_TYPES[row.type], task=task, event_time=_ts(row.created_at), cursor=str(row.id)
    )
    if row.type == "PLAN_CREATED":
        event.plan.version = row.attempt or 1  # the version made (a re-plan's event carries it); ExplainTask has the rest
    elif row.type == "STEP_STATE":
        event.step.step_id = row.step_id
        event.step.state = task_pb2.StepState.Value(f"STEP_STATE_{row.state}")
    elif row.type == "ATTEMPT":
        event.attempt.step_id = row.step_id
        event.attempt.attempt = row.attempt
        event.attempt.state = task_pb2.StepState.Value(f"STEP_STATE_{row.state}")
    elif row.type == "APPROVAL":
        event.approval.task_id = task.task_id
        event.approval.step_id = row.step_id
        event.approval.state = task_pb2.ApprovalState.Value(f"APPROVAL_STATE_{row.state}")
    return event


def without_endpoints(message: Message) -> None:
    """Blank every ``endpoint`` in an explanation (chosen agents, candidates, attempts, sub-task trees), and the
    same addresses where text quotes them (discovery's reasons): the mesh's internal addresses are not for callers
    outside it (end users behind the gateway)."""
    endpoints: set[str] = set()
    _walk(message, endpoints, clear=True)
    if endpoints:
        _walk(message, endpoints, clear=False)


def _walk(message: Message, endpoints: set[str], *, clear: bool) -> None:
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            if clear and field.name == "endpoint":
                endpoints.add(value)
                message.ClearField(field.name)
            elif not clear and field.is_repeated:
                value[:] = [_masked(text, endpoints) for text in value]
            elif not clear:
                setattr(message, field.name, _masked(value, endpoints))
        elif field.type == field.TYPE_MESSAGE:
            kind = field.message_type
            if kind is None or not kind.full_name.startswith("agentmesh.") or kind.GetOptions().map_entry:
                continue  # Struct documents and maps hold no addresses
            for item in value if field.is_repeated else (value,):
                _walk(item, endpoints, clear=clear)


def _masked(text: str, endpoints: set[str]) -> str:
    for endpoint in endpoints:
        if endpoint in text:
            text = text.replace(endpoint, "[internal]")
    return text
