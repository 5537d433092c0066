"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["BigIntPK", "JSONDoc", "UTCDateTime", "utcnow"]

# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere. Python None is stored as
# SQL NULL (not JSON 'null'), so "IS NULL" finds every missing document.
JSONDoc: TypeEngine[Any] = JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)

# Autoincrement 64-bit keys: SQLite only autoincrements an INTEGER PRIMARY KEY (its rowid alias).
BigIntPK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


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
