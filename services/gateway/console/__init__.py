"""The mesh console: a web UI (marketplace, task explanations, approvals) served beside the gateway.

It reads through the gateway's public gRPC port with the caller's own bearer token, so authorization,
scopes, rate limits and audit are the gateway's; the console holds no credentials of its own.
"""
