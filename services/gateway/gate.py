"""Admission at the gateway: who is calling, may they, are they within their rate, is the request sane —
and an audit record for every refusal and every mutating call.

The order is fixed: bearer token (UNAUTHENTICATED) → scope (PERMISSION_DENIED) → rate limit
(RESOURCE_EXHAUSTED with RetryInfo) → size and JSON numbers (INVALID_ARGUMENT). Nothing reaches the planner before all
four pass, and nothing is stored but the audit record of a refusal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message

from agentmesh import telemetry
from agentmesh._errors import MeshError, ResourceExhaustedError, UnauthenticatedError
from agentmesh._key_slots import KeySlots
from agentmesh._settings import Settings
from agentmesh.audit import AuditEntry, AuditLog, redact
from agentmesh.services.gateway.auth import Principal, TokenVerifier, bearer_token
from agentmesh.services.gateway.limits import RateLimiter, RefusalBudget
from agentmesh.services.gateway.validation import check_json_numbers, check_size

__all__ = ["DELEGATION_METADATA_KEY", "MAX_STREAMS_PER_CALLER", "Admitted", "DelegationMinter", "Gate", "PublicContext"]

MAX_STREAMS_PER_CALLER = 64  # open watches (tasks, conversations, agents) of one end user at one gateway replica

logger = logging.getLogger(__name__)

# Metadata key of the END_USER delegation token on calls from the gateway to the planner.
DELEGATION_METADATA_KEY = "x-agentmesh-delegation"
_DELEGATION_TTL = 120.0
_DELEGATION_REUSE = 60.0  # a minted token is reused while it has more than this many seconds left

# The context of a call at the gateway: the public services are proxied generically, any method, any message.
PublicContext: TypeAlias = grpc.aio.ServicerContext[Message, Message]


@dataclass(frozen=True)
class Admitted:
    """A call that passed admission: the caller, and the metadata to forward with it."""

    method: str
    principal: Principal
    metadata: tuple[tuple[str, str], ...]
    trace_id: str
    started: float = field(default_factory=time.monotonic)


class DelegationMinter:
    """END_USER delegation tokens for the planner (``agentmesh.security``), reused while fresh.

    Signing costs an ES256 signature; one end user's calls within a minute share a token.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._audience = f"spiffe://{settings.trust_domain}/service/planner"
        self._issuer: Any = None
        self._cache: dict[tuple[str, str, frozenset[str]], tuple[float, str]] = {}

    def token(self, principal: Principal) -> str:
        """A token for the planner naming ``principal`` as the end user ("" under --insecure-dev)."""
        if self._settings.insecure_dev:
            return ""
        key = (principal.subject, principal.tenant, principal.scopes)
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached[0] - now > _DELEGATION_REUSE:
            return cached[1]
        from agentmesh.security import DelegationIssuer, TokenKind

        if self._issuer is None:
            self._issuer = DelegationIssuer.from_settings(self._settings, "service", "gateway")
        token: str = self._issuer.issue(
            kind=TokenKind.END_USER,
            audience=self._audience,
            subject=principal.subject,
            tenant=principal.tenant,
            scopes=principal.scopes,
            ttl_seconds=_DELEGATION_TTL,
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + _DELEGATION_TTL, token)
        return token


class Gate:
    """Admission checks and audit records of the gateway's public RPCs."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: TokenVerifier,
        limiter: RateLimiter,
        audit: AuditLog | None,
        delegation: DelegationMinter,
    ) -> None:
        self.settings = settings
        self.identity = f"spiffe://{settings.trust_domain}/service/gateway"
        self._verifier = verifier
        self._limiter = limiter
        self._audit = audit
        self._delegation = delegation
        self._refusals = RefusalBudget()
        self._streams: KeySlots[str] = KeySlots(MAX_STREAMS_PER_CALLER)  # open streams per caller, tenant/subject

    def open_stream(self, principal: Principal) -> None:
        """Take one of the caller's ``MAX_STREAMS_PER_CALLER`` open streams (give it back with
        :meth:`close_stream`), or raise ResourceExhaustedError: each open watch holds an upstream stream, and
        their number was unbounded."""
        if not self._streams.take(principal.key):
            raise ResourceExhaustedError(
                f"{principal.subject!r} already has {self._streams.held(principal.key)} streams open at this gateway "
                f"(at most {MAX_STREAMS_PER_CALLER}); end one to open another",
                reason="TOO_MANY_STREAMS",
            )

    def close_stream(self, principal: Principal) -> None:
        """Give back a stream taken with :meth:`open_stream`."""
        self._streams.give_back(principal.key)

    async def admit(
        self, method: str, permission: str, request: Message, context: PublicContext
    ) -> Admitted:
        """Authenticate, authorize, rate-limit and size-check the call; refusals are audited, then raised."""
        principal: Principal | None = None
        try:
            pairs = tuple(context.invocation_metadata() or ())
            if sum(1 for key, _ in pairs if key == "authorization") > 1:
                # Which one counts would depend on who reads the headers (a proxy may check the first).
                raise UnauthenticatedError(
                    "the call carries more than one authorization header; send exactly one bearer token",
                    reason="TOKEN_AMBIGUOUS",
                )
            metadata: Mapping[str, Any] = dict(pairs)
            principal = await self._verifier.verify(bearer_token(metadata))
            principal.require(permission, method)
            self._limiter.admit(principal.key, principal.tenant)
            check_size(request, self.settings.gateway_max_request_bytes, method)
            check_json_numbers(request)
        except MeshError as error:
            await self.refused(method, error, principal, context)
            raise
        forwarded = [(DELEGATION_METADATA_KEY, self._delegation.token(principal))]
        return Admitted(
            method=method,
            principal=principal,
            metadata=tuple((k, v) for k, v in forwarded if v),
            trace_id=telemetry.current_trace_id(),
        )

    async def refused(
        self,
        method: str,
        error: MeshError,
        principal: Principal | None,
        context: PublicContext,
        resource: str = "",
    ) -> None:
        """Append the audit record of a refusal (best effort: the caller is refused either way).

        Each caller (its ``tenant/subject``, or its network address without a valid token) gets a record per
        refusal up to a budget (10 at once, then 1 a second); beyond it refusals are counted, and the count is
        in the caller's next record as ``unrecorded_before``.
        """
        peer = context.peer() or ""
        caller = principal.key if principal is not None else f"peer {_host_of(peer)}"
        unrecorded = self._refusals.take(caller)
        if unrecorded is None:
            return
        detail: dict[str, Any] = {"reason": error.reason, "message": error.message, "peer": peer}
        if unrecorded:
            detail["unrecorded_before"] = unrecorded
        if principal is not None:
            detail["tenant"] = principal.tenant
        await self._append(
            AuditEntry(
                action=method,
                resource=resource,
                outcome=error.code.name,
                actor=self.identity,
                on_behalf_of=principal.key if principal else "",
                trace_id=telemetry.current_trace_id(),
                detail=detail,
            )
        )

    async def record(
        self, call: Admitted, *, outcome: str, resource: str = "", detail: Mapping[str, Any] | None = None
    ) -> None:
        """Append the audit record of a mutating call's outcome."""
        await self._append(
            AuditEntry(
                action=call.method,
                resource=resource,
                outcome=outcome,
                actor=self.identity,
                on_behalf_of=call.principal.key,
                trace_id=call.trace_id,
                detail={"tenant": call.principal.tenant, **(detail or {})},
            )
        )

    async def _append(self, entry: AuditEntry) -> None:
        if self._audit is None:
            return
        try:
            await self._audit.append(entry)
        except Exception as exc:  # the audit store being down must not turn into a traceback for the caller
            logger.error("audit append failed for %s: %s", entry.action, redact(str(exc)))


def _host_of(peer: str) -> str:
    """``ipv4:10.1.2.3:5678`` -> ``ipv4:10.1.2.3`` (a caller's address without its ephemeral port)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
