"""Blind writes of SQLAlchemy Core statements straight on psycopg, for hot paths on PostgreSQL.

Executing a Core statement through SQLAlchemy's asyncio layer costs ~0.15 ms of CPU per call on these machines
(execution context, greenlet hop, result setup) around ~0.03 ms of psycopg's own work; the planner's end-of-step
transaction made six such calls. :func:`write` compiles a statement once per set of parameter names (with
SQLAlchemy's own bind processors: JSON, time zones, type decorators), then hands SQL and parameters to the
connection's psycopg driver, inside whatever transaction or pipeline the connection is in. Elsewhere (SQLite),
and for statements whose columns need defaults computed in Python, it is ``connection.execute``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

__all__ = ["psycopg_connection", "write"]


@dataclass(frozen=True)
class _Compiled:
    compiled: SQLCompiler
    processors: Mapping[str, Callable[[Any], Any]]
    defaults: Mapping[str, Callable[[], Any]]  # Python-side column defaults of columns not given
    direct: bool  # False: something only SQLAlchemy's execute can do (SQL defaults, SQL rendered per call)

    def bind(self, params: Mapping[str, Any]) -> MutableMapping[str, Any]:
        if self.defaults:
            params = {**{name: make() for name, make in self.defaults.items()}, **params}
        # construct_params fills in values fixed in the statement and refuses a missing required parameter.
        values = self.compiled.construct_params(params)
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        return values


_CACHE: dict[tuple[UpdateBase, frozenset[str]], _Compiled] = {}


def _default(column: Any) -> Callable[[], Any] | None:
    """A Python-side column default as a no-argument function (None when it is SQL or needs a context)."""
    default = column.default if column.default is not None and column.default.for_update is False else None
    if default is None or default.is_sequence or default.is_clause_element:
        return None
    if default.is_scalar:
        value = default.arg
        return lambda: value
    if default.is_callable:
        function = default.arg
        return lambda: function(None)  # SQLAlchemy wraps a no-argument default to take (and ignore) a context
    return None


def _compiled(connection: AsyncConnection, statement: UpdateBase, keys: frozenset[str]) -> _Compiled:
    found = _CACHE.get((statement, keys))
    if found is None:
        compiled = statement.compile(dialect=connection.dialect, column_keys=sorted(keys))
        assert isinstance(compiled, SQLCompiler)
        defaults = {column.key: _default(column) for column in (*compiled.insert_prefetch, *compiled.update_prefetch)}
        direct = all(defaults.values()) and not (compiled.literal_execute_params or compiled.post_compile_params
                                                 or compiled.positiontup)
        # SQLAlchemy's own processors (what its execute applies); a sequence only for tuple binds, never here.
        processors = {name: process for name, process in compiled._bind_processors.items() if callable(process)}
        usable = {name: make for name, make in defaults.items() if make is not None}
        found = _CACHE[(statement, keys)] = _Compiled(compiled, processors, usable, direct)
    return found


async def psycopg_connection(connection: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg ``AsyncConnection`` under a checked-out SQLAlchemy connection (PostgreSQL)."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)  # a checked-out connection has its psycopg connection
    return driver


async def write(
    connection: AsyncConnection, statement: UpdateBase, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> None:
    """Run an INSERT, UPDATE or DELETE whose result nobody reads, for one row of parameters or many."""
    rows = [params] if isinstance(params, Mapping) else list(params)
    if not rows:
        return
    if connection.dialect.name != "postgresql":
        await connection.execute(statement, rows if len(rows) > 1 else rows[0])
        return
    keys = frozenset(rows[0])
    compiled = _compiled(connection, statement, keys)
    if not compiled.direct or any(frozenset(row) != keys for row in rows[1:]):
        await connection.execute(statement, rows if len(rows) > 1 else rows[0])
        return
    driver = await psycopg_connection(connection)
    if len(rows) == 1:
        await driver.execute(compiled.compiled.string, compiled.bind(rows[0]))
        return
    async with driver.cursor() as cursor:
        await cursor.executemany(compiled.compiled.string, [compiled.bind(row) for row in rows])
