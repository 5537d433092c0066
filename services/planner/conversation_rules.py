"""The conversation rules that need no database: who may write which role, what an end user may see,
the bounds of every field, and the page tokens of ListConversations."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentmesh._errors import InvalidArgumentError, PermissionDeniedError
from agentmesh.services.planner.conversations_store import ConversationRecord, PageKey
from agentmesh.storage import has_nul

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_DATA_BYTES",
    "MAX_ID",
    "MAX_LABELS",
    "MAX_LABEL_VALUE",
    "MAX_OWNER",
    "MAX_PAGE_SIZE",
    "MAX_REQUEST_ID",
    "MAX_TEXT",
    "MAX_TITLE",
    "ROLES",
    "ROLE_WRITERS",
    "Caller",
    "RolePolicy",
    "check_id",
    "check_json",
    "check_labels",
    "check_message",
    "check_request_id",
    "check_text",
    "check_version",
    "filter_fingerprint",
    "page_token",
    "parse_page_token",
]

ROLES = ("USER", "AGENT", "SYSTEM")
# Who may write each role (SPIFFE id globs; {trust_domain} is filled in). End users speak through the
# gateway or a client; the planner (task results) and agents speak as AGENT; only ops clients write
# SYSTEM notices by hand (rollback notices are written by the mesh for whoever rolls back).
ROLE_WRITERS: Mapping[str, tuple[str, ...]] = {
    "USER": ("spiffe://{trust_domain}/client/*", "spiffe://{trust_domain}/service/gateway"),
    "AGENT": ("spiffe://{trust_domain}/service/planner", "spiffe://{trust_domain}/agent/*"),
    "SYSTEM": ("spiffe://{trust_domain}/client/ops", "spiffe://{trust_domain}/client/ops-*"),
}

MAX_TITLE = 256
MAX_TEXT = 32_768
MAX_DATA_BYTES = 65_536
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_REQUEST_ID = 128
MAX_ID = 64
MAX_OWNER = 512
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


@dataclass(frozen=True)
class Caller:
    """Who calls: the verified workload identity and, behind the gateway, the end user it acts for."""

    identity: str | None = None  # SPIFFE id; None only under --insecure-dev
    end_user: str = ""  # subject of a verified end-user delegation token
    tenant: str = ""

    def request_key(self, request_id: str | None) -> str | None:
        """``request_id`` as stored: scoped to the end user, so one user's id never finds another's result."""
        if request_id is None or not self.end_user:
            return request_id
        digest = hashlib.sha256(f"{self.tenant}\0{self.end_user}\0{request_id}".encode()).hexdigest()
        return f"user:{digest}"

    def may_see(self, conversation: ConversationRecord) -> bool:
        """Whether this caller may read and write ``conversation``."""
        return not self.end_user or (conversation.tenant, conversation.on_behalf_of) == (self.tenant, self.end_user)


class RolePolicy:
    """Which message roles an identity may write."""

    def __init__(self, trust_domain: str, writers: Mapping[str, Sequence[str]] = ROLE_WRITERS) -> None:
        self._writers = {
            role: tuple(pattern.replace("{trust_domain}", trust_domain) for pattern in patterns)
            for role, patterns in writers.items()
        }

    def roles_of(self, caller: str | None) -> tuple[str, ...]:
        """The roles ``caller`` may write, in :data:`ROLES` order (every role without identities: --insecure-dev)."""
        if caller is None:
            return ROLES
        return tuple(
            role
            for role in ROLES
            if any(fnmatch.fnmatchcase(caller, pattern) for pattern in self._writers.get(role, ()))
        )

    def resolve(self, caller: str | None, role: str | None) -> str:
        """The role to write: ``role`` if the caller holds it, the caller's first role when ``role`` is None."""
        held = self.roles_of(caller)
        if role is None:
            if not held:
                raise PermissionDeniedError(
                    f"{caller} may not write messages in any role", metadata={"identity": caller or ""}
                )
            return held[0]
        if role not in held:
            allowed = ", ".join(held) or "none"
            raise PermissionDeniedError(
                f"{caller} may not write {role} messages (its roles: {allowed})",
                reason="ROLE_NOT_HELD",
                metadata={"identity": caller or "", "role": role},
            )
        return role


def check_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    return check_text(value, field, MAX_ID)


def check_request_id(value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID or not _REQUEST_ID.fullmatch(value):
        raise InvalidArgumentError(
            f"request_id must be 1-{MAX_REQUEST_ID} printable ASCII characters without spaces", field="request_id"
        )
    return value


def check_version(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgumentError(f"{field} must not be negative, got {value}", field=field)
    return value


def check_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    """``labels`` if every key and value is within bounds; InvalidArgumentError naming the first that is not."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgumentError(f"at most {MAX_LABELS} labels, got {len(labels)}", field=field)
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgumentError(
                f"label key {key[:80]!r} must be 1-63 letters, digits, '.', '_', '/' or '-', "
                "starting and ending with a letter or digit",
                field=f"{field}.{key[:80]}",
            )
        check_text(value, f"{field}.{key}", MAX_LABEL_VALUE)
    return dict(labels)


def check_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgumentError(f"{field} is longer than {limit} characters ({len(value)})", field=field)
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise InvalidArgumentError(f"{field} must not contain NUL characters", field=field)
    return value


def check_json(value: dict[str, Any] | None, field: str) -> None:
    if value is None:
        return
    encoded = json.dumps(value, separators=(",", ":"))
    if len(encoded) > MAX_DATA_BYTES:
        raise InvalidArgumentError(f"{field} is larger than {MAX_DATA_BYTES} bytes as JSON", field=field)
    if has_nul(value):  # nor can JSONB
        raise InvalidArgumentError(f"{field} must not contain NUL characters", field=field)


def check_message(text: str, data: dict[str, Any] | None) -> None:
    check_text(text, "text", MAX_TEXT)
    check_json(data, "data")
    if not text and not data:
        raise InvalidArgumentError("a message needs text or data", field="text")


def filter_fingerprint(owner: str | None, end_user: tuple[str, str] | None, labels: Mapping[str, str]) -> str:
    canonical = json.dumps([owner, end_user, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def page_token(last: ConversationRecord, fingerprint: str) -> str:
    body = {"t": last.created_at.isoformat(), "id": last.conversation_id, "f": fingerprint}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def parse_page_token(token: str, fingerprint: str) -> PageKey | None:
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created, conversation_id = dt.datetime.fromisoformat(body["t"]), body["id"]
        if created.tzinfo is None:  # ours carry UTC; a hand-made one without a zone would fail in the query
            created = created.replace(tzinfo=dt.UTC)
        if not isinstance(conversation_id, str) or len(conversation_id) > MAX_ID or "\x00" in conversation_id:
            raise ValueError("not a conversation id")
        key = PageKey(created, conversation_id)
        same_filters = body["f"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise InvalidArgumentError("page_token is not a token this service returned", field="page_token") from None
    if not same_filters:
        raise InvalidArgumentError(
            "page_token belongs to a listing with other filters; repeat the filters of the first page",
            field="page_token",
        )
    return key
