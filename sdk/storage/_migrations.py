"""Alembic, driven from code: the migration scripts ship inside the package, no alembic.ini needed."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

# Alembic announces its plugin set-up at INFO when it is imported (below): quiet before the import.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

import sqlalchemy as sa  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy.engine import URL  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from agentmesh.storage._engine import create_engine  # noqa: E402

__all__ = ["alembic_config", "current", "downgrade", "heads", "ping", "upgrade"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` for the packaged migrations and ``url`` (``None`` means the default URL).

    The URL is not written into the config's options (where ``%`` must be escaped and a password could
    end up in logs); ``env.py`` reads it from ``config.attributes["url"]``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str | URL | None = None, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the latest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL | None, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` removes every table)."""
    command.downgrade(alembic_config(url), revision)


def current(url: str | URL | None = None) -> str | None:
    """The revision the database at ``url`` is at; ``None`` when it was never migrated."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@functools.cache
def _script_heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def heads() -> list[str]:
    """The head revisions of the packaged migrations (exactly one, or the migrations are broken)."""
    return list(_script_heads())


async def ping(engine: AsyncEngine) -> bool:
    """Readiness: ``True`` when the database answers and its schema is at the packaged head."""
    try:
        async with engine.connect() as connection:
            # Read-only: on SQLite do not queue behind writers for the write lock.
            connection = await connection.execution_options(sqlite_begin="DEFERRED")
            # A plain read of alembic's table: a MigrationContext per check would log two INFO lines each time.
            result = await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            revisions = list(result.scalars())
    except Exception:
        return False
    return set(revisions) == set(_script_heads())
