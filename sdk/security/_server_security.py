"""The per-call security check of a mesh server: who is calling (SPIFFE id), and may they call this?"""

from __future__ import annotations

import logging
from typing import Any

from cryptography import x509

from agentmesh._errors import PermissionDeniedError, UnauthenticatedError
from agentmesh._settings import Settings
from agentmesh.security._identity import _CURRENT, _INSECURE, SpiffeId
from agentmesh.security._policy import AuthzPolicy
from agentmesh.security._revocation import RevocationSet, certificate_serial, format_serial

__all__ = ["ServerSecurity", "load_policy", "server_security"]

logger = logging.getLogger(__name__)

# gRPC core sets this auth-context property when the peer certificate has exactly one spiffe:// URI SAN.
_PEER_SPIFFE_ID = "peer_spiffe_id"
_PEER_CERT = "x509_pem_cert"
_MAX_CACHED = 65_536
# Bytes of a PEM certificate's end that key the serial cache: ~54 base64 characters of the signature, then the
# END line.
_SERIAL_KEY = 80


def load_policy(settings: Settings) -> AuthzPolicy:
    """The policy named by ``settings.authz_policy_file``, else the built-in default."""
    if settings.authz_policy_file:
        return AuthzPolicy.load(settings.authz_policy_file, trust_domain=settings.trust_domain)
    return AuthzPolicy.default(settings.trust_domain)


class ServerSecurity:
    """Per-call identity and authorization checks of one server."""

    def __init__(
        self,
        settings: Settings,
        kind: str,
        name: str,
        policy: AuthzPolicy | None = None,
        *,
        allow_anonymous: bool = False,
        revocations: RevocationSet | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self._insecure = settings.insecure_dev
        # A public port (the gateway's, with require_client_auth=False): callers without a certificate pass
        # here with no identity and must be authorized by the service itself (OAuth2 bearer token).
        self._allow_anonymous = allow_anonymous
        self._trust_domain = settings.trust_domain
        self.policy = policy if policy is not None else load_policy(settings)
        # (raw peer_spiffe_id, method) -> identity, for calls already allowed: the hot path is two dict lookups.
        self._allowed: dict[tuple[bytes, str], SpiffeId] = {}
        # Revoked identities are refused before they reach that cache, which is emptied whenever the set
        # changes; revoked certificate serials are looked up per call, only while there are any.
        self.revocations = revocations if revocations is not None else RevocationSet()
        self.revocations.add_listener(self._allowed.clear)
        self._serials: dict[bytes, tuple[bytes, int]] = {}  # PEM tail -> (PEM, serial)

    def check(self, method: str, context: Any) -> None:
        """Verify the caller of ``method`` and make it :func:`current_identity`; raise a MeshError otherwise.

        Raises UnauthenticatedError when the peer presents no usable mesh identity, and
        PermissionDeniedError when the policy does not allow it to call ``method``.
        """
        if self._insecure:
            _INSECURE.set(True)
            return
        auth = context.auth_context()
        values = auth.get(_PEER_SPIFFE_ID)
        if not values:
            if self._allow_anonymous and not auth.get(_PEER_CERT):
                _CURRENT.set(None)
                return
            raise self._explain_missing_identity(auth)
        key = (values[0], method)
        identity = self._allowed.get(key)
        if identity is None:
            identity = SpiffeId.parse(values[0].decode("utf-8", "replace"), self._trust_domain)
            if identity.uri in self.revocations.ids:
                raise PermissionDeniedError(
                    f"identity {identity.uri} is revoked in this mesh; ask an operator (agentmesh agents revocations)",
                    metadata={"identity": identity.uri, "revoked": "spiffe_id"},
                )
            self.policy.check(identity.uri, method)
            if len(self._allowed) >= _MAX_CACHED:
                self._allowed.clear()
            self._allowed[key] = identity
        if self.revocations.serials:
            self._check_serial(auth, identity)
        _CURRENT.set(identity)

    def _check_serial(self, auth: dict[str, list[bytes]], identity: SpiffeId) -> None:
        # The caller's certificate serial, parsed once per certificate. The cache is keyed by the PEM's tail (the
        # end of the CA's signature, distinct per certificate) and confirmed against the whole PEM: hashing a
        # short tail costs a fraction of hashing the ~900-byte PEM that gRPC hands over afresh on every call.
        pems = auth.get(_PEER_CERT)
        if not pems:
            return
        pem = pems[0]
        entry = self._serials.get(pem[-_SERIAL_KEY:])
        if entry is None or entry[0] != pem:
            entry = (pem, certificate_serial(pem))
            if len(self._serials) >= _MAX_CACHED:
                self._serials.clear()
            self._serials[pem[-_SERIAL_KEY:]] = entry
        if entry[1] in self.revocations.serials:
            serial = format_serial(entry[1])
            raise UnauthenticatedError(
                f"the certificate of {identity.uri} (serial {serial}) is revoked; use a newly issued one",
                metadata={"identity": identity.uri, "revoked": "certificate_serial", "serial": serial},
            )

    def _explain_missing_identity(self, auth: dict[str, list[bytes]]) -> UnauthenticatedError:
        # Only on refusal: parse the certificate to say precisely what is wrong with it.
        pems = auth.get(_PEER_CERT)
        if not pems:
            return UnauthenticatedError("the call carries no client certificate; mesh servers require mTLS")
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        except ValueError:
            return UnauthenticatedError("the peer certificate cannot be parsed")
        if not uris:
            return UnauthenticatedError(
                "the peer certificate has no URI SAN; a mesh identity is exactly one spiffe://<trust-domain>/<kind>/<name>"
            )
        if len(uris) > 1:
            return UnauthenticatedError(
                f"the peer certificate has {len(uris)} URI SANs ({', '.join(uris)}); a mesh identity is exactly one"
            )
        try:
            SpiffeId.parse(uris[0], self._trust_domain)
        except UnauthenticatedError as exc:
            return exc
        return UnauthenticatedError(f"the peer identity {uris[0]!r} was not accepted by the TLS layer")


def server_security(
    settings: Settings,
    kind: str,
    name: str,
    *,
    allow_anonymous: bool = False,
    revocations: RevocationSet | None = None,
) -> ServerSecurity:
    """The identity/authorization checker for a server of ``kind``/``name``.

    ``allow_anonymous`` is for a public port only (see :class:`ServerSecurity`); mesh ports never set it.
    ``revocations`` is the set of refused identities and certificates the server follows (see
    :class:`RevocationFollower`); without it nothing is revoked.
    """
    return ServerSecurity(settings, kind, name, allow_anonymous=allow_anonymous, revocations=revocations)
