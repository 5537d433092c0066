"""SPIFFE workload identities (``spiffe://<trust-domain>/<kind>/<name>``) and the caller of the current call."""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field

from agentmesh._errors import InvalidArgumentError, PermissionDeniedError, UnauthenticatedError

__all__ = ["KINDS", "SpiffeId", "agent_spiffe_id", "current_identity", "require_identity"]

KINDS = ("service", "agent", "client")

_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
# An agent's name is its card's ``namespace/name``: two DNS labels, as the registry validates them.
_AGENT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def agent_spiffe_id(trust_domain: str, namespace: str, name: str) -> str:
    """The SPIFFE id an agent must present: ``spiffe://<td>/agent/<namespace>/<name>``, derived from its card."""
    return f"spiffe://{trust_domain}/agent/{namespace}/{name}"


@dataclass(frozen=True)
class SpiffeId:
    """A mesh workload identity; an agent's ``name`` is ``namespace/name`` (its card's)."""

    trust_domain: str
    kind: str
    name: str
    uri: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.check_trust_domain(self.trust_domain)
        if self.kind not in KINDS:
            raise InvalidArgumentError(
                f"identity kind must be one of {', '.join(KINDS)}, not {self.kind!r}", field="kind"
            )
        if self.kind == "agent":
            if not _AGENT_NAME.fullmatch(self.name):
                raise InvalidArgumentError(
                    f"agent name {self.name!r} must be NAMESPACE/NAME (two DNS labels), as on the agent's card",
                    field="name",
                )
        elif not _NAME.fullmatch(self.name):
            raise InvalidArgumentError(
                f"workload name {self.name!r} must be 1-128 letters, digits, '.', '_' or '-'", field="name"
            )
        if not self.uri:
            object.__setattr__(self, "uri", f"spiffe://{self.trust_domain}/{self.kind}/{self.name}")

    @staticmethod
    def check_trust_domain(trust_domain: str) -> None:
        """Raise InvalidArgumentError unless ``trust_domain`` is a valid SPIFFE trust domain name."""
        if not _TRUST_DOMAIN.fullmatch(trust_domain):
            raise InvalidArgumentError(
                f"trust domain {trust_domain!r} must be lowercase letters, digits, '.', '_' or '-'",
                field="trust_domain",
            )

    @classmethod
    def parse(cls, uri: str, trust_domain: str | None = None) -> SpiffeId:
        """Parse ``uri``; raises UnauthenticatedError unless it is a mesh identity (in ``trust_domain`` if given)."""
        if not uri.startswith("spiffe://"):
            raise UnauthenticatedError(f"peer identity {uri!r} is not a spiffe:// URI")
        parts = uri[len("spiffe://") :].split("/", 2)
        if len(parts) != 3:
            raise UnauthenticatedError(f"peer identity {uri!r} is not spiffe://<trust-domain>/<kind>/<name>")
        domain, kind, name = parts  # an agent's name is namespace/name
        if trust_domain is not None and domain != trust_domain:
            raise UnauthenticatedError(f"peer identity {uri!r} is not in trust domain {trust_domain!r}")
        try:
            return cls(domain, kind, name, uri)
        except InvalidArgumentError as exc:
            raise UnauthenticatedError(f"peer identity {uri!r} is malformed: {exc.message}") from None

    @property
    def hostname(self) -> str:
        """``<name>.<kind>.<trust-domain>``: the DNS SAN the mesh CA puts beside the SPIFFE id.

        An agent's ``namespace/name`` reads ``name.namespace``. Clients of a replicated service verify this
        name (``grpc.ssl_target_name_override``) instead of the address they dialled, so any replica address
        works. The CA binds it one-to-one to the SPIFFE id (the kind is the label before the fixed trust
        domain) and refuses it as a free-form DNS SAN.
        """
        return ".".join((*reversed(self.name.split("/")), self.kind, self.trust_domain)).lower()

    def __str__(self) -> str:
        return self.uri


# Set by the server's security check for the duration of one call (each aio call runs in its own task).
_CURRENT: contextvars.ContextVar[SpiffeId | None] = contextvars.ContextVar(
    "agentmesh_peer_identity", default=None
)
# True while handling a call of a server running under --insecure-dev (no identities exist there).
_INSECURE: contextvars.ContextVar[bool] = contextvars.ContextVar("agentmesh_insecure_dev", default=False)


def current_identity() -> SpiffeId | None:
    """The verified identity of the caller of the RPC being handled (None under --insecure-dev)."""
    return _CURRENT.get()


def require_identity(expected_spiffe_id: str) -> SpiffeId | None:
    """Return the caller's identity if it is ``expected_spiffe_id``; otherwise raise PermissionDeniedError.

    Used for ownership checks, e.g. the registry refusing an agent that registers a card whose
    ``spiffe_id`` is not its own. Under --insecure-dev (no identities at all) it allows and returns None.
    """
    caller = _CURRENT.get()
    if caller is None:
        if _INSECURE.get():
            return None
        raise PermissionDeniedError(
            f"this operation needs the caller to be {expected_spiffe_id!r}, but the call carries no verified identity",
            metadata={"expected": expected_spiffe_id},
        )
    if caller.uri != expected_spiffe_id:
        raise PermissionDeniedError(
            f"caller {caller.uri!r} may not act as {expected_spiffe_id!r}",
            metadata={"identity": caller.uri, "expected": expected_spiffe_id},
        )
    return caller
