"""Signed delegation tokens: which end user a call acts for, carried from hop to hop.

A token is a JWT (ES256, via PyJWT) signed with the issuing workload's own certificate key; its ``x5c``
header carries that certificate (and any intermediates), so there is no key service: keys rotate with the
certificates. Two kinds, told apart by the ``typ`` header (explicit typing, RFC 8725 §3.11):

- ``TokenKind.END_USER`` (``typ: agentmesh-user+jwt``), minted by the gateway for the outside caller;
- ``TokenKind.STEP`` (``typ: agentmesh-step+jwt``), minted by the planner for one step, ``aud`` = the agent.

Claims: ``iss`` (the signer's SPIFFE id), ``sub`` (the end user), ``aud`` (the receiver's SPIFFE id),
``iat``/``exp``, ``jti``, ``tenant``, ``scope`` (space-separated), ``act`` (the actor chain, RFC 8693:
``{"sub": outermost, "act": {"sub": next, ...}}``) and, on step tokens, ``task_id`` and ``step_id``.

:class:`DelegationVerifier` refuses a token unless, in this order: its header is ES256 (pinned: ``none``,
HS256 and the rest are refused before any key is looked at) and of a known kind; its ``x5c`` chain verifies
against the mesh CA bundle at the current time (``cryptography.x509.verification``); the signer's SPIFFE id
is an allowed issuer of that kind; the signature, ``exp`` and ``iat`` hold (PyJWT, small leeway); ``aud`` is
exactly this workload; ``exp - iat`` is at most five minutes. Refusal reasons (``MeshError.reason``):

==========================  ==================  ================================================
reason                      error               meaning
==========================  ==================  ================================================
TOKEN_MALFORMED             Unauthenticated     not a delegation JWT, or a required claim is bad
TOKEN_ALGORITHM_REFUSED     Unauthenticated     ``alg`` is not ES256
TOKEN_SIGNER_UNTRUSTED      Unauthenticated     the ``x5c`` chain does not lead to the mesh CA
TOKEN_SIGNER_REVOKED        Unauthenticated     signed by a revoked certificate or identity
TOKEN_BAD_SIGNATURE         Unauthenticated     forged or tampered
TOKEN_EXPIRED               Unauthenticated     past ``exp`` (plus leeway)
TOKEN_NOT_YET_VALID         Unauthenticated     ``iat`` in the future (beyond leeway)
TOKEN_LIFETIME_TOO_LONG     Unauthenticated     ``exp - iat`` above the maximum
TOKEN_ISSUER_NOT_ALLOWED    PermissionDenied    a valid mesh identity that may not mint this kind
TOKEN_WRONG_AUDIENCE        PermissionDenied    minted for another workload
TOKEN_WRONG_KIND            PermissionDenied    a user token where a step token was required, etc.
TOKEN_WRONG_TASK            PermissionDenied    a step token of another task than the call's
==========================  ==================  ================================================

Verdicts are cached by the token's SHA-256 until it expires (refusals for a short while), in a bounded
map, so a repeated token costs one hash and one dict lookup. A change of the CA bundle clears the caches
on the next token that is not cached; a cached token stays accepted until it expires (at most 5 minutes),
unless its signer is revoked: with a :class:`RevocationSet` (the one the server's authorization check
follows), a token signed by a revoked certificate serial or SPIFFE id is refused at once, cached or not.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from agentmesh._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MeshError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from agentmesh._settings import Settings
from agentmesh.security._ca import ca_paths
from agentmesh.security._credentials import CredentialFiles, credential_paths
from agentmesh.security._revocation import RevocationSet, format_serial

__all__ = [
    "ALGORITHM",
    "MAX_LIFETIME_SECONDS",
    "DelegationClaims",
    "DelegationIssuer",
    "DelegationVerifier",
    "TokenKind",
]

logger = logging.getLogger(__name__)

ALGORITHM = "ES256"
MAX_LIFETIME_SECONDS = 300.0
_MAX_TOKEN_CHARS = 16_384  # a chain of two P-256 certificates and the claims fit in ~3 KB
_MAX_CHAIN = 4
_MAX_ACTORS = 16
_REFUSAL_TTL = 30.0  # seconds a refused token's verdict is kept (a forgery replayed costs a lookup)
_REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti"]


class TokenKind(enum.StrEnum):
    """Who minted a token, and for what."""

    END_USER = "user"  # minted by the gateway (spiffe://<td>/service/gateway) for the outside caller
    STEP = "step"  # minted by the planner (spiffe://<td>/service/planner) per step, aud = the chosen agent

    @property
    def typ(self) -> str:
        """The JOSE ``typ`` header of this kind."""
        return f"agentmesh-{self.value}+jwt"


_KIND_BY_TYP = {kind.typ: kind for kind in TokenKind}


@dataclass(frozen=True)
class DelegationClaims:
    """A verified delegation token."""

    kind: TokenKind
    subject: str  # sub: the end user
    tenant: str
    scopes: frozenset[str]  # scope: space-separated in the JWT
    actor_chain: tuple[str, ...]  # act (RFC 8693), outermost actor first (SPIFFE ids)
    issuer: str  # SPIFFE id of the signer (from the x5c leaf)
    audience: str  # SPIFFE id of the receiver
    task_id: str | None
    step_id: str | None
    issued_at: float
    expires_at: float
    token_id: str  # jti
    token_hash: str  # sha256 hex of the compact token
    issuer_serial: int = 0  # serial number of the signing certificate (the x5c leaf)


def default_issuers(trust_domain: str) -> dict[TokenKind, frozenset[str]]:
    """Who may mint each kind: the gateway end-user tokens, the planner step tokens."""
    return {
        TokenKind.END_USER: frozenset({f"spiffe://{trust_domain}/service/gateway"}),
        TokenKind.STEP: frozenset({f"spiffe://{trust_domain}/service/planner"}),
    }


class DelegationIssuer:
    """Signs with the workload's own certificate key (ES256), ``x5c`` = leaf (+ intermediates).

    The certificate and key are reread when their files change (rotation); a half-written rotation keeps
    the previous pair.
    """

    def __init__(self, files: CredentialFiles, *, clock: Callable[[], float] = time.time) -> None:
        self._files = files
        self._clock = clock
        self._stamp: object = None
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._x5c: list[str] = []
        self._spiffe_id = ""

    @classmethod
    def from_settings(cls, settings: Settings, kind: str, name: str) -> DelegationIssuer:
        """The issuer of workload ``kind``/``name``, signing with the credentials it serves mTLS with."""
        return cls(credential_paths(settings, kind, name))

    @property
    def spiffe_id(self) -> str:
        """The SPIFFE id tokens are signed as (the certificate's URI SAN)."""
        self._load()
        return self._spiffe_id

    def issue(
        self,
        *,
        kind: TokenKind,
        audience: str,
        subject: str,
        tenant: str,
        scopes: Iterable[str],
        actor_chain: Sequence[str] = (),
        task_id: str | None = None,
        step_id: str | None = None,
        ttl_seconds: float = 120.0,
    ) -> str:
        """A compact signed token for ``audience`` acting for ``subject``; ``INVALID_ARGUMENT`` when malformed."""
        kind = TokenKind(kind)
        if not audience.startswith("spiffe://"):
            raise InvalidArgumentError(f"audience {audience!r} must be a spiffe:// id", field="audience")
        if not subject:
            raise InvalidArgumentError("subject (the end user) is required", field="subject")
        if not 1 <= ttl_seconds <= MAX_LIFETIME_SECONDS:
            raise InvalidArgumentError(
                f"ttl_seconds must be within 1..{MAX_LIFETIME_SECONDS:g}, not {ttl_seconds:g}",
                field="ttl_seconds",
            )
        scope_set = sorted(set(scopes))
        if any(not s or any(c.isspace() for c in s) for s in scope_set):
            raise InvalidArgumentError("each scope must be a non-empty word without spaces", field="scopes")
        if kind is TokenKind.STEP and not (task_id and step_id):
            raise InvalidArgumentError("a step token needs task_id and step_id", field="task_id")
        if len(actor_chain) > _MAX_ACTORS:
            raise InvalidArgumentError(
                f"an actor chain has at most {_MAX_ACTORS} actors", field="actor_chain"
            )
        self._load()
        assert self._key is not None
        issued_at = int(self._clock())
        payload: dict[str, Any] = {
            "iss": self._spiffe_id,
            "sub": subject,
            "aud": audience,
            "iat": issued_at,
            "exp": issued_at + int(ttl_seconds),
            "jti": secrets.token_urlsafe(16),
            "tenant": tenant,
            "scope": " ".join(scope_set),
        }
        if actor_chain:
            payload["act"] = _nest_actors(actor_chain)
        if task_id:
            payload["task_id"] = task_id
        if step_id:
            payload["step_id"] = step_id
        return jwt.encode(
            payload, self._key, algorithm=ALGORITHM, headers={"typ": kind.typ, "x5c": self._x5c}
        )

    def _load(self) -> None:
        try:
            stamp = self._files.stamp()
            if stamp == self._stamp:
                return
            cert_pem, key_pem, _ = self._files.read()
        except (OSError, ValueError) as exc:
            if self._key is not None:  # mid-rotation: keep signing with the previous pair
                logger.warning("delegation issuer keeps its current key; reload failed: %s", exc)
                return
            raise FailedPreconditionError(
                f"cannot sign delegation tokens: credentials unusable: {exc}"
            ) from None
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise FailedPreconditionError(f"{self._files.key} is not a P-256 key; ES256 tokens need one")
        chain = x509.load_pem_x509_certificates(cert_pem)
        spiffe_id = _spiffe_id_of(chain[0])
        if not spiffe_id:
            raise FailedPreconditionError(f"{self._files.cert} has no single spiffe:// URI SAN to sign as")
        self._key, self._spiffe_id, self._stamp = key, spiffe_id, stamp
        self._x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]


@dataclass(frozen=True)
class _Signer:
    spiffe_id: str
    public_key: ec.EllipticCurvePublicKey
    not_before: float
    not_after: float
    serial: int = 0


@dataclass(frozen=True)
class _Verdict:
    until: float  # wall-clock seconds
    claims: DelegationClaims | None
    refusal: tuple[type[MeshError], str, str] | None = None  # (class, message, reason)


class DelegationVerifier:
    """Verifies tokens addressed to ``audience`` (this workload's SPIFFE id); see the module docstring."""

    def __init__(
        self,
        *,
        ca_file: Path,
        trust_domain: str,
        audience: str,
        issuers: Mapping[TokenKind, Collection[str]] | None = None,
        leeway_seconds: float = 5.0,
        max_lifetime_seconds: float = MAX_LIFETIME_SECONDS,
        max_cached: int = 10_000,
        revocations: RevocationSet | None = None,
    ) -> None:
        if max_cached < 1 or leeway_seconds < 0 or max_lifetime_seconds <= 0:
            raise ValueError("max_cached must be >= 1, leeway_seconds >= 0 and max_lifetime_seconds > 0")
        self.audience = audience
        self.trust_domain = trust_domain
        chosen = issuers if issuers is not None else default_issuers(trust_domain)
        self.issuers: dict[TokenKind, frozenset[str]] = {
            kind: frozenset(chosen.get(kind, ())) for kind in TokenKind
        }
        self.leeway = leeway_seconds
        self.max_lifetime = max_lifetime_seconds
        self.max_cached = max_cached
        # Revoked signers (the set the server's authorization check follows); None: nothing is revoked.
        self.revocations = revocations
        self._ca_file = Path(ca_file)
        self._ca_stamp: tuple[int, int, int] | None = None
        self._store: verification.Store | None = None
        self._verdicts: dict[bytes, _Verdict] = {}
        self._signers: dict[tuple[str, ...], _Signer] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, audience: str, *, revocations: RevocationSet | None = None
    ) -> DelegationVerifier:
        """A verifier for tokens addressed to ``audience``, trusting the mesh CA bundle of ``settings``, refusing
        the signers in ``revocations``."""
        ca_file = Path(settings.ca_file) if settings.ca_file else ca_paths(settings.home)[0]
        return cls(
            ca_file=ca_file, trust_domain=settings.trust_domain, audience=audience, revocations=revocations
        )

    def __len__(self) -> int:
        return len(self._verdicts)

    def verify(
        self, token: str, *, kind: TokenKind | None = None, task_id: str | None = None
    ) -> DelegationClaims:
        """The verified claims of ``token``; raises UnauthenticatedError or PermissionDeniedError.

        ``kind``: the kind required (any when None). ``task_id``: the task of the call; a token bound to a
        task (a step token) must be bound to this one, an end-user token (bound to none) passes.
        """
        if len(token) > _MAX_TOKEN_CHARS:
            raise UnauthenticatedError(
                f"delegation token of {len(token)} characters is over the {_MAX_TOKEN_CHARS} limit",
                reason="TOKEN_MALFORMED",
            )
        digest = hashlib.sha256(token.encode()).digest()
        verdict = self._verdicts.get(digest)
        now = time.time()
        if verdict is None or verdict.until <= now:
            verdict = self._judge(token, digest, now)
        if verdict.claims is None:
            assert verdict.refusal is not None
            error_class, message, reason = verdict.refusal
            raise error_class(message, reason=reason)
        claims = verdict.claims
        revoked = self.revocations
        if revoked is not None and (revoked.ids or revoked.serials):
            self._check_signer(claims, revoked)
        if kind is not None and claims.kind is not kind:
            raise PermissionDeniedError(
                f"a {kind.value} token is required here, not a {claims.kind.value} token",
                reason="TOKEN_WRONG_KIND",
            )
        if task_id is not None and claims.task_id is not None and claims.task_id != task_id:
            raise PermissionDeniedError(
                f"the delegation token is for task {claims.task_id!r}, not this call's task {task_id!r}",
                reason="TOKEN_WRONG_TASK",
            )
        return claims

    @staticmethod
    def _check_signer(claims: DelegationClaims, revoked: RevocationSet) -> None:
        """Refuse a token whose signing certificate or identity was revoked (after it was issued, too)."""
        if claims.issuer_serial in revoked.serials:
            raise UnauthenticatedError(
                f"the delegation token was signed by a revoked certificate of {claims.issuer} "
                f"(serial {format_serial(claims.issuer_serial)})",
                reason="TOKEN_SIGNER_REVOKED",
            )
        if claims.issuer in revoked.ids:
            raise UnauthenticatedError(
                f"the delegation token was signed by {claims.issuer}, which is revoked in this mesh",
                reason="TOKEN_SIGNER_REVOKED",
            )

    def _judge(self, token: str, digest: bytes, now: float) -> _Verdict:
        try:
            claims, until = self._verify_uncached(token, digest.hex(), now)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            verdict = _Verdict(
                until=now + _REFUSAL_TTL, claims=None, refusal=(type(exc), exc.message, exc.reason)
            )
            if exc.reason != "TOKEN_NOT_YET_VALID":  # that one may turn valid within the refusal TTL
                self._remember(digest, verdict, now)
            return verdict
        verdict = _Verdict(until=until, claims=claims)
        self._remember(digest, verdict, now)
        return verdict

    def _remember(self, digest: bytes, verdict: _Verdict, now: float) -> None:
        if len(self._verdicts) >= self.max_cached:
            self._verdicts = {k: v for k, v in self._verdicts.items() if v.until > now}
            # Still full of live verdicts: drop the oldest eighth (insertion order) rather than one per insert.
            excess = len(self._verdicts) - self.max_cached * 7 // 8
            for key in list(self._verdicts)[: max(0, excess)]:
                del self._verdicts[key]
        self._verdicts[digest] = verdict

    def _verify_uncached(self, token: str, token_hash: str, now: float) -> tuple[DelegationClaims, float]:
        """The claims, and until when they may be cached (the token's or the certificate's end)."""
        header = _peek_header(token)
        algorithm = header.get("alg")
        if algorithm != ALGORITHM:
            raise UnauthenticatedError(
                f"delegation token algorithm {str(algorithm)[:20]!r} is refused; only {ALGORITHM} is accepted",
                reason="TOKEN_ALGORITHM_REFUSED",
            )
        kind = _KIND_BY_TYP.get(str(header.get("typ")))
        if kind is None:
            raise _malformed(f"typ {str(header.get('typ'))[:40]!r} is not a delegation token type")
        signer = self._signer(header.get("x5c"), now)
        if signer.spiffe_id not in self.issuers[kind]:
            raise PermissionDeniedError(
                f"{signer.spiffe_id} may not issue {kind.value} delegation tokens",
                reason="TOKEN_ISSUER_NOT_ALLOWED",
                metadata={"issuer": signer.spiffe_id},
            )
        payload = self._decode(token, signer)
        if payload["aud"] != self.audience:
            raise PermissionDeniedError(
                f"the delegation token is addressed to {str(payload['aud'])[:200]!r}, not to {self.audience}",
                reason="TOKEN_WRONG_AUDIENCE",
            )
        if payload["iss"] != signer.spiffe_id:
            raise _malformed("iss does not name the certificate that signed the token")
        lifetime = _number(payload, "exp") - _number(payload, "iat")
        if lifetime > self.max_lifetime + self.leeway:
            raise UnauthenticatedError(
                f"the delegation token lives {lifetime:g} s; at most {self.max_lifetime:g} s is accepted",
                reason="TOKEN_LIFETIME_TOO_LONG",
            )
        claims = _claims(payload, kind, signer, token_hash)
        return claims, min(claims.expires_at, signer.not_after)

    def _decode(self, token: str, signer: _Signer) -> dict[str, Any]:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                signer.public_key,
                algorithms=[ALGORITHM],
                leeway=self.leeway,
                options={"require": _REQUIRED_CLAIMS, "verify_aud": False},  # aud: exact match below
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the delegation token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError(
                "the delegation token is not valid yet (iat in the future)", reason="TOKEN_NOT_YET_VALID"
            ) from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError(
                "the delegation token's signature does not match its certificate",
                reason="TOKEN_BAD_SIGNATURE",
            ) from None
        except jwt.InvalidTokenError as exc:
            raise _malformed(f"the delegation token is malformed: {exc}") from None
        return payload

    def _signer(self, x5c: object, now: float) -> _Signer:
        if (
            not isinstance(x5c, list)
            or not 1 <= len(x5c) <= _MAX_CHAIN
            or not all(isinstance(c, str) for c in x5c)
        ):
            raise _malformed(f"x5c must list 1 to {_MAX_CHAIN} base64 certificates, leaf first")
        chain = tuple(x5c)
        store = self._trust_store()  # first: a changed bundle clears the signer cache
        signer = self._signers.get(chain)
        if signer is not None and signer.not_before <= now < signer.not_after:
            return signer
        try:
            certificates = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain]
        except (ValueError, binascii.Error):
            raise _malformed("x5c holds something that is not a DER certificate") from None
        verifier = verification.PolicyBuilder().store(store).time(datetime.fromtimestamp(now, UTC))
        try:
            verifier.build_client_verifier().verify(certificates[0], certificates[1:])
        except verification.VerificationError as exc:
            raise UnauthenticatedError(
                f"the delegation token's certificate chain does not lead to the mesh CA: {exc}",
                reason="TOKEN_SIGNER_UNTRUSTED",
            ) from None
        leaf = certificates[0]
        spiffe_id = _spiffe_id_of(leaf)
        public_key = leaf.public_key()
        if not spiffe_id or not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise _malformed("the signing certificate has no single spiffe:// id or no EC key")
        signer = _Signer(
            spiffe_id,
            public_key,
            leaf.not_valid_before_utc.timestamp(),
            leaf.not_valid_after_utc.timestamp(),
            leaf.serial_number,
        )
        if len(self._signers) >= 1024:  # signers are few (gateway and planner replicas); bound anyway
            self._signers.clear()
        self._signers[chain] = signer
        return signer

    def _trust_store(self) -> verification.Store:
        try:
            stat = self._ca_file.stat()
        except OSError:
            raise UnauthenticatedError(
                f"no mesh CA bundle at {self._ca_file} to verify delegation tokens against",
                reason="TOKEN_SIGNER_UNTRUSTED",
            ) from None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._store is None or stamp != self._ca_stamp:
            self._store = verification.Store(x509.load_pem_x509_certificates(self._ca_file.read_bytes()))
            if self._ca_stamp is not None:
                self._verdicts.clear()
                self._signers.clear()
            self._ca_stamp = stamp
        return self._store


def _peek_header(token: str) -> dict[str, Any]:
    """The (unverified) JOSE header, read only to pick the key; PyJWT then parses and verifies the token.

    Not ``jwt.get_unverified_header``: PyJWT (2.15) checks every base64url character in Python, ~0.35 µs
    each, and the ``x5c`` header makes a token ~1.7 KB, so a second full parse would double a cold verify.
    A strict decoder here (``validate=True``) reads the same bytes PyJWT signs over, or fails.
    """
    segment = token.partition(".")[0]
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
        header = json.loads(raw)
    except (ValueError, binascii.Error):
        raise _malformed("the delegation token is not a JWT (its header is not base64url JSON)") from None
    if token.count(".") != 2 or not isinstance(header, dict):
        raise _malformed("the delegation token is not a compact JWS (header.payload.signature)")
    return header


def _malformed(message: str) -> UnauthenticatedError:
    return UnauthenticatedError(message, reason="TOKEN_MALFORMED")


def _spiffe_id_of(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    return uris[0] if len(uris) == 1 else ""


def _nest_actors(actor_chain: Sequence[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {"sub": actor_chain[-1]}
    for actor in reversed(actor_chain[:-1]):
        nested = {"sub": actor, "act": nested}
    return nested


def _actors(act: object) -> tuple[str, ...]:
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str) or len(chain) >= _MAX_ACTORS:
            raise _malformed(f"act must nest at most {_MAX_ACTORS} {{'sub': ...}} objects")
        chain.append(act["sub"])
        act = act.get("act")
    return tuple(chain)


def _number(payload: Mapping[str, Any], claim: str) -> float:
    value = payload.get(claim)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"{claim} must be a number")
    return float(value)


def _string(payload: Mapping[str, Any], claim: str, *, required: bool) -> str | None:
    value = payload.get(claim)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _malformed(f"{claim} must be a{' non-empty' if required else ''} string")
    return value


def _claims(
    payload: Mapping[str, Any], kind: TokenKind, signer: _Signer, token_hash: str
) -> DelegationClaims:
    step = kind is TokenKind.STEP
    scope = _string(payload, "scope", required=False) or ""
    return DelegationClaims(
        kind=kind,
        subject=_string(payload, "sub", required=True) or "",
        tenant=_string(payload, "tenant", required=False) or "",
        scopes=frozenset(scope.split()),
        actor_chain=_actors(payload.get("act")),
        issuer=signer.spiffe_id,
        audience=str(payload["aud"]),
        task_id=_string(payload, "task_id", required=step),
        step_id=_string(payload, "step_id", required=step),
        issued_at=_number(payload, "iat"),
        expires_at=_number(payload, "exp"),
        token_id=_string(payload, "jti", required=True) or "",
        token_hash=token_hash,
        issuer_serial=signer.serial,
    )
