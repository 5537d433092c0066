"""Keyed pseudonyms for PII: a stable stand-in for an email address or phone number, never the value itself.

``HMAC-SHA256(secret, "<kind>:<normalised value>")``, its first 80 bits written with the letters ``a`` to ``p``
(one per 4 bits), inside the kind's marker: ``maria.lopez@example.com`` → ``[email:kpbfacmgnehdoaljpibc]``.
The same value gives the same pseudonym under the same secret, so a service that holds the secret (the CRM
agent) can index its records by pseudonym and find the customer a redacted ticket names, while the raw value
is stored nowhere else. Without the secret a pseudonym cannot be reversed or recomputed from a guess. The
alphabet has no digits, so no pseudonym looks like a phone or card number to the redactor.

The secret is a file (``AGENTMESH_PSEUDONYM_KEY_FILE``, else ``<home>/pseudonym.key``): ``agentmesh up`` makes
one under its home, compose and Kubernetes mount a Secret. Rotating it changes every pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from agentmesh._errors import FailedPreconditionError

if TYPE_CHECKING:
    from agentmesh._settings import Settings

__all__ = ["PSEUDONYM_KEY_NAME", "Pseudonyms", "ensure_pseudonym_key", "is_pseudonym"]

PSEUDONYM_KEY_NAME = "pseudonym.key"
_LETTERS = 20  # 80 bits
_MIN_KEY_BYTES = 16
_ALPHABET = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
_PSEUDONYM = re.compile(rf"\[(email|phone):[a-p]{{{_LETTERS}}}\]")


def _normalise(kind: str, value: str) -> str:
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return "".join(char for char in value if char.isdigit())
    return " ".join(value.split())


class Pseudonyms:
    """Keyed pseudonyms under one secret (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise FailedPreconditionError(f"a pseudonym secret needs at least {_MIN_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:  # never the key
        return "Pseudonyms(<secret>)"

    @classmethod
    def from_file(cls, path: Path | str) -> Pseudonyms:
        """Pseudonyms under the secret in ``path`` (its bytes, surrounding whitespace dropped)."""
        try:
            key = Path(path).read_bytes().strip()
        except OSError as exc:
            raise FailedPreconditionError(f"cannot read the pseudonym secret {path}: {exc.strerror}") from exc
        return cls(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> Pseudonyms | None:
        """The mesh's pseudonyms: ``pseudonym_key_file``, else ``<home>/pseudonym.key`` if it exists; or None
        (plain markers) when neither is there. A configured file that cannot be read is an error."""
        if settings.pseudonym_key_file:
            return cls.from_file(settings.pseudonym_key_file)
        default = Path(settings.home) / PSEUDONYM_KEY_NAME
        return cls.from_file(default) if default.is_file() else None

    def of(self, kind: str, value: str) -> str:
        """The pseudonym of ``value`` (an ``email`` or ``phone``): ``[<kind>:<20 letters>]``."""
        message = f"{kind}:{_normalise(kind, value)}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_LETTERS]
        return f"[{kind}:{digest.translate(_ALPHABET)}]"

    def email(self, value: str) -> str:
        """The pseudonym of an email address (case-insensitive)."""
        return self.of("email", value)

    def phone(self, value: str) -> str:
        """The pseudonym of a phone number (its digits)."""
        return self.of("phone", value)


def is_pseudonym(text: str, kind: str | None = None) -> bool:
    """Whether ``text`` is exactly one pseudonym (of ``kind``, when given)."""
    match = _PSEUDONYM.fullmatch(text.strip())
    return match is not None and (kind is None or match.group(1) == kind)


def ensure_pseudonym_key(path: Path) -> Path:
    """Make a new random 256-bit secret at ``path`` (mode 0600) unless one is there; returns ``path``."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path
