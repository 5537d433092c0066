"""TaskService's rules that need no database: the bounds of every request field, so that bad input is
INVALID_ARGUMENT with a readable message before it reaches SQL (PostgreSQL cannot store NUL, ids have a
width, cursors are 64-bit), never INTERNAL."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.planner.conversation_rules import check_text
from agentmesh.storage import has_nul
from agentmesh.v1 import task_pb2

__all__ = [
    "MAX_COMMENT",
    "MAX_GOAL",
    "MAX_ID",
    "MAX_IDENTITY",
    "MAX_TIMEOUT",
    "Viewer",
    "check_cursor",
    "check_goal",
    "check_id",
    "check_input",
    "check_state",
    "check_timeout",
]

MAX_ID = 64  # task, conversation and step ids (the width of their columns)
MAX_IDENTITY = 512
MAX_GOAL = 10_000
MAX_COMMENT = 2_000
MAX_TIMEOUT = 30 * 24 * 3600.0  # a task's whole deadline: at most 30 days
_MAX_CURSOR = 2**63 - 1  # event ids are BIGINT


@dataclass(frozen=True)
class Viewer:
    """Who calls TaskService, and so which tasks it may see and whose request ids it shares.

    Behind the gateway (a verified end-user token) a caller sees the tasks of its own tenant only, and its
    request ids are its end user's; an agent sees only the sub-tasks it submitted, and its request ids are
    those of the parent's step it runs; other workloads (ops clients, services) see every task.
    """

    identity: str = ""  # SPIFFE id ("" only under --insecure-dev)
    kind: str = ""  # of the identity: client, service, agent
    end_user: str = ""
    tenant: str = ""

    def may_see(self, tenant: str, submitted_by: str) -> bool:
        """Whether this caller may see (read, watch, explain, cancel, decide on) a task of ``tenant`` submitted
        by ``submitted_by``; any other is NOT_FOUND to it, so other tenants' tasks cannot even be probed."""
        if self.end_user:
            return tenant == self.tenant
        if self.kind == "agent":
            return submitted_by == self.identity
        return True

    def request_key(self, request_id: str, parent_task_id: str = "", parent_step_id: str = "") -> str:
        """``request_id`` as stored (unique per submitting workload): scoped to the end user, or to the parent's
        step an agent runs, so one user's or one task's id never finds another's task."""
        if not request_id:
            return ""
        if self.end_user:
            prefix, scope = "user", (self.tenant, self.end_user)
        elif self.kind == "agent":
            prefix, scope = "step", (parent_task_id, parent_step_id)
        else:
            return request_id
        return f"{prefix}:{hashlib.sha256(chr(0).join((*scope, request_id)).encode()).hexdigest()}"


def check_id(value: str, field: str, *, required: bool = True) -> str:
    """``value`` if it can be an id (``required``: and is not empty); InvalidArgumentError naming ``field``."""
    if not value:
        if required:
            raise InvalidArgumentError(f"{field} is required", field=field)
        return value
    if len(value) > MAX_ID or not value.isprintable():
        raise InvalidArgumentError(
            f"{field} {value[:80]!r} is not an id (at most {MAX_ID} printable characters)", field=field
        )
    return value


def check_input(value: dict[str, Any]) -> dict[str, Any]:
    """A task's input, if it can be stored (no NUL character anywhere: JSONB cannot hold one)."""
    if has_nul(value):
        raise InvalidArgumentError("input must not contain NUL characters", field="input")
    return value


def check_state(value: task_pb2.TaskState.ValueType) -> str:
    """The TaskState name a ListTasks filter asks for ("" for any)."""
    if not value:
        return ""
    if value not in task_pb2.TaskState.values():
        raise InvalidArgumentError(f"state {value} is not a TaskState", field="state")
    return task_pb2.TaskState.Name(value).removeprefix("TASK_STATE_")


def check_timeout(seconds: float) -> float:
    """A task's timeout in seconds, if positive and at most :data:`MAX_TIMEOUT`."""
    if seconds <= 0 or seconds > MAX_TIMEOUT:
        raise InvalidArgumentError(
            f"timeout must be more than 0 s and at most {MAX_TIMEOUT:.0f} s, got {seconds:g} s", field="timeout"
        )
    return seconds


def check_cursor(value: str) -> int:
    """A WatchTask cursor ("" = from the start) as the event id it names."""
    if not value:
        return 0
    try:
        cursor = int(value)
    except ValueError:
        cursor = -1
    if not 0 <= cursor <= _MAX_CURSOR:
        raise InvalidArgumentError(f"cursor {value[:80]!r} is not one this server returned", field="cursor")
    return cursor


def check_goal(value: str) -> str:
    """A task's goal, if within :data:`MAX_GOAL` characters and storable."""
    return check_text(value, "goal", MAX_GOAL)
