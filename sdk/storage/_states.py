"""The state values stored in state columns: the proto enum names without their prefix."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import CheckConstraint

__all__ = [
    "APPROVAL_STATES",
    "MESSAGE_ROLES",
    "SERVING_STATES",
    "STEP_STATES",
    "TASK_STATES",
    "one_of",
]

# agentmesh.v1.ServingState minus UNSPECIFIED, e.g. ServingState.Name(1).removeprefix("SERVING_STATE_").
SERVING_STATES: tuple[str, ...] = ("SERVING", "DRAINING", "NOT_SERVING")
# agentmesh.v1.TaskState.
TASK_STATES: tuple[str, ...] = (
    "PENDING",
    "PLANNING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "WAITING_APPROVAL",
)
# agentmesh.v1.StepState (also the result of a step attempt).
STEP_STATES: tuple[str, ...] = (
    "PENDING",
    "READY",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "SKIPPED",
    "CANCELLED",
    "WAITING_APPROVAL",
)
# agentmesh.v1.ApprovalState.
APPROVAL_STATES: tuple[str, ...] = ("PENDING", "APPROVED", "REJECTED", "TIMED_OUT")
# agentmesh.v1.MessageRole.
MESSAGE_ROLES: tuple[str, ...] = ("USER", "AGENT", "SYSTEM")


def one_of(column: str, values: Iterable[str]) -> CheckConstraint:
    """A CHECK constraint named ``ck_<table>_<column>`` that keeps ``column`` within ``values``."""
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)
