"""The audit trail: PII redaction, the hash-chained append, verification and AuditService.

- :func:`redact` / :func:`redact_json` replace emails, phone numbers, card numbers and street addresses
  with markers (emails and phone numbers with keyed :class:`Pseudonyms` where the mesh has a secret);
  :class:`RedactingFilter` does it to log records. Use them before anything is stored or logged.
- :func:`append_audit` appends :class:`AuditEntry` records inside the caller's transaction (the planner's
  step and approval transactions); :class:`AuditLog` appends in transactions of its own with group commit.
- :func:`verify_chain` recomputes the chain (RFC 8785 JSON, SHA-256; see ``_chain``) and names the first
  broken record; :class:`AuditServicer` serves both reads as ``AuditService``.
"""

from __future__ import annotations

from agentmesh.audit._append import CHAIN_LOCK_KEY, AuditEntry, AuditLog, append_audit
from agentmesh.audit._chain import GENESIS_HASH, canonical_record, format_record_time, record_hash
from agentmesh.audit._pseudonyms import PSEUDONYM_KEY_NAME, Pseudonyms, ensure_pseudonym_key, is_pseudonym
from agentmesh.audit._redact import (
    PII_MARKERS,
    RedactingFilter,
    contains_pii,
    install_log_redaction,
    luhn_valid,
    redact,
    redact_json,
)
from agentmesh.audit._servicer import AuditServicer, record_to_proto
from agentmesh.audit._verify import ChainVerification, verify_chain

__all__ = [
    "CHAIN_LOCK_KEY",
    "GENESIS_HASH",
    "PII_MARKERS",
    "PSEUDONYM_KEY_NAME",
    "AuditEntry",
    "AuditLog",
    "AuditServicer",
    "ChainVerification",
    "Pseudonyms",
    "RedactingFilter",
    "append_audit",
    "canonical_record",
    "contains_pii",
    "ensure_pseudonym_key",
    "format_record_time",
    "install_log_redaction",
    "is_pseudonym",
    "luhn_valid",
    "record_hash",
    "record_to_proto",
    "redact",
    "redact_json",
    "verify_chain",
]
