"""What the customer-service agents share: the ticket and article shapes, Triton access, text and PII rules.

Not an agent itself (``agentmesh agent run`` names the agents: triage, sentiment, kb_search, crm,
responder, quality_check).
"""

from __future__ import annotations

from agentmesh.agents._support._models import Article, Ticket
from agentmesh.agents._support._text import (
    PiiMatch,
    find_injection,
    find_pii,
    first_name,
    mask_email,
    mask_phone,
    redact_pii,
    split_sentences,
)
from agentmesh.agents._support._triton import TritonAgent

__all__ = [
    "Article",
    "PiiMatch",
    "Ticket",
    "TritonAgent",
    "find_injection",
    "find_pii",
    "first_name",
    "mask_email",
    "mask_phone",
    "redact_pii",
    "split_sentences",
]
