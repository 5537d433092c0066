"""``SkillContext``: what a running skill knows about its call, and how it reports progress and model use.

Delegation: the runtime verifies the call's ``delegation_token`` before the skill runs (signature and chain
against the mesh CA, allowed issuer, ``aud`` = this agent's SPIFFE id, lifetime, and a step token's task =
the call's task). A skill reads the result as ``ctx.delegation``: the verified claims, or None when the call
carries no token or a token that failed. A failed token does not fail the call (a skill that needs no user
context serves it as before); ``ctx.delegation_refusal`` then says why (e.g. ``TOKEN_EXPIRED``), so a skill
that does need one can refuse, mask or count. Never trust ``delegation_token`` itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from agentmesh.security import DelegationClaims

__all__ = ["ModelUsage", "Progress", "SkillContext", "UsageLike"]


@dataclass(frozen=True)
class ModelUsage:
    """One model call made while serving an invocation (reported in ``InvokeResponse.model_usages``)."""

    model_name: str
    model_version: str
    latency: float  # seconds


@dataclass(frozen=True)
class Progress:
    """An intermediate progress event of ``InvokeStream``."""

    message: str
    fraction: float = 0.0
    detail: dict[str, Any] | None = None


class UsageLike(Protocol):
    """Anything that says which model answered and how long it took (e.g. an inference result)."""

    # Read-only: frozen dataclasses and properties qualify.
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def latency(self) -> float | timedelta: ...


ProgressSink = Callable[[Progress], Awaitable[None]]


@dataclass
class SkillContext:
    """The call a skill is serving: ids, caller, deadline, progress reporting and model-usage recording."""

    agent_name: str
    skill: str
    task_id: str = ""
    step_id: str = ""
    conversation_id: str = ""
    idempotency_key: str = ""
    # The raw signed token naming the end user this call acts for ("" when none); use ``delegation`` instead.
    delegation_token: str = ""
    # The verified delegation (see the module docstring); None when there is no valid token for this call.
    delegation: DelegationClaims | None = None
    # Why the call's token was refused (a ``TOKEN_*`` reason); "" when it was accepted or there was none.
    delegation_refusal: str = ""
    # SPIFFE ID of the verified caller, "" when the server runs without identities (--insecure-dev).
    caller: str = ""
    trace_id: str = ""
    # Absolute time.monotonic() deadline of the call, None when the caller set none.
    deadline: float | None = None
    model_usages: list[ModelUsage] = field(default_factory=list)
    _progress_sink: ProgressSink | None = field(default=None, repr=False)

    async def progress(self, message: str, fraction: float | None = None, **detail: Any) -> None:
        """Report progress; streamed to ``InvokeStream`` callers, ignored for plain ``Invoke``."""
        if self._progress_sink is None:
            return
        clamped = 0.0 if fraction is None else min(1.0, max(0.0, float(fraction)))
        await self._progress_sink(Progress(message=message, fraction=clamped, detail=detail or None))

    def record_model_usage(self, usage: UsageLike) -> None:
        """Record a model call (anything with ``model_name``, ``model_version``, ``latency``)."""
        latency = usage.latency.total_seconds() if isinstance(usage.latency, timedelta) else float(usage.latency)
        self.model_usages.append(ModelUsage(usage.model_name, usage.model_version, latency))

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (never negative), or None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())
