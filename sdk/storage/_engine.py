"""Engines and sessions: one way to reach the database, SQLite by default, PostgreSQL in production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine

__all__ = [
    "async_session_factory",
    "async_url",
    "connection_lost",
    "create_async_engine",
    "create_engine",
    "default_url",
    "mask_url",
    "sync_url",
]

# Milliseconds a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option choosing how SQLite transactions begin: IMMEDIATE (default: take the write lock at once)
# or DEFERRED for read-only work, e.g. ``engine.execution_options(sqlite_begin="DEFERRED")``. PostgreSQL
# ignores it.
SQLITE_BEGIN_OPTION = "sqlite_begin"
_SQLITE_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})

_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
}


def default_url() -> str:
    """The database URL of this process: ``AGENTMESH_DATABASE_URL``, else SQLite under ``AGENTMESH_HOME``."""
    from agentmesh._settings import Settings

    return Settings.from_env().resolved_database_url


def _with_driver(url: str | URL | None, drivers: dict[str, str]) -> URL:
    parsed = make_url(default_url() if url is None else url)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ValueError(f"unsupported database {mask_url(parsed)!r}: use sqlite:// or postgresql://")
    if "+" in parsed.drivername and not parsed.drivername.endswith(("+psycopg", "+aiosqlite", "+pysqlite")):
        raise ValueError(f"unsupported driver in {mask_url(parsed)!r}: use psycopg (3) or the default")
    return parsed.set(drivername=drivers[backend])


def sync_url(url: str | URL | None = None) -> URL:
    """``url`` with the synchronous driver (pysqlite, psycopg 3); ``None`` means :func:`default_url`."""
    return _with_driver(url, _SYNC_DRIVERS)


def async_url(url: str | URL | None = None) -> URL:
    """``url`` with the asyncio driver (aiosqlite, psycopg 3 async); ``None`` means :func:`default_url`."""
    return _with_driver(url, _ASYNC_DRIVERS)


def mask_url(url: str | URL) -> str:
    """``url`` as text with its password replaced by ``***``, safe to print or log."""
    return make_url(url).render_as_string(hide_password=True)


def _prepare_sqlite_file(url: URL) -> None:
    # The default database lives under .agentmesh/, which may not exist yet.
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_pragmas(engine: Engine) -> None:
    """WAL, foreign keys and a busy timeout on every connection; transactions begin IMMEDIATE.

    The driver's own transaction handling is switched off so SQLAlchemy's ``begin`` emits
    ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes fails at once with
    "database is locked" when another writer committed meanwhile, whereas an immediate one waits its
    turn. Read-only work may opt into ``DEFERRED`` with the ``sqlite_begin`` execution option.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN_OPTION}={mode!r}: expected one of {sorted(_SQLITE_BEGIN_MODES)}")
        connection.exec_driver_sql(f"BEGIN {mode}")


def create_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """A synchronous engine (migrations, CLI, scripts); ``None`` means :func:`default_url`.

    ``sqlite://`` gets WAL, foreign keys, a busy timeout and its folder created; ``postgresql://`` uses
    psycopg 3. Extra keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    parsed = sync_url(url)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite_file(parsed)
        engine = sa.create_engine(parsed, **kwargs)
        _install_sqlite_pragmas(engine)
        return engine
    return sa.create_engine(parsed, **kwargs)


def create_async_engine(url: str | URL | None = None, **kwargs: Any) -> AsyncEngine:
    """An asyncio engine for servers (``grpc.aio``); ``None`` means :func:`default_url`.

    ``sqlite://`` becomes ``sqlite+aiosqlite://`` (same pragmas as :func:`create_engine`),
    ``postgresql://`` becomes ``postgresql+psycopg://`` (psycopg 3 async). Extra keyword arguments go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite_file(parsed)
        engine = _sa_create_async_engine(parsed, **kwargs)
        _install_sqlite_pragmas(engine.sync_engine)
        return engine
    return _sa_create_async_engine(parsed, **kwargs)


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions bound to ``engine``; objects stay readable after commit (``expire_on_commit=False``)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLAlchemy's word that the database could not be reached or the connection was lost
    (safe to retry once it is back), not a statement the database refused."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
