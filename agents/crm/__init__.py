"""crm agent: customer lookup with personal data masked unless the caller may see it (``pii:restricted``)."""

from __future__ import annotations

from agentmesh.agents.crm._privacy import PII_SCOPE, may_see_pii, pii_refusal, planner_identity
from agentmesh.agents.crm._store import CrmStore
from agentmesh.agents.crm.agent import (
    REFUSED_TOKENS,
    CrmAgent,
    Customer,
    LookupInput,
    LookupOutput,
    Order,
    customer_view,
)

__all__ = [
    "PII_SCOPE",
    "REFUSED_TOKENS",
    "CrmAgent",
    "CrmStore",
    "Customer",
    "LookupInput",
    "LookupOutput",
    "Order",
    "customer_view",
    "may_see_pii",
    "pii_refusal",
    "planner_identity",
]
