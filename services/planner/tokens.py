"""Signed step tokens: the planner's delegation token per Invoke, and the check of an agent's token on a sub-task.

Minting lives behind :class:`StepTokens` alone, so the rest of the planner never touches JWTs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from agentmesh._settings import Settings
from agentmesh.security import (
    DelegationClaims,
    DelegationIssuer,
    DelegationVerifier,
    RevocationSet,
    TokenKind,
)

__all__ = ["StepTokens"]

logger = logging.getLogger(__name__)


class StepTokens:
    """Mints STEP tokens as ``service/planner`` and verifies tokens presented to the planner."""

    def __init__(self, settings: Settings, *, ttl_seconds: float = 120.0) -> None:
        self._settings = settings
        self._ttl = ttl_seconds
        self._issuer: DelegationIssuer | None = None
        self._verifiers: dict[str, DelegationVerifier] = {}
        # The set the planner's server follows (set by PlannerServer): tokens of revoked signers are refused.
        self.revocations: RevocationSet | None = None
        if settings.insecure_dev:
            logger.warning("INSECURE: the planner sends no step tokens (plaintext mesh)")
            return
        self._issuer = DelegationIssuer.from_settings(settings, "service", "planner")

    def mint(
        self,
        *,
        audience: str,
        subject: str,
        tenant: str,
        scopes: Iterable[str],
        task_id: str,
        step_id: str,
        actor_chain: tuple[str, ...] = (),
        ttl_seconds: float | None = None,
    ) -> str:
        """A STEP token for one call: audience the agent, the task's end user as subject."""
        if self._issuer is None:
            return ""
        ttl = max(1.0, min(300.0, ttl_seconds or self._ttl))
        return self._issuer.issue(
            kind=TokenKind.STEP,
            audience=audience,
            subject=subject,
            tenant=tenant,
            scopes=scopes,
            actor_chain=actor_chain,
            task_id=task_id,
            step_id=step_id,
            ttl_seconds=ttl,
        )

    def verify(self, token: str, *, audience: str, task_id: str | None = None) -> DelegationClaims:
        """Check a token presented to the planner by ``audience`` (its own identity for a step token)."""
        verifier = self._verifiers.get(audience)
        if verifier is None:
            verifier = self._verifiers[audience] = DelegationVerifier.from_settings(
                self._settings, audience, revocations=self.revocations
            )
        verifier.revocations = self.revocations
        return verifier.verify(token, task_id=task_id)
