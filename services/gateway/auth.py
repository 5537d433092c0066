"""Who an outside caller is: an OAuth2 bearer JWT verified against a JWKS, and what its scopes allow.

The token is verified with PyJWT: the ``alg`` header must be one of the pinned algorithms (so ``none`` and
HS256 keyed with a public key are refused before any key is touched), the key is the JWKS key named by
``kid`` (the JWKS is a file or a URL, cached, refetched when a new ``kid`` appears: key rotation), and the
signature, ``iss``, ``aud``, ``exp`` and ``nbf`` must hold within a small leeway. Any failure is
UNAUTHENTICATED; a valid token lacking the scope an RPC needs is PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from agentmesh._errors import PermissionDeniedError, UnauthenticatedError
from agentmesh._settings import Settings

__all__ = [
    "PERMISSIONS",
    "JwksCache",
    "Principal",
    "TokenVerifier",
    "bearer_token",
    "default_jwks_source",
]

logger = logging.getLogger(__name__)

# Scopes are permissions by name; a token grants exactly the permissions its `scope` claim lists.
PERMISSIONS = (
    "agents:read",
    "approve",
    "audit:read",
    "conversations:read",
    "conversations:write",
    "tasks:read",
    "tasks:submit",
)
_REFUSED_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})
_LEEWAY_SECONDS = 10.0
_MAX_TOKEN_CHARS = 8_192
_MAX_CACHED = 65_536
_DEFAULT_TENANT = "default"
# The widths of the columns a subject and a tenant are stored in (tasks, conversations, audit): a longer one
# would pass here and fail the INSERT (INTERNAL) further in.
MAX_SUBJECT_CHARS = 512
MAX_TENANT_CHARS = 128
_TIME_CLAIMS = ("exp", "nbf", "iat")


def default_jwks_source(settings: Settings) -> str:
    """``settings.gateway_jwks``, else the dev JWKS that ``agentmesh token issue`` writes under ``home``."""
    return settings.gateway_jwks or str(settings.home / "dev-jwks" / "jwks.json")


@dataclass(frozen=True)
class Principal:
    """A verified outside caller."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    expires_at: float
    token_id: str = ""

    @property
    def key(self) -> str:
        """``tenant/subject``: the rate-limit and audit name of this caller."""
        return f"{self.tenant}/{self.subject}"

    def require(self, permission: str, method: str) -> None:
        """Raise PermissionDeniedError unless the token's scopes grant ``permission``."""
        if permission not in self.scopes:
            raise PermissionDeniedError(
                f"the token of {self.subject!r} lacks scope {permission!r}, which {method} needs",
                reason="MISSING_SCOPE",
                metadata={"scope": permission, "method": method},
            )


class JwksCache:
    """The signing keys by ``kid``, from a JWKS file (reread when it changes) or URL (cached for ``ttl``).

    An unknown ``kid`` triggers one refetch (rotation: the issuer published a new key), at most once per
    ``min_refresh`` seconds so a flood of made-up key ids cannot hammer the JWKS endpoint.
    """

    def __init__(
        self,
        source: str,
        *,
        ttl: float = 300.0,
        min_refresh: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = float("-inf")
        self._loads = 0  # attempts so far: a call that queued behind a refetch sees it and does not repeat it
        self._stamp: tuple[int, int, int] | None = None
        self._lock = asyncio.Lock()

    @property
    def _is_url(self) -> bool:
        return self.source.startswith(("https://", "http://"))

    def _fetch(self) -> Mapping[str, Any]:
        document: Mapping[str, Any]  # a JWK set: {"keys": [...]}
        if self._is_url:
            with urllib.request.urlopen(self.source, timeout=5.0) as response:
                document = json.loads(response.read(1_000_000))
        else:
            document = json.loads(Path(self.source).read_text(encoding="utf-8"))
        return document

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.source)
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _stale(self) -> bool:
        if self._is_url:
            return self._clock() - self._loaded_at > self._ttl
        return self._file_stamp() != self._stamp

    async def _refresh(self, seen: int) -> None:
        """Reload the keys, unless another call did since its caller saw ``seen`` loads: calls that queued
        on the lock behind one refetch share it instead of each fetching again."""
        async with self._lock:
            if self._loads != seen:
                return
            stamp = None if self._is_url else self._file_stamp()
            try:
                document = await asyncio.to_thread(self._fetch)
                keys = {}
                for raw in document.get("keys", []):
                    if raw.get("use", "sig") != "sig" or "kid" not in raw:
                        continue
                    try:
                        keys[str(raw["kid"])] = jwt.PyJWK.from_dict(raw)
                    except jwt.PyJWTError:
                        continue  # a key type this PyJWT cannot use is skipped, not fatal
            except (OSError, ValueError) as exc:
                # The source may be a URL with credentials, the error an internal path: they go to the log
                # (credentials stripped), never to the outside caller.
                logger.warning("the gateway cannot load its JWKS from %s: %s", _without_userinfo(self.source), exc)
                if not self._keys:
                    raise UnauthenticatedError(
                        "the gateway cannot verify tokens right now (its JWKS is unavailable); retry shortly",
                        reason="JWKS_UNAVAILABLE",
                    ) from None
                return  # keep serving with the keys we have
            finally:
                self._loaded_at = self._clock()
                self._loads += 1
            self._keys, self._stamp = keys, stamp

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``; raises UnauthenticatedError when the JWKS has no such key."""
        if self._stale():
            await self._refresh(self._loads)
        found = self._keys.get(kid)
        seen = self._loads
        if found is None and self._clock() - self._loaded_at >= self._min_refresh:
            await self._refresh(seen)
            found = self._keys.get(kid)
        if found is None:
            raise UnauthenticatedError(f"the token's signing key {kid!r} is not in the JWKS", reason="UNKNOWN_KEY")
        return found


def _without_userinfo(source: str) -> str:
    """``source`` with any ``user:password@`` of a URL removed."""
    parts = urllib.parse.urlsplit(source)
    if not parts.netloc or "@" not in parts.netloc:
        return source
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def bearer_token(metadata: Mapping[str, str | bytes] | None) -> str:
    """The token of the ``authorization: Bearer <token>`` header; UnauthenticatedError when absent."""
    value = (metadata or {}).get("authorization", "")
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError(
            "the call carries no bearer token: send `authorization: Bearer <JWT>` "
            "(a dev token: `agentmesh token issue`)",
            reason="MISSING_TOKEN",
        )
    return token.strip()


class TokenVerifier:
    """Verifies bearer JWTs; verdicts are cached by the token's hash until it expires or its key leaves the JWKS."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        leeway: float = _LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        refused = sorted(set(algorithms) & _REFUSED_ALGORITHMS)
        if refused or not algorithms:
            raise ValueError(f"the gateway's pinned algorithms must be asymmetric, not {refused or 'empty'}")
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, str]] = {}  # token hash -> (caller, kid of the signing key)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """A verifier configured by the ``gateway_*`` settings."""
        algorithms = [a.strip() for a in settings.gateway_jwt_algorithms.split(",") if a.strip()]
        return cls(
            JwksCache(default_jwks_source(settings), ttl=settings.gateway_jwks_ttl),
            issuer=settings.gateway_jwt_issuer,
            audience=settings.gateway_jwt_audience,
            algorithms=algorithms,
        )

    async def verify(self, token: str) -> Principal:
        """The caller the token names; UnauthenticatedError when it is not a valid token for this gateway."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise UnauthenticatedError("the bearer token is too long to be one of ours", reason="TOKEN_MALFORMED")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            principal, kid = cached
            if principal.expires_at + self._leeway > now:
                try:
                    await self._jwks.key(kid)  # a key withdrawn from the JWKS (compromised) ends its tokens
                except UnauthenticatedError:
                    self._cache.pop(digest, None)
                    raise
                return principal
            del self._cache[digest]
        principal, kid = await self._verify_uncached(token)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (principal, kid)
        return principal

    async def _verify_uncached(self, token: str) -> tuple[Principal, str]:
        """The caller a token names, and the kid of the key that signed it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"the bearer token is not a JWT: {exc}", reason="TOKEN_MALFORMED") from None
        algorithm = str(header.get("alg", ""))
        if algorithm not in self._algorithms:
            raise UnauthenticatedError(
                f"the token's algorithm {algorithm!r} is not accepted (pinned: {', '.join(sorted(self._algorithms))})",
                reason="TOKEN_ALGORITHM_REFUSED",
            )
        kid = str(header.get("kid", ""))
        key = await self._jwks.key(kid)
        if key.algorithm_name != algorithm:
            raise UnauthenticatedError(
                f"the token says {algorithm} but its key {key.key_id!r} is for {key.algorithm_name}",
                reason="TOKEN_ALGORITHM_REFUSED",
            )
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the bearer token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError("the bearer token is not valid yet (nbf/iat)", reason="TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(
                f"the bearer token is not for this gateway (audience must be {self._audience!r})",
                reason="TOKEN_WRONG_AUDIENCE",
            ) from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError(
                f"the bearer token is from another issuer (expected {self._issuer!r})", reason="TOKEN_WRONG_ISSUER"
            ) from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("the bearer token's signature does not verify", reason="TOKEN_BAD_SIGNATURE") from None
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"the bearer token is invalid: {exc}", reason="TOKEN_MALFORMED") from None
        return _principal(claims), kid


def _principal(claims: Mapping[str, Any]) -> Principal:
    raw_scopes = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw_scopes, str):
        scopes = raw_scopes.split()
    elif isinstance(raw_scopes, list) and all(isinstance(s, str) for s in raw_scopes):
        scopes = raw_scopes
    else:  # a number or an object is not a scope list: refused, not guessed at (nor an INTERNAL error)
        raise UnauthenticatedError(
            "the bearer token's scope claim is neither a space-separated string nor a list of strings",
            reason="TOKEN_MALFORMED",
        )
    for name in _TIME_CLAIMS:
        # RFC 7519 NumericDate: a JSON number. PyJWT takes anything int() takes, such as "1735689600".
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UnauthenticatedError(
                f"the bearer token's {name} claim is not a number (NumericDate)", reason="TOKEN_MALFORMED"
            )
    tenant = claims.get("tenant") or claims.get("tid") or _DEFAULT_TENANT
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise UnauthenticatedError("the bearer token has no subject", reason="TOKEN_MALFORMED")
    if not isinstance(tenant, str):
        raise UnauthenticatedError("the bearer token's tenant claim is not a string", reason="TOKEN_MALFORMED")
    # The subject and tenant are stored and logged as the end user's name: no NUL (PostgreSQL text cannot hold
    # it), no control characters (forged log lines), and no longer than their columns.
    for name, value, limit in (("sub", subject, MAX_SUBJECT_CHARS), ("tenant", tenant, MAX_TENANT_CHARS)):
        if len(value) > limit or not value.isprintable():
            raise UnauthenticatedError(
                f"the bearer token's {name} claim must be at most {limit} printable characters",
                reason="TOKEN_MALFORMED",
            )
    return Principal(
        subject=subject,
        tenant=str(tenant),
        scopes=frozenset(scopes),
        expires_at=float(claims["exp"]),
        token_id=str(claims.get("jti", "")),
    )
