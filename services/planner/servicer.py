"""The planner's RPC surface: TaskService over :class:`TaskEngine` (thin: protos in, protos out).

Who the caller is decides what a submission may be: an agent submits only sub-tasks, with the step token
of a step of the parent that is running now (checked here, on top of the authorization policy); the
gateway forwards the end user's delegation token (metadata ``x-agentmesh-delegation``), whose subject,
tenant and scopes the task then acts for. Approving needs the ``approve`` permission: a scope of the end
user's token behind the gateway, or an identity in ``planner_approver_identities``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agentmesh import security
from agentmesh._errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from agentmesh._key_slots import KeySlots
from agentmesh._settings import Settings
from agentmesh.agent import struct_to_dict
from agentmesh.security import DelegationClaims, SpiffeId, TokenKind
from agentmesh.services.planner import task_rules as rules
from agentmesh.services.planner import views
from agentmesh.services.planner.conversation_rules import Caller, check_request_id, check_text
from agentmesh.services.planner.conversations_store import ConversationStore
from agentmesh.services.planner.engine import SubmitRequest, TaskEngine, _db
from agentmesh.services.planner.store import FINAL_TASK_STATES, TaskRow
from agentmesh.v1 import conversation_pb2_grpc, task_pb2, task_pb2_grpc

__all__ = ["ConversationServicer", "TaskServicer"]

DELEGATION_METADATA = "x-agentmesh-delegation"
APPROVE_SCOPE = "approve"
_MAX_PAGE = 1000
_MAX_SCAN = 5000  # tasks one ListTasks call reads at most while skipping those the caller may not see
# WatchTask polls for writes made through other replicas every 50 ms after an event, backing off to 1 s.
_WATCH_POLL_MIN = 0.05
_WATCH_POLL_MAX = 1.0
_WATCH_BATCH = 500  # events per read
_MAX_WATCHES_PER_USER = 32  # open WatchTask streams of one end user (behind the gateway) on one replica


class TaskServicer(task_pb2_grpc.TaskServiceServicer):
    """TaskService: submit, list, watch, cancel, explain, approve."""

    def __init__(self, engine: TaskEngine, settings: Settings, conversations: ConversationStore | None = None) -> None:
        self._engine = engine
        self._conversations = conversations
        self._settings = settings
        td = settings.trust_domain
        self._approvers = [p.strip().replace("{trust_domain}", td) for p in settings.planner_approver_identities.split(",") if p.strip()]
        self._watches: KeySlots[tuple[str, str]] = KeySlots(_MAX_WATCHES_PER_USER)  # per (tenant, end user)

    # ---- identity ----------------------------------------------------------------------------------------

    def _caller(self) -> SpiffeId | None:
        return security.current_identity()

    def _user_claims(self, context: grpc.aio.ServicerContext[Any, Any]) -> DelegationClaims | None:
        """The end user's token the gateway forwarded, verified (audience = the planner)."""
        token = dict(context.invocation_metadata() or ()).get(DELEGATION_METADATA, "")
        if not token:
            return None
        claims = self._engine.tokens.verify(str(token), audience=self._engine.identity)
        if claims.kind != TokenKind.END_USER:
            raise PermissionDeniedError("the delegation metadata must carry an end-user token", reason="TOKEN_WRONG_KIND")
        return claims

    def _viewer(self, claims: DelegationClaims | None) -> rules.Viewer:
        """The caller, and the end user it acts for behind the gateway (``claims``: its verified token)."""
        caller = self._caller()
        return rules.Viewer(
            caller.uri if caller is not None else "",
            caller.kind if caller is not None else "",
            end_user=claims.subject if claims is not None else "",
            tenant=claims.tenant if claims is not None else "",
        )

    async def _visible(self, task_id: str, viewer: rules.Viewer, *, fresh: bool = True) -> TaskRow:
        """The task, if ``viewer`` may see it; NOT_FOUND (as for a task that does not exist) if not. Not ``fresh``:
        a task this replica has cached may be answered from it (its tenant and submitter never change; its state
        may be behind), for a caller that reads the task again anyway."""
        cached = None if fresh else self._engine.store.cached_task(_task_id(task_id))
        task = cached if cached is not None else await self._engine.get(_task_id(task_id))
        if not viewer.may_see(task.tenant, task.submitted_by):
            raise NotFoundError(f"no task {task_id!r}")
        return task

    # ---- RPCs --------------------------------------------------------------------------------------------

    async def SubmitTask(
        self,
        request: task_pb2.SubmitTaskRequest,
        context: grpc.aio.ServicerContext[task_pb2.SubmitTaskRequest, task_pb2.SubmitTaskResponse],
    ) -> task_pb2.SubmitTaskResponse:
        """Store a task, plan it and start it (idempotent on request_id)."""
        caller = self._caller()
        caller_uri = caller.uri if caller is not None else ""
        # Measured encoded (cheap) before it is turned into Python values (a 3 MB input of small keys held the
        # event loop for half a second): the same bound as a step's output, which sub-tasks pass on.
        size = request.input.ByteSize()
        if size > self._settings.planner_max_output_bytes:
            raise InvalidArgumentError(
                f"input is {size:,} bytes encoded, over the {self._settings.planner_max_output_bytes:,}-byte limit",
                field="input",
            )
        submit: dict[str, Any] = {
            "goal": rules.check_goal(request.goal),
            "input": rules.check_input(struct_to_dict(request.input)),
            "playbook": request.playbook,
            "conversation_id": rules.check_id(request.conversation_id, "conversation_id", required=False) or None,
            "request_id": check_request_id(request.request_id) or "",
            "submitted_by": caller_uri,
        }
        rules.check_id(request.parent_task_id, "parent_task_id", required=False)
        if request.HasField("timeout"):
            submit["timeout_seconds"] = rules.check_timeout(request.timeout.ToNanoseconds() / 1e9)
        if caller is not None and caller.kind == "agent":
            submit.update(await self._subtask_of(request, caller_uri))
            viewer = rules.Viewer(caller_uri, caller.kind)
        else:
            claims = self._user_claims(context)
            viewer = self._viewer(claims)
            if request.parent_task_id:
                submit["parent_task_id"] = (await self._visible(request.parent_task_id, viewer)).task_id
            if claims is not None:
                submit.update(on_behalf_of=claims.subject, tenant=claims.tenant, scopes=tuple(claims.scopes))
        if submit["conversation_id"]:
            await self._check_conversation(submit["conversation_id"], viewer)
        submit["request_id"] = viewer.request_key(
            submit["request_id"], submit.get("parent_task_id") or "", submit.get("parent_step_id", "")
        )
        task = await self._engine.submit(SubmitRequest(**submit))
        if submit["request_id"] and _differs(task, submit):
            raise AlreadyExistsError(
                f"request_id {request.request_id!r} already submitted task {task.task_id} with another "
                "goal, input, playbook, parent or conversation",
                metadata={"task_id": task.task_id},
            )
        return task_pb2.SubmitTaskResponse(task=views.task_proto(task))

    async def _check_conversation(self, conversation_id: str, viewer: rules.Viewer) -> None:
        """NOT_FOUND unless the conversation exists and the caller may write in it (its result will be)."""
        if self._conversations is None:
            return
        conversation = await self._conversations.get(conversation_id)
        if not Caller(viewer.identity, end_user=viewer.end_user, tenant=viewer.tenant).may_see(conversation):
            raise NotFoundError(f"conversation {conversation_id!r} does not exist", metadata={"conversation_id": conversation_id})

    async def _subtask_of(self, request: task_pb2.SubmitTaskRequest, caller: str) -> dict[str, Any]:
        """An agent's submission: a sub-task of the step it runs now, proven by that step's token."""
        if not request.parent_task_id:
            raise PermissionDeniedError("an agent may only submit sub-tasks (parent_task_id)", reason="SUBTASK_ONLY")
        if not request.delegation_token:
            raise PermissionDeniedError("a sub-task needs the step token of the parent's step", reason="SUBTASK_TOKEN")
        claims = self._engine.tokens.verify(request.delegation_token, audience=caller, task_id=request.parent_task_id)
        if claims.kind != TokenKind.STEP or not claims.step_id:
            raise PermissionDeniedError("a sub-task needs a step token", reason="TOKEN_WRONG_KIND")
        state = await _db(self._engine.store.step_state(request.parent_task_id, claims.step_id))
        if state != "RUNNING":
            raise PermissionDeniedError(
                f"step {claims.step_id} of task {request.parent_task_id} is not running ({state or 'unknown'}); "
                "an agent may submit sub-tasks only while it runs the parent's step",
                reason="SUBTASK_STEP_NOT_RUNNING",
            )
        if request.conversation_id:
            # The step acts for the parent's end user: its sub-task may answer in the parent's conversation,
            # never in another (another user's or tenant's) conversation it learnt the id of.
            parent = await self._engine.get(request.parent_task_id)
            if request.conversation_id != (parent.conversation_id or ""):
                raise PermissionDeniedError(
                    "an agent's sub-task may join only the conversation of its parent task "
                    f"({parent.conversation_id or 'none'}), not {request.conversation_id!r}",
                    reason="SUBTASK_CONVERSATION",
                )
        return {
            "parent_task_id": request.parent_task_id,
            "parent_step_id": claims.step_id,
            "on_behalf_of": claims.subject,
            "tenant": claims.tenant,
            "scopes": tuple(claims.scopes),
        }

    async def GetTask(
        self,
        request: task_pb2.GetTaskRequest,
        context: grpc.aio.ServicerContext[task_pb2.GetTaskRequest, task_pb2.GetTaskResponse],
    ) -> task_pb2.GetTaskResponse:
        """One task."""
        task = await self._visible(request.task_id, self._viewer(self._user_claims(context)))
        return task_pb2.GetTaskResponse(task=views.task_proto(task))

    async def ListTasks(
        self,
        request: task_pb2.ListTasksRequest,
        context: grpc.aio.ServicerContext[task_pb2.ListTasksRequest, task_pb2.ListTasksResponse],
    ) -> task_pb2.ListTasksResponse:
        """A page of tasks, newest first, filtered by state, conversation, submitter or parent."""
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative", field="page_size")
        size = min(request.page_size or 50, _MAX_PAGE)
        after = _decode_token(request.page_token) if request.page_token else None
        state = rules.check_state(request.state)
        check_text(request.submitted_by, "submitted_by", rules.MAX_IDENTITY)
        rules.check_id(request.conversation_id, "conversation_id", required=False)
        rules.check_id(request.parent_task_id, "parent_task_id", required=False)
        viewer = self._viewer(self._user_claims(context))
        # The database leaves out other tenants' tasks (behind the gateway) and other workloads' (an agent sees
        # the sub-tasks it submitted); the check below stays as the rule. Tasks the caller may not see are
        # skipped; a scan that reaches its bound first ends the page early, with a token to go on from there.
        submitted_by = request.submitted_by
        if not viewer.end_user and viewer.kind == "agent":
            if submitted_by and submitted_by != viewer.identity:
                return task_pb2.ListTasksResponse()
            submitted_by = viewer.identity
        found: list[TaskRow] = []
        scanned = 0
        while True:
            rows = await _db(
                self._engine.store.list_tasks(
                    limit=size + 1,
                    after=after,
                    state=state,
                    conversation_id=request.conversation_id,
                    submitted_by=submitted_by,
                    parent_task_id=request.parent_task_id,
                    tenant=viewer.tenant if viewer.end_user else None,
                )
            )
            for row in rows:
                scanned += 1
                after = (row.created_at, row.task_id)
                if viewer.may_see(row.tenant, row.submitted_by):
                    found.append(row)
                    if len(found) > size:
                        break
            if len(found) > size or len(rows) <= size or scanned >= _MAX_SCAN:
                break
        if len(found) > size:
            page, token = found[:size], _encode_token(found[size - 1].created_at, found[size - 1].task_id)
        else:
            page = found
            token = _encode_token(*after) if after is not None and len(rows) > size else ""
        return task_pb2.ListTasksResponse(tasks=[views.task_proto(t) for t in page], next_page_token=token)

    async def WatchTask(
        self,
        request: task_pb2.WatchTaskRequest,
        context: grpc.aio.ServicerContext[task_pb2.WatchTaskRequest, task_pb2.WatchTaskResponse],
    ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        """Every event of a task after the cursor, then new ones as they happen, until the task ends."""
        task_id = _task_id(request.task_id)
        cursor = rules.check_cursor(request.cursor)
        viewer = self._viewer(self._user_claims(context))
        task = await self._visible(task_id, viewer, fresh=False)  # the watch reads the task with its events
        watcher = (viewer.tenant, viewer.end_user) if viewer.end_user else None
        if watcher is not None and not self._watches.take(watcher):
            raise ResourceExhaustedError(
                f"{viewer.end_user} already watches {_MAX_WATCHES_PER_USER} tasks at once; end one to watch another",
                reason="TOO_MANY_WATCHES",
            )
        try:
            async for response in self._watch(task.task_id, cursor):
                yield response
        finally:
            if watcher is not None:
                self._watches.give_back(watcher)

    async def _watch(self, task_id: str, cursor: int) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        poll = _WATCH_POLL_MIN
        changes = self._engine.changes(task_id)
        try:
            while True:
                changes.arm()  # before the read: a commit made while it runs wakes the wait below at once
                task, events = await _db(self._engine.store.watch_read(task_id, cursor, _WATCH_BATCH))
                if events:
                    poll = _WATCH_POLL_MIN
                    current = views.task_proto(task)  # the task as of the newest event, built once per batch
                    for event in events:
                        cursor = event.id
                        yield views.event_proto(event, current)
                    if len(events) == _WATCH_BATCH or task.state in FINAL_TASK_STATES:
                        continue  # more to read, or the last events of an ended task (a lost call's end)
                elif task.state in FINAL_TASK_STATES:
                    return
                # Woken at once by this replica's own writes; the timeout is the poll for other replicas' writes,
                # which backs off while the task is quiet: a hundred idle watches polling every 50 ms held a core.
                await changes.wait(poll)
                poll = min(poll * 2, _WATCH_POLL_MAX)
        finally:
            changes.close()

    async def CancelTask(
        self,
        request: task_pb2.CancelTaskRequest,
        context: grpc.aio.ServicerContext[task_pb2.CancelTaskRequest, task_pb2.CancelTaskResponse],
    ) -> task_pb2.CancelTaskResponse:
        """Stop scheduling, cancel running steps, end CANCELLED."""
        caller = self._caller()
        reason = check_text(request.reason, "reason", rules.MAX_COMMENT)
        visible = await self._visible(request.task_id, self._viewer(self._user_claims(context)))
        task = await self._engine.cancel(visible.task_id, reason, by=caller.uri if caller else "")
        return task_pb2.CancelTaskResponse(task=views.task_proto(task))

    async def ExplainTask(
        self,
        request: task_pb2.ExplainTaskRequest,
        context: grpc.aio.ServicerContext[task_pb2.ExplainTaskRequest, task_pb2.ExplainTaskResponse],
    ) -> task_pb2.ExplainTaskResponse:
        """The plan and its versions, choices and why, substitutions, attempts, approvals and sub-tasks."""
        if request.max_depth < 0:
            raise InvalidArgumentError(f"max_depth must not be negative, got {request.max_depth}", field="max_depth")
        viewer = self._viewer(self._user_claims(context))
        visible = await self._visible(request.task_id, viewer)
        explanation = await _db(views.explain(self._engine.store, visible.task_id, request.max_depth))
        if viewer.end_user:  # outside the mesh (through the gateway): no internal addresses
            views.without_endpoints(explanation)
        task = explanation.task
        ended = task.state in (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED)
        end = task.update_time.ToDatetime() if ended else dt.datetime.now(dt.UTC).replace(tzinfo=None)
        elapsed = views._duration(max(0.0, (end - task.create_time.ToDatetime()).total_seconds()))
        return task_pb2.ExplainTaskResponse(explanation=explanation, elapsed=elapsed)

    async def ApproveStep(
        self,
        request: task_pb2.ApproveStepRequest,
        context: grpc.aio.ServicerContext[task_pb2.ApproveStepRequest, task_pb2.ApproveStepResponse],
    ) -> task_pb2.ApproveStepResponse:
        """Let a step waiting for approval run."""
        approval = await self._decide(request, context, approve=True)
        return task_pb2.ApproveStepResponse(approval=approval)

    async def GetPlaybook(
        self,
        request: task_pb2.GetPlaybookRequest,
        context: grpc.aio.ServicerContext[task_pb2.GetPlaybookRequest, task_pb2.GetPlaybookResponse],
    ) -> task_pb2.GetPlaybookResponse:
        """A playbook's description and input schema (NOT_FOUND for an unknown name); the gateway validates with it."""
        if not request.name:
            raise InvalidArgumentError("name is required", field="name")
        playbook = self._engine.planner.playbooks.get(request.name)
        reply = task_pb2.GetPlaybookResponse(name=playbook.name, description=playbook.description)
        reply.input_schema.update(playbook.source.get("input_schema") or {})
        return reply

    async def RejectStep(
        self,
        request: task_pb2.RejectStepRequest,
        context: grpc.aio.ServicerContext[task_pb2.RejectStepRequest, task_pb2.RejectStepResponse],
    ) -> task_pb2.RejectStepResponse:
        """Refuse a step waiting for approval; its task fails."""
        approval = await self._decide(request, context, approve=False)
        return task_pb2.RejectStepResponse(approval=approval)

    async def _decide(
        self,
        request: task_pb2.ApproveStepRequest | task_pb2.RejectStepRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        approve: bool,
    ) -> task_pb2.Approval:
        task_id = _task_id(request.task_id)
        step_id = rules.check_id(request.step_id, "step_id")
        comment = check_text(request.comment[: rules.MAX_COMMENT], "comment", rules.MAX_COMMENT)
        caller = self._caller()
        caller_uri = caller.uri if caller is not None else ""
        claims = self._user_claims(context)
        if claims is not None:
            if APPROVE_SCOPE not in claims.scopes:
                raise PermissionDeniedError(f"{claims.subject} lacks the {APPROVE_SCOPE!r} permission")
            decided_by = claims.subject
        elif any(fnmatch.fnmatchcase(caller_uri, pattern) for pattern in self._approvers):
            decided_by = caller_uri
        else:
            raise PermissionDeniedError(f"{caller_uri or 'the caller'} lacks the {APPROVE_SCOPE!r} permission")
        await self._visible(task_id, self._viewer(claims))
        row = await self._engine.decide(task_id, step_id, approve=approve, by=decided_by, comment=comment)
        return views.approval_proto(row)


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    """ConversationService (helper P2 replaces this with the real one)."""


def _differs(task: TaskRow, submit: dict[str, Any]) -> bool:
    """Whether a stored task is not what a submission with its request id asks for (a reused request id)."""
    return (
        task.goal != submit["goal"]
        or task.input != submit["input"]
        or (bool(submit["playbook"]) and task.playbook != submit["playbook"])
        or (task.parent_task_id or "") != (submit.get("parent_task_id") or "")
        or (task.conversation_id or "") != (submit["conversation_id"] or "")
    )


def _task_id(task_id: str) -> str:
    return rules.check_id(task_id, "task_id")


def _encode_token(created_at: dt.datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at.isoformat(), task_id]).encode()).decode()


def _decode_token(token: str) -> tuple[dt.datetime, str]:
    try:
        created, task_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        moment = dt.datetime.fromisoformat(created)
        if moment.tzinfo is None:  # ours carry UTC; a hand-made one without a zone failed in the query (INTERNAL)
            moment = moment.replace(tzinfo=dt.UTC)
        return moment, rules.check_id(task_id, "page_token")
    except (ValueError, binascii.Error, TypeError, AttributeError):
        raise InvalidArgumentError("page_token is not one this server returned", field="page_token") from None


