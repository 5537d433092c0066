"""Task results into conversations: a finished task that belongs to a conversation answers in it, once.

Three ways a result arrives, so none is lost: the engine's finish listener (at once, in the process that
finished the task), a poll of the tasks this process started (the task may finish on another replica),
and a sweep at start-up for results a crashed planner never wrote. Appending is idempotent per task
(request id ``task-result:<task id>``), so overlapping paths write one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agentmesh._errors import MeshError
from agentmesh.services.planner.conversations_store import ConversationStore, TaskOutcome

__all__ = ["AppendResult", "FinishedTask", "TaskRelay", "answer_of"]

logger = logging.getLogger(__name__)

# Output fields read, in order, as the text of a task's answer.
_TEXT_FIELDS = ("reply", "response", "answer", "text", "message", "summary")
_SWEEP_BATCH = 200

# Conversations.append_task_result: (conversation_id, task_id, role, text, data).
AppendResult = Callable[[str, str, str, str, "dict[str, Any] | None"], Awaitable[object]]


class FinishedTask(Protocol):
    """What the engine's finish listener hands over (the planner's TaskView has these fields)."""

    # Read-only: the engine's frozen TaskRow qualifies.
    @property
    def task_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def output(self) -> dict[str, Any] | None: ...
    @property
    def error(self) -> str: ...
    @property
    def conversation_id(self) -> str | None: ...


def answer_of(outcome: TaskOutcome) -> tuple[str, str, dict[str, Any] | None]:
    """(role, text, data) of the message that reports ``outcome``: AGENT for a result, SYSTEM for a failure."""
    if outcome.state == "SUCCEEDED":
        output = outcome.output or {}
        text = next((output[f] for f in _TEXT_FIELDS if isinstance(output.get(f), str) and output[f]), "")
        if not text:
            text = json.dumps(output, sort_keys=True)[:2000] if output else f"task {outcome.task_id} succeeded"
        return "AGENT", text, output or None
    verb = "was cancelled" if outcome.state == "CANCELLED" else "failed"
    text = f"task {outcome.task_id} {verb}" + (f": {outcome.error}" if outcome.error else "")
    return "SYSTEM", text, {"task_id": outcome.task_id, "state": outcome.state}


class TaskRelay:
    """Writes the results of conversation tasks into their conversations."""

    def __init__(self, store: ConversationStore, append: AppendResult, *, poll_interval: float = 1.0) -> None:
        self._store = store
        self._append = append
        self._poll_interval = poll_interval
        self._pending: set[str] = set()
        self._loop: asyncio.Task[None] | None = None

    def track(self, task_id: str) -> None:
        """Watch a task this process started until it finishes."""
        self._pending.add(task_id)

    async def on_task_finished(self, task: FinishedTask) -> None:
        """The engine's finish listener: answer in the task's conversation, if it has one."""
        if task.conversation_id:
            await self.deliver(TaskOutcome(task.task_id, task.conversation_id, task.state, task.output, task.error))

    async def deliver(self, outcome: TaskOutcome) -> None:
        """Append the answer of ``outcome`` (idempotent)."""
        role, text, data = answer_of(outcome)
        await self._append(outcome.conversation_id, outcome.task_id, role, text, data)
        self._pending.discard(outcome.task_id)

    async def sweep(self) -> int:
        """Answer every finished conversation task still unanswered in the database; returns how many."""
        delivered = 0
        while True:
            batch = await self._store.unanswered_tasks(_SWEEP_BATCH)
            for outcome in batch:
                await self.deliver(outcome)
            delivered += len(batch)
            if len(batch) < _SWEEP_BATCH:
                return delivered

    async def poll(self) -> None:
        """Answer the tasks this process started that have finished since."""
        if self._pending:
            for outcome in await self._store.task_outcomes(sorted(self._pending)):
                await self.deliver(outcome)

    async def _run(self) -> None:
        swept = False
        while True:
            try:
                if not swept:
                    await self.sweep()
                    swept = True
                await self.poll()
            except MeshError as exc:  # the database is away; the next round tries again
                logger.warning("conversation task results wait: %s", exc.message)
            except Exception:
                logger.exception("conversation task results failed; retrying")
            await asyncio.sleep(self._poll_interval)

    def start(self) -> None:
        """Start the background sweep and poll (in a running event loop)."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="conversation-task-results")

    async def stop(self) -> None:
        """Stop the background loop."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
