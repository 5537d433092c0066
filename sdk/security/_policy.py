"""Authorization by identity: a YAML policy of SPIFFE id globs → allowed gRPC method globs."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agentmesh._errors import InvalidArgumentError, PermissionDeniedError

__all__ = ["AuthzPolicy", "AuthzRule"]

_DEFAULT_POLICY = "default_policy.yaml"
# Decisions are cached per (identity, method); a mesh has few of each, this only bounds a pathological peer.
_MAX_CACHED_DECISIONS = 65_536


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True)
class AuthzRule:
    """Identities matching any of ``identities`` may call methods matching any of ``methods``."""

    name: str
    identities: tuple[str, ...]
    methods: tuple[str, ...]

    _identity_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _method_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_identity_re", _compile(self.identities))
        object.__setattr__(self, "_method_re", _compile(self.methods))

    def allows(self, identity: str, method: str) -> bool:
        """Whether this rule lets ``identity`` call ``method``."""
        return bool(self._identity_re.fullmatch(identity)) and bool(self._method_re.fullmatch(method))


class AuthzPolicy:
    """An allow-list policy; anything no rule allows is denied. Patterns are compiled once at load."""

    def __init__(self, rules: Sequence[AuthzRule], *, source: str = "<memory>") -> None:
        self.rules = tuple(rules)
        self.source = source
        self._decisions: dict[tuple[str, str], bool] = {}

    @classmethod
    def default(cls, trust_domain: str) -> AuthzPolicy:
        """The built-in policy (DESIGN.md), shipped as ``agentmesh/security/default_policy.yaml``."""
        text = resources.files(__package__).joinpath(_DEFAULT_POLICY).read_text(encoding="utf-8")
        return cls.from_yaml(text, trust_domain=trust_domain, source=f"built-in {_DEFAULT_POLICY}")

    @classmethod
    def load(cls, path: Path | str, *, trust_domain: str = "agentmesh.local") -> AuthzPolicy:
        """Load a policy file; ``{trust_domain}`` in its patterns becomes ``trust_domain``."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read authorization policy {path}: {exc.strerror}") from None
        return cls.from_yaml(text, trust_domain=trust_domain, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, *, trust_domain: str, source: str = "<memory>") -> AuthzPolicy:
        """Parse a policy document (see ``default_policy.yaml`` for the format)."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgumentError(f"authorization policy {source} is not valid YAML: {exc}") from None
        return cls.from_mapping(document, trust_domain=trust_domain, source=source)

    @classmethod
    def from_mapping(cls, document: Any, *, trust_domain: str, source: str = "<memory>") -> AuthzPolicy:
        """Build a policy from an already parsed document, validating its shape."""
        if not isinstance(document, Mapping) or not isinstance(document.get("rules"), list):
            raise InvalidArgumentError(f"authorization policy {source} must be a mapping with a `rules` list")
        unknown = set(document) - {"version", "rules"}
        if unknown:
            raise InvalidArgumentError(f"authorization policy {source} has unknown keys {sorted(unknown)}")
        rules = []
        for index, raw in enumerate(document["rules"]):
            where = f"authorization policy {source}, rule {index}"
            if not isinstance(raw, Mapping) or set(raw) - {"name", "identities", "methods"}:
                raise InvalidArgumentError(f"{where}: a rule has only `name`, `identities` and `methods`")
            patterns = {}
            for key in ("identities", "methods"):
                value = raw.get(key)
                if (
                    not isinstance(value, list)
                    or not value
                    or not all(isinstance(v, str) and v for v in value)
                ):
                    raise InvalidArgumentError(f"{where}: `{key}` must be a non-empty list of glob strings")
                patterns[key] = tuple(v.replace("{trust_domain}", trust_domain) for v in value)
            for method in patterns["methods"]:
                if not method.startswith("/"):
                    raise InvalidArgumentError(
                        f"{where}: method {method!r} must be a full name like /pkg.Service/Method"
                    )
            rules.append(
                AuthzRule(str(raw.get("name", f"rule {index}")), patterns["identities"], patterns["methods"])
            )
        return cls(rules, source=source)

    def allows(self, identity: str, method: str) -> bool:
        """Whether ``identity`` (a SPIFFE URI) may call ``method`` (a full gRPC method name); cached."""
        key = (identity, method)
        decision = self._decisions.get(key)
        if decision is None:
            decision = any(rule.allows(identity, method) for rule in self.rules)
            if len(self._decisions) >= _MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def check(self, identity: str, method: str) -> None:
        """Raise PermissionDeniedError naming ``identity`` and ``method`` unless allowed."""
        if not self.allows(identity, method):
            raise PermissionDeniedError(
                f"{identity} may not call {method} (authorization policy: {self.source})",
                metadata={"identity": identity, "method": method},
            )
