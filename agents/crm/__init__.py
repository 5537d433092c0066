"""crm agent: customer lookup with personal data masked unless the caller may see it (``pii:restricted``)."""

from __future__ import annotations

from agentmesh.agents.crm._privacy import may_see_pii, planner_identity
from agentmesh.agents.crm._store import CrmStore
from agentmesh.agents.crm.agent import CrmAgent, Customer, LookupInput, LookupOutput, Order, customer_view

__all__ = [
    "CrmAgent",
    "CrmStore",
    "Customer",
    "LookupInput",
    "LookupOutput",
    "Order",
    "customer_view",
    "may_see_pii",
    "planner_identity",
]
