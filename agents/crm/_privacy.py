"""Who may see a customer's personal data, and the masked view everyone else gets (no database, no gRPC).

The rule: email, phone and street address are shown only when all three hold —
1. the request asks for them (``include_pii: true``: purpose-bound, never by default);
2. the verified caller (its mTLS SPIFFE ID) is one of the allowed callers, by default only the planner
   (``spiffe://<trust-domain>/service/planner``), which acts for an authenticated end user;
3. the call carries a delegation token (it is made on behalf of a signed-in user, not by the mesh itself).
Otherwise the fields are masked; the name, plan and orders are not PII-restricted.
"""

from __future__ import annotations

__all__ = ["full_address", "masked_address", "may_see_pii", "planner_identity"]


def planner_identity(trust_domain: str) -> str:
    """The planner's SPIFFE ID in ``trust_domain``."""
    return f"spiffe://{trust_domain}/service/planner"


def may_see_pii(
    *, requested: bool, caller: str, delegation_token: str, allowed_callers: frozenset[str]
) -> bool:
    """Whether this call may see unmasked personal data (see the module docstring for the rule)."""
    return requested and bool(caller) and caller in allowed_callers and bool(delegation_token)


def masked_address(street: str, city: str, postal_code: str, country: str) -> str:
    """The address with street and postal code hidden: city and country are enough to route a parcel query."""
    return ", ".join(part for part in ("[redacted]" if street else "", city, country) if part)


def full_address(street: str, city: str, postal_code: str, country: str) -> str:
    """The address on one line."""
    return ", ".join(part for part in (street, f"{postal_code} {city}".strip(), country) if part)
