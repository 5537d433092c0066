"""The declarative base every storage model derives from."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase

__all__ = ["NAMING_CONVENTION", "Base"]

# Every constraint gets a deterministic name: Alembic batch mode on SQLite can only drop or alter
# constraints it can name, and PostgreSQL and SQLite then agree on what exists.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(AsyncAttrs, DeclarativeBase):
    """Base class of all models; ``Base.metadata`` is what Alembic migrations must match.

    Relationships load lazily, which async sessions cannot do implicitly: eager-load them
    (``selectinload``) or ``await obj.awaitable_attrs.<name>``.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model here is mapped to a table (no mapping to a join or a select): say so, so that
    # ``Model.__table__`` types as the Table that insert()/update()/delete() take.
    __table__: ClassVar[Table]
