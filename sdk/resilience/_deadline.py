"""Deadlines: every outbound call gets one, never longer than what the caller (or our own caller) has left."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from agentmesh.telemetry._server import inbound_call

# Absolute time.monotonic() by which work in this context must be done (set by with_deadline).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("agentmesh_deadline", default=None)


@contextlib.contextmanager
def with_deadline(seconds: float) -> Iterator[float]:
    """Bound outbound calls made inside the block to ``seconds`` from now (nested blocks only shrink it).

    Yields the absolute ``time.monotonic()`` deadline.
    """
    deadline = time.monotonic() + seconds
    outer = _deadline.get()
    if outer is not None and outer < deadline:
        deadline = outer
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def remaining_budget(default: float | None) -> float | None:
    """Seconds an outbound call may take now: the smallest of ``default``, the enclosing
    :func:`with_deadline` block, and the remaining deadline of the inbound call being served."""
    budget = default
    deadline = _deadline.get()
    if deadline is not None:
        left = deadline - time.monotonic()
        budget = left if budget is None or left < budget else budget
    call = inbound_call.get()
    if call is not None:
        left = call.time_remaining()
        if left is not None and (budget is None or left < budget):
            budget = left
    return None if budget is None else max(budget, 0.0)
