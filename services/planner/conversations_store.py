"""The conversations' SQL: every write is one transaction around one conditional version bump.

A write runs ``UPDATE conversations SET version = version + 1 ... WHERE conversation_id = :id AND
version = :expected`` and inserts the message of the new version in the same transaction. PostgreSQL
re-checks the WHERE clause after a concurrent writer commits (READ COMMITTED), SQLite serialises writers
(``BEGIN IMMEDIATE``): either way exactly one writer per version wins, and a loser changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmesh._errors import AbortedError, NotFoundError, UnavailableError
from agentmesh.audit import AuditEntry, append_audit
from agentmesh.storage import Conversation, ConversationMessage, Task, connection_lost

__all__ = [
    "FINAL_TASK_STATES",
    "TASK_RESULT_PREFIX",
    "ConversationRecord",
    "ConversationStore",
    "MessageRecord",
    "NewMessage",
    "PageKey",
    "TaskOutcome",
    "visible_versions",
]

conversations = Conversation.__table__
messages = ConversationMessage.__table__
tasks = Task.__table__

_CHUNK = 500

# The hot path's statements, built once: building a Core statement and its cache key per call costs more than
# the round trip of a small write on a quiet database.
_GET = sa.select(conversations).where(conversations.c.conversation_id == sa.bindparam("cid"))
_FIND_REQUEST = sa.select(messages).where(
    messages.c.conversation_id == sa.bindparam("cid"), messages.c.request_id == sa.bindparam("rid")
)
_BUMP_ANY = (
    sa.update(conversations)
    .where(conversations.c.conversation_id == sa.bindparam("cid"))
    .values(version=conversations.c.version + 1, updated_at=sa.bindparam("now"))
    .returning(*conversations.c)
)
_BUMP = _BUMP_ANY.where(conversations.c.version == sa.bindparam("expected"))
_INSERT_MESSAGE = sa.insert(messages)
_CHANGES_AFTER = (
    sa.select(messages)
    .where(messages.c.conversation_id == sa.bindparam("cid"), messages.c.version > sa.bindparam("since"))
    .order_by(messages.c.version)
    .limit(sa.bindparam("limit"))
)


@dataclass(frozen=True)
class ConversationRecord:
    """One stored conversation."""

    conversation_id: str
    title: str
    version: int
    labels: dict[str, str]
    owner: str
    created_at: dt.datetime
    updated_at: dt.datetime
    on_behalf_of: str = ""
    tenant: str = ""


@dataclass(frozen=True)
class MessageRecord:
    """One stored message: the write that made one version of its conversation."""

    message_id: str
    conversation_id: str
    version: int
    parent_version: int
    rolled_back_to: int | None
    request_id: str | None
    role: str
    author: str
    text: str
    data: dict[str, Any] | None
    task_id: str | None
    hidden: bool
    created_at: dt.datetime
    on_behalf_of: str = ""


@dataclass(frozen=True)
class NewMessage:
    """A message to append (its version and parent are decided by the store)."""

    message_id: str
    role: str
    author: str
    text: str
    data: dict[str, Any] | None = None
    request_id: str | None = None
    task_id: str | None = None
    on_behalf_of: str = ""


@dataclass(frozen=True)
class PageKey:
    """Where a page of "newest first" conversations continues: strictly after this row."""

    created_at: dt.datetime
    conversation_id: str


def _conversation(row: Any) -> ConversationRecord:
    return ConversationRecord(
        conversation_id=row.conversation_id,
        title=row.title,
        version=int(row.version),
        labels=dict(row.labels or {}),
        owner=row.owner,
        created_at=row.created_at,
        updated_at=row.updated_at,
        on_behalf_of=row.on_behalf_of,
        tenant=row.tenant,
    )


def _message(row: Any) -> MessageRecord:
    return MessageRecord(
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        version=int(row.version),
        parent_version=int(row.parent_version),
        rolled_back_to=None if row.rolled_back_to is None else int(row.rolled_back_to),
        request_id=row.request_id,
        role=row.role,
        author=row.author,
        text=row.text,
        data=row.data,
        task_id=row.task_id,
        hidden=bool(row.hidden),
        created_at=row.created_at,
        on_behalf_of=row.on_behalf_of,
    )


def visible_versions(parents: Mapping[int, int], version: int) -> set[int]:
    """The versions whose messages make up ``version``: the chain version, parent(version), ... above 0."""
    chain: set[int] = set()
    while version > 0:
        chain.add(version)
        version = parents[version]
    return chain


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


@dataclass(frozen=True)
class TaskOutcome:
    """A finished task that belongs to a conversation."""

    task_id: str
    conversation_id: str
    state: str
    output: dict[str, Any] | None
    error: str


FINAL_TASK_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
TASK_RESULT_PREFIX = "task-result:"


class ConversationStore:
    """Every SQL statement of the conversations."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Reads take no write lock on SQLite (the engine begins IMMEDIATE by default) and see one snapshot
        # on PostgreSQL, so a conversation and its messages always agree.
        if engine.dialect.name == "postgresql":
            self._reader_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        else:
            self._reader_engine = engine.execution_options(sqlite_begin="DEFERRED")

    @asynccontextmanager
    async def _transaction(self, *, write: bool = True) -> AsyncIterator[AsyncConnection]:
        try:
            async with (self.engine if write else self._reader_engine).begin() as conn:
                yield conn
        except Exception as exc:
            if not connection_lost(exc):
                raise
            if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
                raise UnavailableError("the conversation store is busy; retry shortly") from None
            raise UnavailableError("the planner cannot reach its database; retry shortly") from None

    # --- conversations ---

    async def create(
        self,
        *,
        conversation_id: str,
        request_id: str | None,
        title: str,
        labels: dict[str, str],
        owner: str,
        on_behalf_of: str,
        tenant: str,
        now: dt.datetime,
    ) -> tuple[ConversationRecord, bool]:
        """Insert a conversation at version 0; with a ``request_id`` already used by ``owner``, return that one.

        Returns the conversation and whether it was created now.
        """
        if request_id is not None:
            existing = await self._by_request(owner, request_id)
            if existing is not None:
                return existing, False
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    sa.insert(conversations).values(
                        conversation_id=conversation_id,
                        request_id=request_id,
                        title=title,
                        version=0,
                        labels=labels,
                        owner=owner,
                        on_behalf_of=on_behalf_of,
                        tenant=tenant,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            # The same request raced itself; the first insert won.
            existing = await self._by_request(owner, request_id) if request_id is not None else None
            if existing is None:
                raise
            return existing, False
        return (
            ConversationRecord(conversation_id, title, 0, dict(labels), owner, now, now, on_behalf_of, tenant),
            True,
        )

    async def _by_request(self, owner: str, request_id: str) -> ConversationRecord | None:
        async with self._transaction(write=False) as conn:
            row = (
                await conn.execute(
                    sa.select(conversations).where(
                        conversations.c.owner == owner, conversations.c.request_id == request_id
                    )
                )
            ).first()
        return None if row is None else _conversation(row)

    async def get(self, conversation_id: str) -> ConversationRecord:
        """The conversation, or NotFoundError."""
        async with self._transaction(write=False) as conn:
            return await self._get(conn, conversation_id)

    @staticmethod
    async def _get(conn: AsyncConnection, conversation_id: str) -> ConversationRecord:
        row = (await conn.execute(_GET, {"cid": conversation_id})).first()
        if row is None:
            raise NotFoundError(
                f"conversation {conversation_id!r} does not exist", metadata={"conversation_id": conversation_id}
            )
        return _conversation(row)

    async def get_with_messages(
        self, conversation_id: str, *, include_hidden: bool
    ) -> tuple[ConversationRecord, list[MessageRecord]]:
        """The conversation and its messages, oldest first, read in one snapshot."""
        query = sa.select(messages).where(messages.c.conversation_id == conversation_id)
        if not include_hidden:
            query = query.where(sa.not_(messages.c.hidden))
        async with self._transaction(write=False) as conn:
            conversation = await self._get(conn, conversation_id)
            rows = (await conn.execute(query.order_by(messages.c.version))).all()
        return conversation, [_message(row) for row in rows]

    async def list_page(
        self,
        *,
        owner: str | None,
        end_user: tuple[str, str] | None,
        labels: Mapping[str, str],
        after: PageKey | None,
        limit: int,
    ) -> list[ConversationRecord]:
        """Up to ``limit`` conversations newest first, after ``after``, filtered by owner, end user and labels.

        ``end_user`` is (tenant, subject).
        """
        query = sa.select(conversations)
        if owner is not None:
            query = query.where(conversations.c.owner == owner)
        if end_user is not None:
            query = query.where(conversations.c.tenant == end_user[0], conversations.c.on_behalf_of == end_user[1])
        for key, value in labels.items():
            query = query.where(conversations.c.labels[key].as_string() == value)
        if after is not None:
            query = query.where(
                sa.or_(
                    conversations.c.created_at < after.created_at,
                    sa.and_(
                        conversations.c.created_at == after.created_at,
                        conversations.c.conversation_id < after.conversation_id,
                    ),
                )
            )
        query = query.order_by(conversations.c.created_at.desc(), conversations.c.conversation_id.desc())
        async with self._transaction(write=False) as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [_conversation(row) for row in rows]

    # --- messages ---

    async def find_request(self, conversation_id: str, request_id: str) -> MessageRecord | None:
        """The message stored earlier with ``request_id`` in this conversation, if any."""
        async with self._transaction(write=False) as conn:
            return await self._find_request(conn, conversation_id, request_id)

    @staticmethod
    async def _find_request(conn: AsyncConnection, conversation_id: str, request_id: str) -> MessageRecord | None:
        row = (await conn.execute(_FIND_REQUEST, {"cid": conversation_id, "rid": request_id})).first()
        return None if row is None else _message(row)

    async def _bump(
        self, conn: AsyncConnection, conversation_id: str, expected_version: int | None, now: dt.datetime
    ) -> ConversationRecord:
        """Add one to the version (only from ``expected_version`` when given); ABORTED or NOT_FOUND otherwise."""
        if expected_version is None:
            result = await conn.execute(_BUMP_ANY, {"cid": conversation_id, "now": now})
        else:
            result = await conn.execute(_BUMP, {"cid": conversation_id, "now": now, "expected": expected_version})
        row = result.first()
        if row is not None:
            return _conversation(row)
        current = await self._get(conn, conversation_id)  # NotFoundError when it does not exist
        raise AbortedError(
            f"conversation {conversation_id!r} is at version {current.version}, not {expected_version}: "
            "another write came first; read it again and retry",
            reason="STALE_VERSION",
            metadata={"conversation_id": conversation_id, "current_version": str(current.version)},
        )

    async def append(
        self,
        conversation_id: str,
        message: NewMessage,
        *,
        expected_version: int | None,
        now: dt.datetime,
    ) -> tuple[ConversationRecord, MessageRecord, bool]:
        """Append ``message`` as the next version; returns (conversation, message, whether it is new).

        ``expected_version`` None appends at whatever version is current (the planner's own writes).
        A ``request_id`` stored before returns that message unchanged (an idempotent replay).
        """
        try:
            async with self._transaction() as conn:
                if message.request_id is not None:
                    earlier = await self._find_request(conn, conversation_id, message.request_id)
                    if earlier is not None:
                        return await self._get(conn, conversation_id), earlier, False
                conversation = await self._bump(conn, conversation_id, expected_version, now)
                stored = await self._insert(
                    conn, conversation_id, message, conversation.version, conversation.version - 1, None, now
                )
                return conversation, stored, True
        except (AbortedError, IntegrityError):
            # The same request may have won a race against itself: that is a replay, not a conflict.
            if message.request_id is not None:
                async with self._transaction(write=False) as conn:
                    earlier = await self._find_request(conn, conversation_id, message.request_id)
                    if earlier is not None:
                        return await self._get(conn, conversation_id), earlier, False
            raise

    @staticmethod
    async def _insert(
        conn: AsyncConnection,
        conversation_id: str,
        message: NewMessage,
        version: int,
        parent_version: int,
        rolled_back_to: int | None,
        now: dt.datetime,
    ) -> MessageRecord:
        record = MessageRecord(
            message_id=message.message_id,
            conversation_id=conversation_id,
            version=version,
            parent_version=parent_version,
            rolled_back_to=rolled_back_to,
            request_id=message.request_id,
            role=message.role,
            author=message.author,
            text=message.text,
            data=message.data,
            task_id=message.task_id,
            hidden=False,
            created_at=now,
            on_behalf_of=message.on_behalf_of,
        )
        await conn.execute(
            _INSERT_MESSAGE,
            {
                "message_id": record.message_id,
                "conversation_id": conversation_id,
                "version": version,
                "parent_version": parent_version,
                "rolled_back_to": rolled_back_to,
                "request_id": record.request_id,
                "role": record.role,
                "author": record.author,
                "on_behalf_of": record.on_behalf_of,
                "text": record.text,
                "data": record.data,
                "task_id": record.task_id,
                "hidden": False,
                "created_at": now,
            },
        )
        return record

    async def rollback(
        self,
        conversation_id: str,
        notice: NewMessage,
        *,
        expected_version: int,
        to_version: int,
        now: dt.datetime,
        audit: Sequence[AuditEntry] = (),
    ) -> tuple[ConversationRecord, MessageRecord]:
        """Make a new version equal to ``to_version`` plus the rollback ``notice``; hide, never delete.

        ``audit`` entries are appended to the audit trail in the same transaction.
        """
        async with self._transaction() as conn:
            conversation = await self._bump(conn, conversation_id, expected_version, now)
            rows = (
                await conn.execute(
                    sa.select(messages.c.version, messages.c.parent_version, messages.c.hidden).where(
                        messages.c.conversation_id == conversation_id
                    )
                )
            ).all()
            parents = {int(row.version): int(row.parent_version) for row in rows}
            keep = visible_versions(parents, to_version)
            to_hide = sorted(int(r.version) for r in rows if not r.hidden and int(r.version) not in keep)
            to_show = sorted(int(r.version) for r in rows if r.hidden and int(r.version) in keep)
            for hidden, versions in ((True, to_hide), (False, to_show)):
                for chunk in _chunks(versions):
                    await conn.execute(
                        sa.update(messages)
                        .where(messages.c.conversation_id == conversation_id, messages.c.version.in_(chunk))
                        .values(hidden=hidden)
                    )
            stored = await self._insert(
                conn, conversation_id, notice, conversation.version, to_version, to_version, now
            )
            await append_audit(conn, audit)
        return conversation, stored

    async def set_task(self, message_id: str, task_id: str) -> None:
        """Record the task a message started."""
        async with self._transaction() as conn:
            await conn.execute(
                sa.update(messages).where(messages.c.message_id == message_id).values(task_id=task_id)
            )

    async def versions(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        """The current version of each of ``conversation_ids`` that exists."""
        found: dict[str, int] = {}
        async with self._transaction(write=False) as conn:
            for chunk in _chunks(conversation_ids):
                rows = await conn.execute(
                    sa.select(conversations.c.conversation_id, conversations.c.version).where(
                        conversations.c.conversation_id.in_(chunk)
                    )
                )
                found.update((row.conversation_id, int(row.version)) for row in rows)
        return found

    async def changes_after(self, conversation_id: str, since_version: int, limit: int) -> list[MessageRecord]:
        """Messages of versions after ``since_version`` (hidden ones too: each was a change), oldest first."""
        async with self._transaction(write=False) as conn:
            rows = (
                await conn.execute(_CHANGES_AFTER, {"cid": conversation_id, "since": since_version, "limit": limit})
            ).all()
        return [_message(row) for row in rows]

    async def task_outcomes(self, task_ids: Sequence[str]) -> list[TaskOutcome]:
        """The finished ones among ``task_ids`` that belong to a conversation."""
        found: list[TaskOutcome] = []
        async with self._transaction(write=False) as conn:
            for chunk in _chunks(task_ids):
                rows = await conn.execute(
                    sa.select(tasks.c.task_id, tasks.c.conversation_id, tasks.c.state, tasks.c.output, tasks.c.error)
                    .where(tasks.c.task_id.in_(chunk), tasks.c.state.in_(FINAL_TASK_STATES))
                    .where(tasks.c.conversation_id.is_not(None))
                )
                found += [TaskOutcome(r.task_id, r.conversation_id, r.state, r.output, r.error) for r in rows]
        return found

    async def unanswered_tasks(self, limit: int) -> list[TaskOutcome]:
        """Finished tasks of conversations whose result is not in the conversation yet (e.g. after a crash)."""
        answer = messages.alias("answer")
        query = (
            sa.select(tasks.c.task_id, tasks.c.conversation_id, tasks.c.state, tasks.c.output, tasks.c.error)
            .where(tasks.c.conversation_id.is_not(None), tasks.c.state.in_(FINAL_TASK_STATES))
            .where(
                ~sa.exists().where(
                    answer.c.conversation_id == tasks.c.conversation_id,
                    answer.c.request_id == sa.literal(TASK_RESULT_PREFIX) + tasks.c.task_id,
                )
            )
            .order_by(tasks.c.updated_at)
            .limit(limit)
        )
        async with self._transaction(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [TaskOutcome(r.task_id, r.conversation_id, r.state, r.output, r.error) for r in rows]
