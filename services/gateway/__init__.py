"""The gateway: the only door for outside callers (``python -m agentmesh.services.gateway``).

server.py builds it (public TLS port, no client certificates); auth.py verifies bearer JWTs against a JWKS;
gate.py admits a call (token, scope, rate, size) and writes the audit record of every refusal and write;
limits.py holds the token buckets; validation.py and screening.py check input before it goes anywhere;
servicer.py forwards TaskService, ConversationService, AuditService and read-only RegistryService over mTLS;
devtokens.py is the dev issuer behind ``agentmesh token issue``.
"""
