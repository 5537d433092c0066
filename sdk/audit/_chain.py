"""The audit chain's canonical encoding and hash, specified so a verifier in any language can recompute it.

A record's hash is the lowercase hex SHA-256 of the RFC 8785 (JSON Canonicalization Scheme) encoding of
this object, every member always present:

    {"action": str, "actor": str, "detail": object, "model_name": str, "model_version": str,
     "on_behalf_of": str, "outcome": str, "previous_hash": str, "record_time": str,
     "resource": str, "sequence": int, "trace_id": str}

``record_time`` is UTC with microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; ``previous_hash`` is the
``record_hash`` of the record with ``sequence - 1``, or 64 zeros (:data:`GENESIS_HASH`) for sequence 1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import rfc8785

__all__ = ["GENESIS_HASH", "canonical_parts", "canonical_record", "format_record_time", "json_safe", "record_hash"]

GENESIS_HASH = "0" * 64
# Integers beyond this are not exact in an IEEE double, which RFC 8785 (like JavaScript) uses.
_MAX_SAFE_INTEGER = 2**53 - 1


def format_record_time(moment: dt.datetime) -> str:
    """``moment`` as the chain spells it: UTC, microseconds, ``Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON the chain can encode and PostgreSQL can store: unknown types become strings,
    unsafe integers text, NUL characters (which JSONB refuses) U+FFFD."""

    def fix(item: Any) -> Any:
        if isinstance(item, str):
            return item.replace("\x00", "\ufffd")
        if isinstance(item, bool) or item is None:
            return item
        if isinstance(item, int):
            return item if abs(item) <= _MAX_SAFE_INTEGER else str(item)
        if isinstance(item, float):
            return item if item == item and item not in (float("inf"), float("-inf")) else str(item)
        if isinstance(item, Mapping):
            return {str(key).replace("\x00", "\ufffd"): fix(sub) for key, sub in item.items()}
        if isinstance(item, list | tuple):
            return [fix(sub) for sub in item]
        return str(item)

    return fix(json.loads(json.dumps(value, default=str)))


def canonical_record(
    *,
    sequence: int,
    record_time: dt.datetime,
    actor: str,
    on_behalf_of: str,
    action: str,
    resource: str,
    outcome: str,
    detail: Mapping[str, Any],
    trace_id: str,
    model_name: str,
    model_version: str,
    previous_hash: str,
) -> bytes:
    """The RFC 8785 bytes a record's hash is taken over (see the module docstring)."""
    return rfc8785.dumps(
        {
            "action": action,
            "actor": actor,
            "detail": dict(detail),
            "model_name": model_name,
            "model_version": model_version,
            "on_behalf_of": on_behalf_of,
            "outcome": outcome,
            "previous_hash": previous_hash,
            "record_time": format_record_time(record_time),
            "resource": resource,
            "sequence": sequence,
            "trace_id": trace_id,
        }
    )


# Stand-ins for the two members only the database knows when it appends (the head's hash, the next sequence).
_PREVIOUS_STAND_IN = "p" * 64  # not hex: no real hash is ever this
_SEQUENCE_STAND_IN = _MAX_SAFE_INTEGER


def canonical_parts(**fields: Any) -> tuple[bytes, bytes, bytes]:
    """:func:`canonical_record` of ``fields`` (without ``sequence`` and ``previous_hash``) cut where those two go:
    ``a + previous_hash + b + str(sequence) + c`` is the canonical encoding of the record with them, so the
    database can hash a record after it has read the chain's head, in the statement that appends it.

    Both are top-level members after ``detail`` (RFC 8785 sorts members), and no string value holds an unescaped
    quote, so the last occurrence of each stand-in's member is the top-level one."""
    whole = canonical_record(previous_hash=_PREVIOUS_STAND_IN, sequence=_SEQUENCE_STAND_IN, **fields)
    previous = b'"previous_hash":"' + _PREVIOUS_STAND_IN.encode() + b'"'
    sequence = b'"sequence":' + str(_SEQUENCE_STAND_IN).encode()
    cut = whole.rindex(previous) + len(b'"previous_hash":"')
    after = whole.rindex(sequence) + len(b'"sequence":')
    return whole[:cut], whole[cut + 64 : after], whole[after + len(str(_SEQUENCE_STAND_IN)) :]


def record_hash(**fields: Any) -> str:
    """Hex SHA-256 of :func:`canonical_record` of ``fields``."""
    return hashlib.sha256(canonical_record(**fields)).hexdigest()
