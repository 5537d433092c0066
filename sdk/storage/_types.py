"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["BigIntPK", "JSONDoc", "UTCDateTime", "fit_text", "has_nul", "utcnow"]

# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere. Python None is stored as
# SQL NULL (not JSON 'null'), so "IS NULL" finds every missing document.
JSONDoc: TypeEngine[Any] = JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)

# Autoincrement 64-bit keys: SQLite only autoincrements an INTEGER PRIMARY KEY (its rowid alias).
BigIntPK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


def fit_text(text: str, width: int) -> str:
    """``text`` as a text column ``width`` characters wide stores it: NUL (which PostgreSQL refuses) as U+FFFD,
    and cut with an ellipsis when longer."""
    text = text.replace("\x00", "\ufffd")
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def has_nul(value: Any) -> bool:
    """Whether a JSON-like value holds a NUL character in any string or key: no PostgreSQL text or JSONB column
    stores one (the INSERT fails), so values from outside are checked before they are stored."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (the only kind of datetime the storage accepts)."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware timestamp stored in UTC; naive values are refused, loaded values are always aware.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are converted to UTC before
    they are written (string comparisons in SQL then order correctly) and tagged UTC when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware datetimes (UTC)")
        value = value.astimezone(dt.UTC)
        # SQLite would store the offset-less text; make that text UTC explicitly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
