"""Mesh security: CA and workload certificates, mTLS credentials, SPIFFE identity, authorization.

- :class:`CertificateAuthority` issues certificates whose only URI SAN is ``spiffe://<td>/<kind>/<name>``.
- :func:`add_port` / :func:`channel_credentials` give servers and clients mTLS from files that are reread
  when they change (rotation without restart).
- :func:`server_security` returns the per-call check the server interceptor runs: it verifies the
  caller's SPIFFE identity, refuses revoked identities and certificates (:class:`RevocationSet`, kept
  equal to the registry's by a :class:`RevocationFollower`), applies the :class:`AuthzPolicy`, and makes
  the caller available to handlers as :func:`current_identity`.
- :class:`DelegationIssuer` / :class:`DelegationVerifier` mint and check signed delegation tokens (ES256 JWTs
  signed with a workload's own certificate key, chain in ``x5c``) that carry the end user across hops.
"""

from __future__ import annotations

from agentmesh.security._ca import (
    CertificateAuthority,
    IssuedCertificate,
    ca_paths,
    workload_paths,
    write_private_file,
    write_public_file,
)
from agentmesh.security._credentials import CredentialFiles, add_port, channel_credentials, credential_paths
from agentmesh.security._delegation import (
    DelegationClaims,
    DelegationIssuer,
    DelegationVerifier,
    TokenKind,
)
from agentmesh.security._identity import SpiffeId, agent_spiffe_id, current_identity, require_identity
from agentmesh.security._policy import AuthzPolicy, AuthzRule
from agentmesh.security._revocation import (
    RevocationFollower,
    RevocationSet,
    certificate_serial,
    format_serial,
    parse_serial,
    peer_certificate_serial,
)
from agentmesh.security._server_security import ServerSecurity, load_policy, server_security

__all__ = [
    "AuthzPolicy",
    "AuthzRule",
    "CertificateAuthority",
    "CredentialFiles",
    "DelegationClaims",
    "DelegationIssuer",
    "DelegationVerifier",
    "IssuedCertificate",
    "RevocationFollower",
    "RevocationSet",
    "ServerSecurity",
    "SpiffeId",
    "TokenKind",
    "add_port",
    "agent_spiffe_id",
    "ca_paths",
    "certificate_serial",
    "channel_credentials",
    "credential_paths",
    "current_identity",
    "format_serial",
    "load_policy",
    "parse_serial",
    "peer_certificate_serial",
    "require_identity",
    "server_security",
    "workload_paths",
    "write_private_file",
    "write_public_file",
]
