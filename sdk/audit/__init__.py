"""The audit trail: PII redaction, the hash-chained append, verification and AuditService."""
