"""The planner on real servers: a registry, a test agent over mTLS, SQLite and PostgreSQL.

Each test is a story a user of TaskService would tell: submit, watch, cancel, explain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.v1 import audit_pb2, audit_pb2_grpc, task_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import FINAL, PlannerMesh
from tests.integration.planner_agents import Worker

FAN_OUT = """
name: fan
match: [fan]
defaults: {agent: {names: [testing/worker]}, timeout: 10, retry: {max_attempts: 3, initial_backoff: 0.05}}
steps:
  - {id: first, skill: shout, input: {text: "${task.input.text}"}, accept: {rule: "size(output.text) > 0"}}
  - {id: left, skill: slow, depends_on: [first], input: {label: "L ${steps.first.output.text}", seconds: 0.4}}
  - {id: right, skill: slow, depends_on: [first], input: {label: R, seconds: 0.4}}
  - id: last
    skill: echo_any
    depends_on: [left, right]
    input: {left: "${steps.left.output.label}", right: "${steps.right.output}", email: "${task.input.email}"}
output: {answer: "${steps.last.output.left}", first: "${steps.first.output.text}"}
"""

ODD = """
name: odd
defaults: {agent: {names: [testing/worker]}, timeout: 10, retry: {max_attempts: 2, initial_backoff: 0.05}}
steps:
  - {id: first, skill: inject, input: {text: x}}
  - {id: second, skill: shout, depends_on: [first], input: {text: "got ${steps.first.output.text}"}}
  - {id: third, skill: echo_any, depends_on: [first], input: {passed: "${steps.first.output.text}"}}
"""

BIG = """
name: big
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: blob, skill: blob, input: {size: "${task.input.size}"}}
"""

SCHEMA = """
name: schema
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - id: checked
    skill: shout
    input: {text: "${task.input.text}"}
    accept: {schema: {type: object, required: [text], properties: {text: {type: string, maxLength: 3}}}}
"""

FLAKY = """
name: flaky
defaults: {agent: {names: [testing/worker]}, timeout: 10, retry: {max_attempts: 3, initial_backoff: 0.05}}
steps:
  - {id: only, skill: flaky, input: {text: "${task.input.text}"}}
"""

SLOW = """
name: slow
defaults: {agent: {names: [testing/worker]}, timeout: 30}
steps:
  - {id: wait, skill: slow, input: {label: long, seconds: 20}}
  - {id: after, skill: shout, depends_on: [wait], input: {text: never}}
"""


@pytest.fixture
async def worker(planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity) -> AsyncIterator[Worker]:
    """One registered instance of the test agent; the planner learns the test playbooks."""
    issue_identity("agent", "testing/worker")
    settings = mesh_settings.replace(lease_ttl=10.0, planner_address=planner_mesh.planner.address)
    agent = Worker(settings)
    async with AgentRuntime(agent, port=0, registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        for text in (FAN_OUT, ODD, BIG, SCHEMA, FLAKY, SLOW):
            planner_mesh.add_playbook(text)
        yield agent


async def test_a_playbook_runs_independent_steps_in_parallel_and_explains_every_choice(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    task = await planner_mesh.submit("fan out", {"text": "hi", "email": "ann@example.com"}, playbook="fan")
    assert task.state == task_pb2.TASK_STATE_RUNNING and task.task_id

    done = await planner_mesh.wait(task.task_id)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error
    assert dict(done.output) == {"answer": "L HI", "first": "HI"}

    explanation = await planner_mesh.explain(task.task_id)
    plan = explanation.plan
    assert plan.strategy == task_pb2.PLAN_STRATEGY_PLAYBOOK and plan.playbook == "fan" and len(plan.content_hash) == 64
    assert [s.step_id for s in plan.steps] == ["first", "left", "right", "last"]
    assert all(s.state == task_pb2.STEP_STATE_SUCCEEDED for s in plan.steps)
    assert {s.idempotency_key for s in plan.steps} == {f"{task.task_id}/{s}" for s in ("first", "left", "right", "last")}
    # left and right ran at the same time: each took 0.4 s, and they overlapped.
    attempts = {a.step_id: a for a in explanation.attempts}
    left, right = attempts["left"], attempts["right"]
    assert left.start_time.ToDatetime() < right.end_time.ToDatetime()
    assert right.start_time.ToDatetime() < left.end_time.ToDatetime()
    for attempt in explanation.attempts:
        assert attempt.agent.name == "worker" and attempt.agent.version == "1.0.0"
        assert attempt.agent.endpoint and attempt.agent.instance_id and attempt.planner
        assert attempt.attempt == 1 and len(attempt.trace_id) == 32
    # Who was chosen, from which ranked answer, and why.
    choices = {c.step_id: c for c in explanation.collaborators}
    assert set(choices) == {"first", "left", "right", "last"}
    assert choices["first"].candidates and choices["first"].candidates[0].reasons
    assert choices["first"].query.characteristics.skill == "shout" and choices["first"].reason
    # Every substitution is logged with its source and attempt; the email is redacted in the log.
    subs = {(s.step_id, s.field_path): s for s in explanation.substitutions}
    assert subs["left", "label"].template == "${steps.first.output.text}"
    assert subs["left", "label"].source_step_id == "first" and subs["left", "label"].attempt == 1
    assert subs["last", "email"].value.string_value == "[email]"
    assert subs["last", "right"].value.struct_value["label"] == "R"
    assert worker.completed[f"{task.task_id}/first"] == 1


async def test_submitting_twice_with_one_request_id_makes_one_task(planner_mesh: PlannerMesh, worker: Worker) -> None:
    first = await planner_mesh.submit("fan", {"text": "a"}, playbook="fan", request_id="req-1")
    again = await planner_mesh.submit("fan", {"text": "a"}, playbook="fan", request_id="req-1")
    other = await planner_mesh.submit("fan", {"text": "a"}, playbook="fan", request_id="req-2")
    assert first.task_id == again.task_id != other.task_id
    # The same request id with another body is a client bug: refused, naming the task it made, not a second task.
    for changed in ({"text": "b"}, {"text": "a", "extra": 1}):
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await planner_mesh.submit("fan", changed, playbook="fan", request_id="req-1")
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS and first.task_id in reused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await planner_mesh.submit("another goal", {"text": "a"}, playbook="fan", request_id="req-1")
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await planner_mesh.wait(first.task_id)
    await planner_mesh.wait(other.task_id)


async def test_agent_output_that_looks_like_a_template_is_passed_on_as_text(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    task = await planner_mesh.submit("odd", {"secret": "s3cr3t"}, playbook="odd")
    done = await planner_mesh.wait(task.task_id)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error
    text = "${task.input.secret} and ${steps.first.output.text}"
    assert done.output["second"]["text"] == f"GOT {text}".upper().replace("${TASK.INPUT.SECRET}", "${TASK.INPUT.SECRET}")
    assert done.output["third"]["passed"] == text
    assert "s3cr3t" not in str(done.output)


async def test_an_oversized_or_schema_breaking_output_fails_its_step_cleanly(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    planner_mesh.planner.engine.settings = planner_mesh.planner.engine.settings.replace(planner_max_output_bytes=50_000)
    big = await planner_mesh.submit("big", {"size": 60_000}, playbook="big")
    done = await planner_mesh.wait(big.task_id)
    assert done.state == task_pb2.TASK_STATE_FAILED
    assert "over the 50000-byte limit" in done.error and "FAILED_PRECONDITION" in done.error
    small = await planner_mesh.wait((await planner_mesh.submit("big", {"size": 10}, playbook="big")).task_id)
    assert small.state == task_pb2.TASK_STATE_SUCCEEDED

    bad = await planner_mesh.wait((await planner_mesh.submit("schema", {"text": "long"}, playbook="schema")).task_id)
    assert bad.state == task_pb2.TASK_STATE_FAILED and "breaks its schema at text" in bad.error
    explanation = await planner_mesh.explain(bad.task_id)
    assert [a.state for a in explanation.attempts] == [task_pb2.STEP_STATE_FAILED]  # not retried: same output again


async def test_a_transient_failure_is_retried_with_the_same_idempotency_key(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    task = await planner_mesh.submit("flaky", {"text": "yo"}, playbook="flaky")
    done = await planner_mesh.wait(task.task_id)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error
    explanation = await planner_mesh.explain(task.task_id)
    states = [(a.attempt, a.state, a.error_code) for a in explanation.attempts]
    assert states[-1][:2] == (len(states), task_pb2.STEP_STATE_SUCCEEDED)
    assert (1, task_pb2.STEP_STATE_FAILED, "ABORTED") in states
    assert worker.completed[f"{task.task_id}/only"] == 1


async def test_cancel_stops_a_running_task(planner_mesh: PlannerMesh, worker: Worker) -> None:
    task = await planner_mesh.submit("slow", {}, playbook="slow")
    async with asyncio.timeout(10):
        await worker.started.wait()
    stub = planner_mesh.stub()
    reply = await stub.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="changed my mind"), timeout=10)
    assert reply.task.state == task_pb2.TASK_STATE_CANCELLED
    explanation = await planner_mesh.explain(task.task_id)
    assert {s.step_id: s.state for s in explanation.plan.steps} == {
        "wait": task_pb2.STEP_STATE_CANCELLED,
        "after": task_pb2.STEP_STATE_CANCELLED,
    }
    assert worker.completed[f"{task.task_id}/wait"] == 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CancelTask(task_pb2.CancelTaskRequest(task_id="task-nope"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_tasks_pages_and_filters(planner_mesh: PlannerMesh, worker: Worker) -> None:
    ids = [(await planner_mesh.submit("fan", {"text": str(i)}, playbook="fan")).task_id for i in range(5)]
    for task_id in ids:
        await planner_mesh.wait(task_id)
    stub = planner_mesh.stub()
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListTasks(task_pb2.ListTasksRequest(page_size=2, page_token=token), timeout=10)
        assert len(page.tasks) <= 2
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    done = await stub.ListTasks(task_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_SUCCEEDED), timeout=10)
    assert {t.task_id for t in done.tasks} == set(ids)
    mine = await stub.ListTasks(
        task_pb2.ListTasksRequest(submitted_by="spiffe://agentmesh.test/client/someone-else"), timeout=10
    )
    assert not mine.tasks
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListTasks(task_pb2.ListTasksRequest(page_token="garbage!"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_task_streams_events_and_resumes_from_a_cursor(planner_mesh: PlannerMesh, worker: Worker) -> None:
    task = await planner_mesh.submit("fan", {"text": "w"}, playbook="fan")
    stub = planner_mesh.stub()
    events = [e async for e in stub.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), timeout=30)]
    assert events[-1].type == task_pb2.TASK_EVENT_TYPE_TASK_STATE
    assert events[-1].task.state == task_pb2.TASK_STATE_SUCCEEDED
    kinds = {e.type for e in events}
    assert {task_pb2.TASK_EVENT_TYPE_PLAN_CREATED, task_pb2.TASK_EVENT_TYPE_STEP_STATE, task_pb2.TASK_EVENT_TYPE_ATTEMPT} <= kinds
    middle = events[len(events) // 2]
    resumed = [
        e async for e in stub.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id, cursor=middle.cursor), timeout=30)
    ]
    assert [e.cursor for e in resumed] == [e.cursor for e in events[len(events) // 2 + 1 :]]


async def test_a_watch_the_client_cancels_ends_quietly(
    planner_mesh: PlannerMesh, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    task = await planner_mesh.submit("fan", {"text": "c"}, playbook="fan")
    await planner_mesh.wait(task.task_id)
    caplog.clear()
    for _ in range(3):  # e.g. grpcurl stopped with Ctrl-C, or a client that has seen what it waited for
        stream = planner_mesh.stub().WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), timeout=30)
        first = await stream.read()
        assert first.type == task_pb2.TASK_EVENT_TYPE_TASK_STATE
        stream.cancel()
    # The server still answers, and cancelling logged no error (no "unhandled error", no failed abort).
    assert (await planner_mesh.stub().GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), timeout=10)).task.task_id
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


REFUND = """
name: refund
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: lookup, skill: echo_any, input: {amount: "${task.input.amount}"}}
  - id: refund
    skill: shout
    depends_on: [lookup]
    input: {text: "refund ${steps.lookup.output.amount}"}
    approval: {when: "steps.lookup.output.amount > 100", reason: refund above 100, timeout: "${task.input.wait}"}
"""


async def _waiting(planner_mesh: PlannerMesh, task_id: str) -> task_pb2.Task:
    stub = planner_mesh.stub()
    async with asyncio.timeout(20):
        while True:
            task = (await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_id), timeout=10)).task
            if task.state != task_pb2.TASK_STATE_RUNNING:
                return task
            await asyncio.sleep(0.02)


async def test_a_refund_above_the_limit_waits_for_approval_granted_rejected_or_timed_out(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    for wait, name in ((30, "refund"), (0.5, "refund-quick")):
        planner_mesh.add_playbook(REFUND.replace("name: refund", f"name: {name}").replace('"${task.input.wait}"', str(wait)))
    ops, viewer = planner_mesh.stub(), planner_mesh.stub("client", "viewer")

    small = await planner_mesh.wait((await planner_mesh.submit("refund", {"amount": 50}, playbook="refund")).task_id)
    assert small.state == task_pb2.TASK_STATE_SUCCEEDED and small.output["refund"]["text"] == "REFUND 50"

    granted = await planner_mesh.submit("refund", {"amount": 500}, playbook="refund")
    waiting = await _waiting(planner_mesh, granted.task_id)
    assert waiting.state == task_pb2.TASK_STATE_WAITING_APPROVAL
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await viewer.ApproveStep(task_pb2.ApproveStepRequest(task_id=granted.task_id, step_id="refund"), timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    approval = (
        await ops.ApproveStep(
            task_pb2.ApproveStepRequest(task_id=granted.task_id, step_id="refund", comment="customer is right"),
            timeout=10,
        )
    ).approval
    assert approval.state == task_pb2.APPROVAL_STATE_APPROVED and approval.decided_by.endswith("/client/ops")
    done = await planner_mesh.wait(granted.task_id)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED and done.output["refund"]["text"] == "REFUND 500"
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await ops.RejectStep(task_pb2.RejectStepRequest(task_id=granted.task_id, step_id="refund"), timeout=10)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    explained = await planner_mesh.explain(granted.task_id)
    assert [(a.step_id, a.state, a.comment, a.reason) for a in explained.approvals] == [
        ("refund", task_pb2.APPROVAL_STATE_APPROVED, "customer is right", "refund above 100")
    ]
    assert explained.approvals[0].decide_time.ToDatetime() >= explained.approvals[0].request_time.ToDatetime()
    audit = audit_pb2_grpc.AuditServiceStub(planner_mesh.channels[-1])
    records = await audit.ListAuditRecords(
        audit_pb2.ListAuditRecordsRequest(resource=f"tasks/{granted.task_id}/steps/refund"), timeout=10
    )
    # Who approved, then the step's attempt once it ran (by the planner).
    decided = [(r.action, r.actor.rsplit("/", 1)[-1]) for r in records.records]
    assert decided[0] == ("step.approve", "ops") and set(decided[1:]) <= {("step.attempt", "planner")}

    rejected = await planner_mesh.submit("refund", {"amount": 900}, playbook="refund")
    await _waiting(planner_mesh, rejected.task_id)
    await ops.RejectStep(task_pb2.RejectStepRequest(task_id=rejected.task_id, step_id="refund", comment="fraud"), timeout=10)
    failed = await planner_mesh.wait(rejected.task_id)
    assert failed.state == task_pb2.TASK_STATE_FAILED and "rejected by" in failed.error and "fraud" in failed.error
    assert worker.completed[f"{rejected.task_id}/refund"] == 0

    timed_out = await planner_mesh.submit("refund", {"amount": 700}, playbook="refund-quick")
    expired = await planner_mesh.wait(timed_out.task_id)
    assert expired.state == task_pb2.TASK_STATE_FAILED and "approval timed out" in expired.error
    explained = await planner_mesh.explain(timed_out.task_id)
    assert explained.approvals[0].state == task_pb2.APPROVAL_STATE_TIMED_OUT


SUBTASKS = """
name: {name}
defaults: {{agent: {{names: [testing/worker]}}, timeout: 20, retry: {{max_attempts: 4, initial_backoff: 0.5}}}}
steps:
  - {{id: spawn, skill: spawn, input: {{playbook: {child}, count: {count}}}}}
"""
LEAF = """
name: leaf
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: leaf, skill: shout, input: {text: leaf}}
"""


async def _settled(planner_mesh: PlannerMesh, root: str, within: float = 60.0) -> task_pb2.TaskExplanation:
    """Wait until a task and every sub-task under it ended; return the explanation tree."""
    async with asyncio.timeout(within):
        while True:
            tree = await planner_mesh.explain(root)
            nodes, pending = [tree], False
            while nodes:
                node = nodes.pop()
                pending |= node.task.state not in FINAL
                nodes += list(node.subtasks)
            if not pending:
                return tree
            await asyncio.sleep(0.1)


async def test_agents_start_sub_tasks_two_levels_deep_and_runaway_recursion_is_bounded(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    for name, child, count in (("root", "mid", 1), ("mid", "leaf", 1), ("forever", "forever", 1), ("wide", "leaf", 12)):
        planner_mesh.add_playbook(SUBTASKS.format(name=name, child=child, count=count))
    planner_mesh.add_playbook(LEAF)

    root = await planner_mesh.submit("root", {}, playbook="root")
    tree = await _settled(planner_mesh, root.task_id)
    assert tree.task.state == task_pb2.TASK_STATE_SUCCEEDED, tree.task.error
    (mid,) = tree.subtasks
    (leaf,) = mid.subtasks
    assert (mid.task.parent_task_id, mid.task.parent_step_id, mid.task.depth) == (root.task_id, "spawn", 1)
    assert (leaf.task.parent_task_id, leaf.task.depth) == (mid.task.task_id, 2)
    assert leaf.task.state == task_pb2.TASK_STATE_SUCCEEDED and leaf.task.output["leaf"]["text"] == "LEAF"
    assert leaf.task.submitted_by.endswith("/agent/testing/worker")

    # An agent that starts a sub-task of itself on every call: stopped at the depth bound, with a clear error.
    forever = await planner_mesh.submit("forever", {}, playbook="forever")
    tree = await _settled(planner_mesh, forever.task_id)
    chain = [tree]
    while chain[-1].subtasks:
        chain.append(chain[-1].subtasks[0])
    assert [node.task.depth for node in chain] == [0, 1, 2, 3]
    assert "sub-task depth 4 is over the bound of 3" in chain[-1].task.error
    assert chain[-1].task.state == task_pb2.TASK_STATE_FAILED

    wide = await planner_mesh.submit("wide", {}, playbook="wide")
    tree = await _settled(planner_mesh, wide.task_id)
    assert len(tree.subtasks) == 10 and tree.task.state == task_pb2.TASK_STATE_FAILED
    assert "already has 10 sub-tasks (the fan-out bound)" in tree.task.error

    # Without the token of a running step of the parent, an agent may not submit at all.
    as_agent = planner_mesh.stub("agent", "testing/worker")
    for request in (
        task_pb2.SubmitTaskRequest(goal="x", playbook="leaf"),
        task_pb2.SubmitTaskRequest(goal="x", playbook="leaf", parent_task_id=root.task_id),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await as_agent.SubmitTask(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_model_made_plan_naming_an_undiscovered_agent_is_rejected_and_recorded(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    proposals: list[dict[str, object]] = []

    async def model(goal: str, task_input: dict[str, object], candidates: list[dict[str, object]]) -> dict[str, object]:
        proposal = {
            "strategy": "LLM",
            "goal": goal,
            "steps": [{"id": "made_up", "skill": "shout", "agent": {"names": ["ghost/agent"]}, "input": {}}],
        }
        proposals.append(proposal)
        return proposal

    planner_mesh.planner.engine.planner.use_model(model)
    task = await planner_mesh.submit("shout the text back in capitals", {"text": "hello"})
    done = await planner_mesh.wait(task.task_id)
    assert proposals, "the model was asked"
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error
    assert done.output["main"]["text"] == "HELLO"
    explanation = await planner_mesh.explain(task.task_id)
    (rejected,) = explanation.plan_rejections
    assert rejected.strategy == task_pb2.PLAN_STRATEGY_LLM
    assert "ghost/agent" in rejected.reason and "discovery did not return" in rejected.reason
    assert rejected.proposed["steps"][0]["agent"]["names"] == ["ghost/agent"]
    assert explanation.plan.strategy == task_pb2.PLAN_STRATEGY_CAPABILITY_MATCH
    assert "testing/worker" in explanation.plan.reason


EVERYTHING = """
name: everything
defaults: {agent: {names: [testing/worker]}, timeout: 20}
steps:
  - {id: first, skill: shout, input: {text: "${task.input.text}"}}
  - id: spawn
    skill: spawn
    depends_on: [first]
    input: {playbook: leaf, count: 1}
    approval: {reason: starting sub-tasks needs a human, timeout: 30}
"""


async def test_the_explanation_of_a_finished_task_has_every_part(planner_mesh: PlannerMesh, worker: Worker) -> None:
    planner_mesh.add_playbook(LEAF)
    planner_mesh.add_playbook(EVERYTHING)
    task = await planner_mesh.submit("everything", {"text": "all"}, playbook="everything")
    await _waiting(planner_mesh, task.task_id)
    await planner_mesh.stub().ApproveStep(
        task_pb2.ApproveStepRequest(task_id=task.task_id, step_id="spawn", comment="go"), timeout=10
    )
    explanation = await _settled(planner_mesh, task.task_id)
    assert explanation.task.state == task_pb2.TASK_STATE_SUCCEEDED, explanation.task.error
    assert explanation.plan.content_hash and [p.plan_id for p in explanation.plan_versions] == [explanation.plan.plan_id]
    assert {c.step_id for c in explanation.collaborators} == {"first", "spawn"}
    assert {s.step_id for s in explanation.substitutions} == {"first"}
    assert [(a.step_id, a.state) for a in explanation.attempts] == [
        ("first", task_pb2.STEP_STATE_SUCCEEDED),
        ("spawn", task_pb2.STEP_STATE_SUCCEEDED),
    ]
    assert [(a.step_id, a.decided_by.rsplit("/", 1)[-1], a.comment) for a in explanation.approvals] == [("spawn", "ops", "go")]
    (sub,) = explanation.subtasks
    assert sub.task.state == task_pb2.TASK_STATE_SUCCEEDED and sub.attempts and sub.plan.steps[0].step_id == "leaf"
    reply = await planner_mesh.stub().ExplainTask(task_pb2.ExplainTaskRequest(task_id=task.task_id, max_depth=1), timeout=10)
    assert not reply.explanation.subtasks and reply.elapsed.ToTimedelta().total_seconds() > 0


async def test_malformed_requests_get_invalid_argument_never_internal(planner_mesh: PlannerMesh, worker: Worker) -> None:
    from google.protobuf import duration_pb2

    stub = planner_mesh.stub()
    task = await planner_mesh.submit("fan", {"text": "ok"}, playbook="fan")

    def submit(**fields: object) -> task_pb2.SubmitTaskRequest:
        request = task_pb2.SubmitTaskRequest(goal="fan", playbook="fan")
        request.input.update({"text": "x"})
        for name, value in fields.items():
            if name == "input":
                request.input.Clear()
                request.input.update(value)  # type: ignore[arg-type]
            elif name == "timeout":
                request.timeout.CopyFrom(value)  # type: ignore[arg-type]
            else:
                setattr(request, name, value)
        return request

    async def watch(cursor: str) -> None:
        async for _ in stub.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id, cursor=cursor), timeout=10):
            pass

    calls = {
        "input": stub.SubmitTask(submit(input={"text": "a\x00b"}), timeout=10),
        "goal": stub.SubmitTask(submit(goal="a\x00b"), timeout=10),
        "request_id": stub.SubmitTask(submit(request_id="r" * 300), timeout=10),
        "conversation_id": stub.SubmitTask(submit(conversation_id="c" * 300), timeout=10),
        "timeout": stub.SubmitTask(submit(timeout=duration_pb2.Duration(seconds=-5)), timeout=10),
        "timeout ": stub.SubmitTask(submit(timeout=duration_pb2.Duration(seconds=10**12)), timeout=10),
        "task_id": stub.GetTask(task_pb2.GetTaskRequest(task_id="task-\x00"), timeout=10),
        "state": stub.ListTasks(task_pb2.ListTasksRequest(state=99), timeout=10),
        "submitted_by": stub.ListTasks(task_pb2.ListTasksRequest(submitted_by="a\x00"), timeout=10),
        # base64 of ["2020-01-01", "\u0000"]: a forged token naming an impossible task id
        "page_token": stub.ListTasks(
            task_pb2.ListTasksRequest(page_token="WyIyMDIwLTAxLTAxIiwgIlx1MDAwMCJd"), timeout=10
        ),
        "cursor": watch("99999999999999999999999"),
        "cursor ": watch("-5"),
        "reason": stub.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="a\x00"), timeout=10),
        "step_id": stub.ApproveStep(task_pb2.ApproveStepRequest(task_id=task.task_id, step_id="s\x00"), timeout=10),
        "max_depth": stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task.task_id, max_depth=-1), timeout=10),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, refused.value.details())
        assert field.strip() in refused.value.details(), (field, refused.value.details())
    assert (await planner_mesh.wait(task.task_id)).state == task_pb2.TASK_STATE_SUCCEEDED


async def test_behind_the_gateway_a_tenant_sees_and_reuses_request_ids_of_its_own_tasks_only(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    gateway = planner_mesh.stub("service", "gateway")
    alice, bob, carol = (planner_mesh.acting_for(user, tenant, ["approve"])
                         for user, tenant in (("alice", "acme"), ("bob", "globex"), ("carol", "acme")))

    async def submit(who: tuple[tuple[str, str], ...], text: str, **fields: str) -> task_pb2.Task:
        request = task_pb2.SubmitTaskRequest(goal="fan", playbook="fan", request_id="order-1", **fields)
        request.input.update({"text": text})
        return (await gateway.SubmitTask(request, metadata=who, timeout=10)).task

    mine = await submit(alice, "alice's secret")
    # The same request id from another end user is another task: never alice's, with her input.
    theirs = await submit(bob, "bob's")
    assert theirs.task_id != mine.task_id and theirs.input["text"] == "bob's"
    assert (await submit(alice, "alice's secret")).task_id == mine.task_id  # her own retry: her task

    slow = task_pb2.SubmitTaskRequest(goal="slow", playbook="slow")
    waiting = (await gateway.SubmitTask(slow, metadata=alice, timeout=10)).task
    # Another tenant cannot read, watch, explain, cancel, decide on, or list alice's tasks: they do not exist for it.
    for call in (
        gateway.GetTask(task_pb2.GetTaskRequest(task_id=mine.task_id), metadata=bob, timeout=10),
        gateway.ExplainTask(task_pb2.ExplainTaskRequest(task_id=mine.task_id), metadata=bob, timeout=10),
        gateway.WatchTask(task_pb2.WatchTaskRequest(task_id=mine.task_id), metadata=bob, timeout=10).read(),
        gateway.CancelTask(task_pb2.CancelTaskRequest(task_id=waiting.task_id), metadata=bob, timeout=10),
        gateway.ApproveStep(task_pb2.ApproveStepRequest(task_id=waiting.task_id, step_id="wait"), metadata=bob, timeout=10),
        gateway.SubmitTask(
            task_pb2.SubmitTaskRequest(goal="x", playbook="fan", parent_task_id=waiting.task_id), metadata=bob, timeout=10
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND, hidden.value.details()
    listed = await gateway.ListTasks(task_pb2.ListTasksRequest(page_size=1), metadata=bob, timeout=10)
    assert [t.task_id for t in listed.tasks] == [theirs.task_id] and not listed.next_page_token
    # Someone of alice's own tenant (an approver, say) does see them; ops clients see every task.
    seen = await gateway.ListTasks(task_pb2.ListTasksRequest(page_size=10), metadata=carol, timeout=10)
    assert {t.task_id for t in seen.tasks} == {mine.task_id, waiting.task_id}
    everything = await planner_mesh.stub().ListTasks(task_pb2.ListTasksRequest(), timeout=10)
    assert {t.task_id for t in everything.tasks} == {mine.task_id, theirs.task_id, waiting.task_id}
    cancelled = await gateway.CancelTask(task_pb2.CancelTaskRequest(task_id=waiting.task_id), metadata=carol, timeout=10)
    assert cancelled.task.state == task_pb2.TASK_STATE_CANCELLED


async def test_a_tenant_lists_its_own_tasks_on_the_first_page_however_many_other_tenants_have(
    planner_mesh: PlannerMesh, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentmesh.services.planner import servicer

    monkeypatch.setattr(servicer, "_MAX_SCAN", 5)  # the bound on rows one ListTasks call reads, scaled down
    gateway = planner_mesh.stub("service", "gateway")

    def fan(text: str) -> task_pb2.SubmitTaskRequest:
        request = task_pb2.SubmitTaskRequest(goal="fan", playbook="fan")
        request.input.update({"text": text})
        return request

    bob, alice = planner_mesh.acting_for("bob", "globex"), planner_mesh.acting_for("alice", "acme")
    theirs = (await gateway.SubmitTask(fan("bob's"), metadata=bob, timeout=10)).task
    for i in range(12):  # newer than bob's: a scan that filtered after reading would not reach his
        await gateway.SubmitTask(fan(f"alice {i}"), metadata=alice, timeout=10)
    listed = await gateway.ListTasks(task_pb2.ListTasksRequest(page_size=10), metadata=bob, timeout=10)
    assert [t.task_id for t in listed.tasks] == [theirs.task_id] and not listed.next_page_token


async def test_a_task_joins_only_a_conversation_that_exists_and_its_end_user_may_write_in(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc

    tasks = planner_mesh.stub("service", "gateway")
    conversations = conversation_pb2_grpc.ConversationServiceStub(planner_mesh.channels[-1])  # type: ignore[no-untyped-call]

    def acting_for(user: str) -> tuple[tuple[str, str], ...]:
        return planner_mesh.acting_for(user, "acme")

    created = await conversations.CreateConversation(
        conversation_pb2.CreateConversationRequest(title="alice's"), metadata=acting_for("alice"), timeout=10
    )
    for conversation_id, who in (
        ("no-such-conversation", acting_for("alice")),
        (created.conversation.conversation_id, acting_for("bob")),
    ):
        request = task_pb2.SubmitTaskRequest(goal="fan", playbook="fan", conversation_id=conversation_id)
        request.input.update({"text": "x"})
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await tasks.SubmitTask(request, metadata=who, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "conversation" in refused.value.details()
    request = task_pb2.SubmitTaskRequest(goal="fan", playbook="fan", conversation_id=created.conversation.conversation_id)
    request.input.update({"text": "x"})
    task = (await tasks.SubmitTask(request, metadata=acting_for("alice"), timeout=10)).task
    assert task.conversation_id == created.conversation.conversation_id


async def test_an_agent_reusing_a_request_id_under_another_parent_gets_a_new_sub_task(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    from agentmesh.security import DelegationIssuer, TokenKind

    planner_mesh.add_playbook(LEAF)
    settings = planner_mesh.settings
    agent_id = f"spiffe://{settings.trust_domain}/agent/testing/worker"
    steps = DelegationIssuer.from_settings(settings, "service", "planner")
    as_agent = planner_mesh.stub("agent", "testing/worker")
    parents = [await planner_mesh.submit("slow", {}, playbook="slow") for _ in range(2)]
    children = []
    for parent in parents:
        async with asyncio.timeout(20):  # the parent's step is running: the agent may start sub-tasks
            while True:
                explained = await planner_mesh.explain(parent.task_id)
                if explained.plan.steps and explained.plan.steps[0].state == task_pb2.STEP_STATE_RUNNING:
                    break
                await asyncio.sleep(0.05)
        token = steps.issue(
            kind=TokenKind.STEP, audience=agent_id, subject="alice", tenant="acme", scopes=[],
            task_id=parent.task_id, step_id="wait",
        )
        request = task_pb2.SubmitTaskRequest(
            goal="leaf", playbook="leaf", parent_task_id=parent.task_id, delegation_token=token, request_id="child"
        )
        children.append((await as_agent.SubmitTask(request, timeout=10)).task)
    assert children[0].task_id != children[1].task_id
    assert [c.parent_task_id for c in children] == [p.task_id for p in parents]
    # An agent reads the sub-tasks it started, and no other task.
    assert (await as_agent.GetTask(task_pb2.GetTaskRequest(task_id=children[0].task_id), timeout=10)).task.task_id
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await as_agent.GetTask(task_pb2.GetTaskRequest(task_id=parents[0].task_id), timeout=10)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    for parent in parents:
        await planner_mesh.stub().CancelTask(task_pb2.CancelTaskRequest(task_id=parent.task_id), timeout=10)


async def test_an_approval_that_timed_out_cannot_be_granted_before_the_sweep_notices(
    planner_mesh: PlannerMesh, worker: Worker
) -> None:
    planner_mesh.add_playbook(REFUND.replace("name: refund", "name: refund-late").replace('"${task.input.wait}"', "0.3"))
    task = await planner_mesh.submit("refund", {"amount": 500}, playbook="refund-late")
    assert (await _waiting(planner_mesh, task.task_id)).state == task_pb2.TASK_STATE_WAITING_APPROVAL
    # The sweep that times approvals out runs every 0.5 s; stop it so the decision itself must see the deadline.
    for loop in planner_mesh.planner.engine._loops:
        if loop.get_name() == "planner-sweep":
            loop.cancel()
    await asyncio.sleep(0.6)  # past the approval's 0.3 s deadline
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await planner_mesh.stub().ApproveStep(
            task_pb2.ApproveStepRequest(task_id=task.task_id, step_id="refund", comment="too late"), timeout=10
        )
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "timed out" in late.value.details()
