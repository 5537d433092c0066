"""Alembic environment of the packaged migrations (used by ``agentmesh.storage.upgrade`` and friends).

On SQLite: batch mode (ALTER TABLE by copy-and-rename), foreign keys off while migrating (dropping a
copied table must not cascade into its children), checked afterwards, and one transaction for the
whole upgrade (the engine begins SQLite transactions explicitly, so DDL is transactional there too).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import NullPool

from agentmesh.storage._engine import create_engine, sync_url
from agentmesh.storage._models import metadata

config = context.config


def _url() -> str | URL | None:
    url: str | URL | None = config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or None
    return url


def _set_sqlite_foreign_keys(connection: Connection, enabled: bool) -> None:
    # PRAGMA foreign_keys is ignored inside a transaction, so it goes straight to the driver.
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    finally:
        cursor.close()


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _set_sqlite_foreign_keys(connection, False)
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=sqlite,
            transactional_ddl=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows that break foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            _set_sqlite_foreign_keys(connection, True)


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade --sql``)."""
    url = sync_url(_url())
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection of our own engine (same pragmas as the services)."""
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
