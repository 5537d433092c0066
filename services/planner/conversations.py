"""Conversations: versioned threads of messages with optimistic concurrency, rollback and watches.

Domain rules, tested without gRPC; the SQL is in :mod:`conversations_store`, the wire in
:mod:`conversation_servicer`.

- Every write names the version it expects; a stale one fails with ABORTED and changes nothing.
- A rollback is a write too: a new version whose messages are those of the earlier version plus a SYSTEM
  notice. Later messages are hidden, never deleted, so the whole history stays readable; who rolled back,
  from which version to which, is in the audit trail.
- The caller's identity decides which roles it may write (:data:`ROLE_WRITERS`); the request cannot.
- A caller acting for an end user (a verified delegation token) sees and writes only that end user's
  conversations; anything else is NOT_FOUND, so other users' conversations cannot even be probed.
- A message may start a task (an injected :data:`StartTask`); the task's result is appended to the
  conversation once (:class:`TaskRelay`), also when the planner that started it died meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentmesh import telemetry
from agentmesh._errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from agentmesh.audit import AuditEntry
from agentmesh.services.planner.conversation_tasks import TaskRelay
from agentmesh.services.planner.conversation_watch import ChangeSignal
from agentmesh.services.planner.conversations_store import (
    TASK_RESULT_PREFIX,
    ConversationRecord,
    ConversationStore,
    MessageRecord,
    NewMessage,
    PageKey,
)
from agentmesh.storage import utcnow

__all__ = [
    "MAX_DATA_BYTES",
    "MAX_TEXT",
    "ROLES",
    "ROLE_WRITERS",
    "Caller",
    "Conversations",
    "RolePolicy",
    "Sent",
    "StartTask",
    "TaskRequest",
    "TaskStart",
    "check_labels",
]

ROLES = ("USER", "AGENT", "SYSTEM")
# Who may write each role (SPIFFE id globs; {trust_domain} is filled in). End users speak through the
# gateway or a client; the planner (task results) and agents speak as AGENT; only ops clients write
# SYSTEM notices by hand (rollback notices are written by the mesh for whoever rolls back).
ROLE_WRITERS: Mapping[str, tuple[str, ...]] = {
    "USER": ("spiffe://{trust_domain}/client/*", "spiffe://{trust_domain}/service/gateway"),
    "AGENT": ("spiffe://{trust_domain}/service/planner", "spiffe://{trust_domain}/agent/*"),
    "SYSTEM": ("spiffe://{trust_domain}/client/ops", "spiffe://{trust_domain}/client/ops-*"),
}

MAX_TITLE = 256
MAX_TEXT = 32_768
MAX_DATA_BYTES = 65_536
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_REQUEST_ID = 128
MAX_ID = 64
MAX_OWNER = 512
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Messages read per round of a watch.
_WATCH_BATCH = 500
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


@dataclass(frozen=True)
class Caller:
    """Who calls: the verified workload identity and, behind the gateway, the end user it acts for."""

    identity: str | None = None  # SPIFFE id; None only under --insecure-dev
    end_user: str = ""  # subject of a verified end-user delegation token
    tenant: str = ""

    def request_key(self, request_id: str | None) -> str | None:
        """``request_id`` as stored: scoped to the end user, so one user's id never finds another's result."""
        if request_id is None or not self.end_user:
            return request_id
        digest = hashlib.sha256(f"{self.tenant}\0{self.end_user}\0{request_id}".encode()).hexdigest()
        return f"user:{digest}"

    def may_see(self, conversation: ConversationRecord) -> bool:
        """Whether this caller may read and write ``conversation``."""
        return not self.end_user or (conversation.tenant, conversation.on_behalf_of) == (self.tenant, self.end_user)


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


@dataclass(frozen=True)
class Sent:
    """The result of SendMessage."""

    conversation: ConversationRecord
    message: MessageRecord
    task_id: str


class RolePolicy:
    """Which message roles an identity may write."""

    def __init__(self, trust_domain: str, writers: Mapping[str, Sequence[str]] = ROLE_WRITERS) -> None:
        self._writers = {
            role: tuple(pattern.replace("{trust_domain}", trust_domain) for pattern in patterns)
            for role, patterns in writers.items()
        }

    def roles_of(self, caller: str | None) -> tuple[str, ...]:
        """The roles ``caller`` may write, in :data:`ROLES` order (every role without identities: --insecure-dev)."""
        if caller is None:
            return ROLES
        return tuple(
            role
            for role in ROLES
            if any(fnmatch.fnmatchcase(caller, pattern) for pattern in self._writers.get(role, ()))
        )

    def resolve(self, caller: str | None, role: str | None) -> str:
        """The role to write: ``role`` if the caller holds it, the caller's first role when ``role`` is None."""
        held = self.roles_of(caller)
        if role is None:
            if not held:
                raise PermissionDeniedError(
                    f"{caller} may not write messages in any role", metadata={"identity": caller or ""}
                )
            return held[0]
        if role not in held:
            allowed = ", ".join(held) or "none"
            raise PermissionDeniedError(
                f"{caller} may not write {role} messages (its roles: {allowed})",
                reason="ROLE_NOT_HELD",
                metadata={"identity": caller or "", "role": role},
            )
        return role


def _check_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    return _check_text(value, field, MAX_ID)


def _check_request_id(value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID or not _REQUEST_ID.fullmatch(value):
        raise InvalidArgumentError(
            f"request_id must be 1-{MAX_REQUEST_ID} printable ASCII characters without spaces", field="request_id"
        )
    return value


def _check_version(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgumentError(f"{field} must not be negative, got {value}", field=field)
    return value


def check_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    """``labels`` if every key and value is within bounds; InvalidArgumentError naming the first that is not."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgumentError(f"at most {MAX_LABELS} labels, got {len(labels)}", field=field)
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgumentError(
                f"label key {key[:80]!r} must be 1-63 letters, digits, '.', '_', '/' or '-', "
                "starting and ending with a letter or digit",
                field=f"{field}.{key[:80]}",
            )
        _check_text(value, f"{field}.{key}", MAX_LABEL_VALUE)
    return dict(labels)


def _check_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgumentError(f"{field} is longer than {limit} characters ({len(value)})", field=field)
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise InvalidArgumentError(f"{field} must not contain NUL characters", field=field)
    return value


def _check_json(value: dict[str, Any] | None, field: str) -> None:
    if value is None:
        return
    encoded = json.dumps(value, separators=(",", ":"))
    if len(encoded) > MAX_DATA_BYTES:
        raise InvalidArgumentError(f"{field} is larger than {MAX_DATA_BYTES} bytes as JSON", field=field)
    if _has_nul(value):  # nor can JSONB
        raise InvalidArgumentError(f"{field} must not contain NUL characters", field=field)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _check_message(text: str, data: dict[str, Any] | None) -> None:
    _check_text(text, "text", MAX_TEXT)
    _check_json(data, "data")
    if not text and not data:
        raise InvalidArgumentError("a message needs text or data", field="text")


def _filter_fingerprint(owner: str | None, end_user: tuple[str, str] | None, labels: Mapping[str, str]) -> str:
    canonical = json.dumps([owner, end_user, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _page_token(last: ConversationRecord, fingerprint: str) -> str:
    body = {"t": last.created_at.isoformat(), "id": last.conversation_id, "f": fingerprint}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def _parse_page_token(token: str, fingerprint: str) -> PageKey | None:
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key = PageKey(dt.datetime.fromisoformat(body["t"]), str(body["id"]))
        same_filters = body["f"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgumentError("page_token is not a token this service returned", field="page_token") from None
    if not same_filters:
        raise InvalidArgumentError(
            "page_token belongs to a listing with other filters; repeat the filters of the first page",
            field="page_token",
        )
    return key


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
    ) -> None:
        self.store = store
        self.roles = roles or RolePolicy(trust_domain)
        self.start_task = start_task
        self.planner_identity = f"spiffe://{trust_domain}/service/planner"
        self._changes = ChangeSignal(store, poll_interval)
        self._closed = False
        self.tasks = TaskRelay(store, self.append_task_result, poll_interval=max(poll_interval, 1.0))

    async def create(
        self, caller: Caller, *, title: str, labels: Mapping[str, str], request_id: str = ""
    ) -> ConversationRecord:
        """A new conversation at version 0 owned by ``caller``; a repeated ``request_id`` returns the first."""
        _check_text(title, "title", MAX_TITLE)
        checked = check_labels(labels)
        conversation, created = await self.store.create(
            conversation_id=uuid.uuid4().hex,
            request_id=caller.request_key(_check_request_id(request_id)),
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
            _check_id(conversation_id, "conversation_id"), include_hidden=include_hidden
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
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        wanted = check_labels(labels or {})
        _check_text(owner, "owner", MAX_OWNER)
        end_user = (caller.tenant, caller.end_user) if caller.end_user else None
        fingerprint = _filter_fingerprint(owner or None, end_user, wanted)
        after = _parse_page_token(page_token, fingerprint)
        page = await self.store.list_page(
            owner=owner or None, end_user=end_user, labels=wanted, after=after, limit=size + 1
        )
        if len(page) <= size:
            return page, ""
        page = page[:size]
        return page, _page_token(page[-1], fingerprint)

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
        _check_id(conversation_id, "conversation_id")
        _check_version(expected_version, "expected_version")
        resolved = self.roles.resolve(caller.identity, role)
        _check_message(text, data)
        if task is not None:
            start_task = True
            _check_json(task.input, "task.input")
            _check_text(task.goal, "task.goal", MAX_TEXT)
        if start_task and self.start_task is None:
            raise FailedPreconditionError("this planner cannot start tasks from messages")
        message = NewMessage(
            message_id=uuid.uuid4().hex,
            role=resolved,
            author=caller.identity or "",
            text=text,
            data=data,
            request_id=caller.request_key(_check_request_id(request_id)),
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
                input=task.input if task.input is not None else (message.data or {"text": message.text}),
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
        _check_id(conversation_id, "conversation_id")
        _check_version(expected_version, "expected_version")
        _check_version(to_version, "to_version")
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
            text=text[:MAX_TEXT],
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
        _check_id(conversation_id, "conversation_id")
        _check_version(since_version, "since_version")
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
