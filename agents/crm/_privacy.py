"""Who may see a customer's personal data, and the masked view everyone else gets (no database, no gRPC).

The rule: email, phone and street address are shown only when all of these hold —
1. the request asks for them (``include_pii: true``: purpose-bound, never by default);
2. the verified caller (its mTLS SPIFFE ID) is one of the allowed callers, by default only the planner
   (``spiffe://<trust-domain>/service/planner``);
3. the call carries a delegation token that the agent runtime verified (signed by the planner under the
   mesh CA, unexpired; see ``agentmesh.security``), and it is a *step* token addressed to this agent
   (``aud``), carrying scope ``pii:read``, that belongs to this call's task.
Otherwise the fields are masked; the name, plan and orders are not PII-restricted. A token that was
presented but does not unlock PII is counted by reason (``refused_token_reason``).
"""

from __future__ import annotations

from agentmesh.security import DelegationClaims, TokenKind

__all__ = [
    "PII_SCOPE",
    "full_address",
    "masked_address",
    "may_see_pii",
    "pii_refusal",
    "planner_identity",
    "refused_token_reason",
]

PII_SCOPE = "pii:read"

# Refusals that are about the token itself (the others: not asked for, caller not allowed, no token).
_TOKEN_REFUSALS = frozenset({"NOT_A_STEP_TOKEN", "SCOPE_MISSING", "TOKEN_WRONG_AUDIENCE", "TOKEN_WRONG_TASK"})


def planner_identity(trust_domain: str) -> str:
    """The planner's SPIFFE ID in ``trust_domain``."""
    return f"spiffe://{trust_domain}/service/planner"


def pii_refusal(
    *,
    requested: bool,
    caller: str,
    allowed_callers: frozenset[str],
    delegation: DelegationClaims | None,
    delegation_refusal: str,
    task_id: str,
    audience: str,
) -> str:
    """Why this call may not see unmasked personal data, or "" when it may."""
    if not requested:
        return "NOT_REQUESTED"
    if not caller or caller not in allowed_callers:
        return "CALLER_NOT_ALLOWED"
    if delegation is None:
        return delegation_refusal or "NO_TOKEN"
    if delegation.kind is not TokenKind.STEP:
        return "NOT_A_STEP_TOKEN"
    if PII_SCOPE not in delegation.scopes:
        return "SCOPE_MISSING"
    # The runtime's verifier checks both too; PII is where they must hold, whatever runner serves the skill.
    if delegation.audience != audience:
        return "TOKEN_WRONG_AUDIENCE"
    if delegation.task_id != task_id:
        return "TOKEN_WRONG_TASK"
    return ""


def may_see_pii(
    *,
    requested: bool,
    caller: str,
    allowed_callers: frozenset[str],
    delegation: DelegationClaims | None,
    task_id: str,
    audience: str,
) -> bool:
    """Whether this call may see unmasked personal data (see the module docstring for the rule)."""
    return not pii_refusal(
        requested=requested,
        caller=caller,
        allowed_callers=allowed_callers,
        delegation=delegation,
        delegation_refusal="",
        task_id=task_id,
        audience=audience,
    )


def refused_token_reason(*, token_presented: bool, delegation_refusal: str, pii_refusal: str) -> str:
    """The reason to count a presented token as refused, or "" (no token, or nothing refused about it)."""
    if not token_presented:
        return ""
    if delegation_refusal:  # the runtime refused the token (forged, expired, wrong audience, ...)
        return delegation_refusal
    return pii_refusal if pii_refusal in _TOKEN_REFUSALS else ""


def masked_address(street: str, city: str, postal_code: str, country: str) -> str:
    """The address with street and postal code hidden: city and country are enough to route a parcel query."""
    return ", ".join(part for part in ("[redacted]" if street else "", city, country) if part)


def full_address(street: str, city: str, postal_code: str, country: str) -> str:
    """The address on one line."""
    return ", ".join(part for part in (street, f"{postal_code} {city}".strip(), country) if part)
