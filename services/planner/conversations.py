"""Conversations: versioned threads of messages with optimistic concurrency, rollback and watches.

The domain, tested without gRPC; the rules that need no database (roles, bounds, page tokens) are in
:mod:`conversation_rules`, the SQL in :mod:`conversations_store`, the wire in :mod:`conversation_servicer`.

- Every write names the version it expects; a stale one fails with ABORTED and changes nothing.
- A rollback is a write too: a new version whose messages are those of the earlier version plus a SYSTEM
  notice. Later messages are hidden, never deleted, so the whole history stays readable; who rolled back,
  from which version to which, is in the audit trail.
- The caller's identity decides which roles it may write (:data:`conversation_rules.ROLE_WRITERS`); the request cannot.
- A caller acting for an end user (a verified delegation token) sees and writes only that end user's
  conversations; anything else is NOT_FOUND, so other users' conversations cannot even be probed.
- A message may start a task (an injected :data:`StartTask`); the task's result is appended to the
  conversation once (:class:`TaskRelay`), also when the planner that started it died meanwhile.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentmesh import telemetry
from agentmesh._errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from agentmesh.audit import AuditEntry
from agentmesh.services.planner import conversation_rules as rules
from agentmesh.services.planner.conversation_rules import Caller, RolePolicy
from agentmesh.services.planner.conversation_tasks import TaskRelay
from agentmesh.services.planner.conversation_watch import ChangeSignal
from agentmesh.services.planner.conversations_store import (
    TASK_RESULT_PREFIX,
    ConversationRecord,
    ConversationStore,
    MessageRecord,
    NewMessage,
)
from agentmesh.storage import utcnow

__all__ = [
    "Caller",
    "Conversations",
    "RolePolicy",
    "Sent",
    "StartTask",
    "TaskRequest",
    "TaskStart",
]

# Messages read per round of a watch.
_WATCH_BATCH = 500


@dataclass(frozen=True)
class TaskRequest:
    """The task a message asks for (agentmesh.v1.TaskTemplate); empty fields come from the message."""

    goal: str = ""
    input: dict[str, Any] | None = None
    playbook: str = ""


@dataclass(frozen=True)
class TaskStart:
    """What the planner needs to start a task on a message."""

    conversation_id: str
    message_id: str
    version: int
    goal: str
    input: dict[str, Any]
    playbook: str
    submitted_by: str
    # The end user the message was written for ("" when none), whom the task then acts for.
    on_behalf_of: str
    tenant: str
    # Stable per message: submitting twice (a retried SendMessage) starts one task.
    request_id: str


# The planner's task submission: returns the new task's id.
StartTask = Callable[[TaskStart], Awaitable[str]]
# (goal, input, playbook) -> None, or raises the MeshError the task's submission would raise.
CheckTask = Callable[[str, dict[str, Any], str], None]


@dataclass(frozen=True)
class Sent:
    """The result of SendMessage."""

    conversation: ConversationRecord
    message: MessageRecord
    task_id: str


class Conversations:
    """ConversationService's domain: create, read, list, write, roll back and watch conversations."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        trust_domain: str,
        start_task: StartTask | None = None,
        poll_interval: float = 0.5,
        roles: RolePolicy | None = None,
        check_task: CheckTask | None = None,
    ) -> None:
        self.store = store
        self.roles = roles or rules.RolePolicy(trust_domain)
        self.start_task = start_task
        # Refuses a task that could never start (a goal too long, an unknown playbook) before its message is
        # stored: a refused SendMessage stores nothing, so the caller can fix it and resend at the same version.
        self.check_task = check_task
        self.planner_identity = f"spiffe://{trust_domain}/service/planner"
        self._changes = ChangeSignal(store, poll_interval)
        self._closed = False
        self.tasks = TaskRelay(store, self.append_task_result, poll_interval=max(poll_interval, 1.0))

    async def create(
        self, caller: Caller, *, title: str, labels: Mapping[str, str], request_id: str = ""
    ) -> ConversationRecord:
        """A new conversation at version 0 owned by ``caller``; a repeated ``request_id`` returns the first."""
        rules.check_text(title, "title", rules.MAX_TITLE)
        checked = rules.check_labels(labels)
        conversation, created = await self.store.create(
            conversation_id=uuid.uuid4().hex,
            request_id=caller.request_key(rules.check_request_id(request_id)),
            title=title,
            labels=checked,
            owner=caller.identity or "",
            on_behalf_of=caller.end_user,
            tenant=caller.tenant,
            now=utcnow(),
        )
        if not created and (conversation.title != title or conversation.labels != checked):
            raise AlreadyExistsError(
                f"request_id {request_id!r} already created conversation {conversation.conversation_id!r} "
                "with another title or labels",
                metadata={"conversation_id": conversation.conversation_id},
            )
        return conversation

    @staticmethod
    def _visible(caller: Caller, conversation: ConversationRecord) -> ConversationRecord:
        if not caller.may_see(conversation):
            cid = conversation.conversation_id
            raise NotFoundError(f"conversation {cid!r} does not exist", metadata={"conversation_id": cid})
        return conversation

    async def _check_access(self, caller: Caller, conversation_id: str) -> None:
        if caller.end_user:  # workloads without an end user see every conversation: no read needed
            self._visible(caller, await self.store.get(conversation_id))

    async def get(
        self, caller: Caller, conversation_id: str, *, include_hidden: bool = False
    ) -> tuple[ConversationRecord, list[MessageRecord]]:
        """The conversation and its messages, oldest first (the whole history with ``include_hidden``)."""
        conversation, messages = await self.store.get_with_messages(
            rules.check_id(conversation_id, "conversation_id"), include_hidden=include_hidden
        )
        return self._visible(caller, conversation), messages

    async def list_page(
        self,
        caller: Caller,
        *,
        owner: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[ConversationRecord], str]:
        """One page of conversations, newest first, and the token of the next page ("" on the last)."""
        if page_size < 0:
            raise InvalidArgumentError(f"page_size must not be negative, got {page_size}", field="page_size")
        size = min(page_size or rules.DEFAULT_PAGE_SIZE, rules.MAX_PAGE_SIZE)
        wanted = rules.check_labels(labels or {})
        rules.check_text(owner, "owner", rules.MAX_OWNER)
        end_user = (caller.tenant, caller.end_user) if caller.end_user else None
        fingerprint = rules.filter_fingerprint(owner or None, end_user, wanted)
        after = rules.parse_page_token(page_token, fingerprint)
        page = await self.store.list_page(
            owner=owner or None, end_user=end_user, labels=wanted, after=after, limit=size + 1
        )
        if len(page) <= size:
            return page, ""
        page = page[:size]
        return page, rules.page_token(page[-1], fingerprint)

    async def send(
        self,
        caller: Caller,
        conversation_id: str,
        *,
        expected_version: int,
        role: str | None,
        text: str,
        data: dict[str, Any] | None = None,
        start_task: bool = False,
        task: TaskRequest | None = None,
        request_id: str = "",
    ) -> Sent:
        """Append a message as version ``expected_version + 1``; ABORTED when the conversation moved on."""
        rules.check_id(conversation_id, "conversation_id")
        rules.check_version(expected_version, "expected_version")
        resolved = self.roles.resolve(caller.identity, role)
        rules.check_message(text, data)
        if task is not None:
            start_task = True
            rules.check_json(task.input, "task.input")
            rules.check_text(task.goal, "task.goal", rules.MAX_TEXT)
        if start_task and self.start_task is None:
            raise FailedPreconditionError("this planner cannot start tasks from messages")
        if start_task and self.check_task is not None:
            spec = task or TaskRequest()
            self.check_task(spec.goal or text, _task_input(spec, text, data), spec.playbook)
        message = NewMessage(
            message_id=uuid.uuid4().hex,
            role=resolved,
            author=caller.identity or "",
            text=text,
            data=data,
            request_id=caller.request_key(rules.check_request_id(request_id)),
            on_behalf_of=caller.end_user,
        )
        await self._check_access(caller, conversation_id)
        conversation, stored, created = await self.store.append(
            conversation_id, message, expected_version=expected_version, now=utcnow()
        )
        if created:
            self._changes.notify(conversation_id)
        elif (stored.author, stored.on_behalf_of, stored.role, stored.text, stored.data) != (
            message.author, message.on_behalf_of, resolved, text, data
        ):
            raise AlreadyExistsError(
                f"request_id {request_id!r} was already used for another message in this conversation",
                metadata={"conversation_id": conversation_id},
            )
        task_id = stored.task_id or ""
        if start_task and not task_id:
            # Also on a replay whose first try stored the message but failed to start the task.
            task_id = await self._start(conversation_id, stored, caller, task or TaskRequest())
            stored = dataclasses.replace(stored, task_id=task_id)
        return Sent(conversation, stored, task_id)

    async def _start(self, conversation_id: str, message: MessageRecord, caller: Caller, task: TaskRequest) -> str:
        assert self.start_task is not None
        task_id = await self.start_task(
            TaskStart(
                conversation_id=conversation_id,
                message_id=message.message_id,
                version=message.version,
                goal=task.goal or message.text,
                input=_task_input(task, message.text, message.data),
                playbook=task.playbook,
                submitted_by=caller.identity or "",
                on_behalf_of=caller.end_user,
                tenant=caller.tenant,
                request_id=f"conversation-message:{message.message_id}",
            )
        )
        await self.store.set_task(message.message_id, task_id)
        self.tasks.track(task_id)
        return task_id

    async def rollback(
        self, caller: Caller, conversation_id: str, *, expected_version: int, to_version: int
    ) -> tuple[ConversationRecord, MessageRecord]:
        """Return the conversation to ``to_version`` as a new version (with a SYSTEM notice); hides, never deletes."""
        rules.check_id(conversation_id, "conversation_id")
        rules.check_version(expected_version, "expected_version")
        rules.check_version(to_version, "to_version")
        if to_version >= expected_version:
            raise InvalidArgumentError(
                f"to_version ({to_version}) must be earlier than expected_version ({expected_version})",
                field="to_version",
            )
        notice = NewMessage(
            message_id=uuid.uuid4().hex,
            role="SYSTEM",
            author=caller.identity or "",
            text=f"rolled back to version {to_version}",
            on_behalf_of=caller.end_user,
        )
        await self._check_access(caller, conversation_id)
        audit = AuditEntry(
            action="conversation.rollback",
            resource=f"conversations/{conversation_id}",
            actor=caller.identity or "",
            on_behalf_of=caller.end_user,
            trace_id=telemetry.current_trace_id(),
            detail={"from_version": expected_version, "to_version": to_version},
        )
        conversation, stored = await self.store.rollback(
            conversation_id,
            notice,
            expected_version=expected_version,
            to_version=to_version,
            now=utcnow(),
            audit=[audit],
        )
        self._changes.notify(conversation_id)
        return conversation, stored

    async def append_task_result(
        self, conversation_id: str, task_id: str, role: str, text: str, data: dict[str, Any] | None
    ) -> tuple[ConversationRecord, MessageRecord]:
        """Append the result of ``task_id`` (written by the planner) at the current version, once per task."""
        message = NewMessage(
            message_id=uuid.uuid4().hex,
            role=role,
            author=self.planner_identity,
            text=text[: rules.MAX_TEXT],
            data=data,
            request_id=TASK_RESULT_PREFIX + task_id,
            task_id=task_id,
        )
        conversation, stored, created = await self.store.append(
            conversation_id, message, expected_version=None, now=utcnow()
        )
        if created:
            self._changes.notify(conversation_id)
        return conversation, stored

    async def watch(
        self, caller: Caller, conversation_id: str, since_version: int = 0
    ) -> AsyncIterator[MessageRecord]:
        """Every change after ``since_version`` in order (hidden messages too), then new ones as they come."""
        rules.check_id(conversation_id, "conversation_id")
        rules.check_version(since_version, "since_version")
        current = self._visible(caller, await self.store.get(conversation_id))
        if since_version > current.version:
            raise InvalidArgumentError(
                f"since_version {since_version} is ahead of the conversation (version {current.version})",
                field="since_version",
            )
        version = since_version
        self._changes.subscribe(conversation_id, current.version)
        try:
            while True:
                if self._closed:
                    raise UnavailableError(
                        f"this planner is stopping; watch again from version {version}",
                        metadata={"since_version": str(version)},
                    )
                changed = self._changes.waiter(conversation_id)  # before reading, so no write slips between
                batch = await self.store.changes_after(conversation_id, version, _WATCH_BATCH)
                for message in batch:
                    yield message
                    version = message.version
                if len(batch) < _WATCH_BATCH:
                    await changed.wait()  # a write here, the shared poll (other replicas), or stopping
        finally:
            self._changes.unsubscribe(conversation_id)

    def start(self) -> None:
        """Start delivering task results in the background (call in the server's event loop)."""
        self.tasks.start()

    async def stop(self) -> None:
        """End every watch (UNAVAILABLE: resume elsewhere from the last version seen) and the task results."""
        self._closed = True
        await self._changes.close()
        await self.tasks.stop()


def _task_input(task: TaskRequest, text: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """The input of the task a message starts: the template's, else the message's data, else its text."""
    return task.input if task.input is not None else (data or {"text": text})
