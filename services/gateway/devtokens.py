"""A development OAuth2 issuer: an ES256 key and its JWKS under ``<home>/dev-jwks/``, and tokens signed by it.

``agentmesh token issue`` uses it so a local mesh can be called through the gateway without an identity
provider; the gateway reads the same ``jwks.json`` by default. Production points ``AGENTMESH_GATEWAY_JWKS``
at the real provider's JWKS instead; nothing here is used then.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh._settings import Settings
from agentmesh.security import write_private_file, write_public_file

__all__ = ["DevIssuer"]

_ALGORITHM = "ES256"


class DevIssuer:
    """The dev signing key (made on first use, 0600) and the JWKS that publishes its public half."""

    def __init__(self, directory: Path, *, issuer: str, audience: str) -> None:
        self.directory = directory
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_settings(cls, settings: Settings) -> DevIssuer:
        """The dev issuer of the mesh at ``settings.home`` with the gateway's issuer and audience."""
        return cls(
            settings.home / "dev-jwks", issuer=settings.gateway_jwt_issuer, audience=settings.gateway_jwt_audience
        )

    @property
    def key_path(self) -> Path:
        """The private signing key (PEM)."""
        return self.directory / "signing-key.pem"

    @property
    def jwks_path(self) -> Path:
        """The public JWKS the gateway verifies with."""
        return self.directory / "jwks.json"

    def _key(self) -> tuple[ec.EllipticCurvePrivateKey, str]:
        if not self.key_path.exists():
            self.rotate()
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, _kid(key)

    def rotate(self) -> str:
        """Make a new signing key; the JWKS keeps the previous key too, so tokens already issued still verify."""
        key = ec.generate_private_key(ec.SECP256R1())
        previous = []
        if self.jwks_path.exists():
            previous = json.loads(self.jwks_path.read_text())["keys"][-1:]
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": _kid(key), "use": "sig", "alg": _ALGORITHM})
        write_private_file(
            self.key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        write_public_file(self.jwks_path, json.dumps({"keys": [*previous, jwk]}, indent=2).encode())
        return str(jwk["kid"])

    def issue(
        self,
        *,
        subject: str,
        scopes: Iterable[str],
        tenant: str = "default",
        ttl_seconds: float = 3600.0,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """A signed access token for ``subject`` with ``scopes`` (space-separated in the ``scope`` claim)."""
        key, kid = self._key()
        now = int(time.time())
        claims = {
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "sub": subject,
            "tenant": tenant,
            "scope": " ".join(sorted(set(scopes))),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_seconds),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, key, algorithm=_ALGORITHM, headers={"kid": kid})


def _kid(key: ec.EllipticCurvePrivateKey) -> str:
    # A thumbprint of the public key, shortened: stable per key, different after rotation.
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(public).hexdigest()[:16]
