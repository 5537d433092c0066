"""The batched pipeline (agentmesh.storage.batched_pipeline) on a real PostgreSQL: statements stay queued until
the pipeline syncs, then go out together; results, reads before the sync, errors and COMMIT behave as in
psycopg's own pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from agentmesh.storage import batched_pipeline, queue_commit

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def connections(
    postgres_database_url: str,
) -> AsyncIterator[tuple[psycopg.AsyncConnection, psycopg.AsyncConnection]]:
    url = postgres_database_url.replace("postgresql+psycopg", "postgresql")
    first = await psycopg.AsyncConnection.connect(url)
    second = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await second.execute("CREATE TABLE items (id serial PRIMARY KEY, name text UNIQUE NOT NULL)")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_statements_wait_for_the_sync_then_run_in_order(
    connections: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    conn, other = connections
    async with batched_pipeline(conn):
        locked = await conn.execute("SELECT pg_try_advisory_lock(4242)")
        inserted = await conn.execute("INSERT INTO items (name) VALUES ('a'), ('b') RETURNING id, name")
        counted = await conn.execute("SELECT count(*) FROM items")
        # Nothing has been sent yet: another session still gets the lock the queued statement asks for.
        assert (await (await other.execute("SELECT pg_try_advisory_lock(4242)")).fetchone()) == (True,)
        await other.execute("SELECT pg_advisory_unlock(4242)")
        await queue_commit(conn)
    assert await locked.fetchone() == (True,)
    assert await inserted.fetchall() == [(1, "a"), (2, "b")]
    assert await counted.fetchone() == (2,)  # each statement sees the ones before it
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # the queued COMMIT ended it
    assert await (await other.execute("SELECT name FROM items ORDER BY id")).fetchall() == [("a",), ("b",)]


async def test_a_read_before_the_sync_sends_what_it_depends_on(
    connections: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    conn, _ = connections
    async with batched_pipeline(conn):
        await conn.execute("INSERT INTO items (name) VALUES ('a')")
        cursor = await conn.execute("SELECT name FROM items")
        assert await cursor.fetchall() == [("a",)]
        await conn.execute("INSERT INTO items (name) VALUES ('b')")
        await queue_commit(conn)
    async with conn.cursor() as cursor:
        await cursor.execute("SELECT count(*) FROM items")
        assert await cursor.fetchone() == (2,)


async def test_an_error_surfaces_at_the_sync_and_nothing_is_committed(
    connections: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    conn, other = connections
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with batched_pipeline(conn):
            await conn.execute("INSERT INTO items (name) VALUES ('a')")
            await conn.execute("INSERT INTO items (name) VALUES ('a')")
            await conn.execute("INSERT INTO items (name) VALUES ('c')")
            await queue_commit(conn)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    await conn.rollback()
    assert await (await other.execute("SELECT count(*) FROM items")).fetchone() == (0,)
    # The connection is usable again, in or out of a pipeline.
    async with batched_pipeline(conn):
        cursor = await conn.execute("SELECT 1")
    assert await cursor.fetchone() == (1,)


async def test_executemany_and_a_nested_pipeline(
    connections: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    conn, other = connections
    async with batched_pipeline(conn):
        async with conn.cursor() as cursor:
            await cursor.executemany("INSERT INTO items (name) VALUES (%s)", [("a",), ("b",), ("c",)])
        async with batched_pipeline(conn):  # nested: still one pipeline
            await conn.execute("DELETE FROM items WHERE name = 'b'")
        await queue_commit(conn)
    assert await (await other.execute("SELECT name FROM items ORDER BY name")).fetchall() == [("a",), ("c",)]


async def test_write_stores_what_sqlalchemy_would(migrated_postgres_url: str) -> None:
    """``write`` (SQL straight on psycopg) against ``connection.execute``: the same rows, with SQLAlchemy's JSON
    and time-zone handling and the Python-side defaults of columns left out."""
    import datetime as dt

    import sqlalchemy as sa

    from agentmesh.storage import Task, create_async_engine, write

    engine = create_async_engine(migrated_postgres_url)
    table = Task.__table__
    insert = sa.insert(table).inline()
    berlin = dt.timezone(dt.timedelta(hours=1))
    row = {
        "goal": "g",
        "input": {"ticket": {"text": "caf\u00e9 \u2603", "n": [1, 2.5, None]}},
        "created_at": dt.datetime(2026, 12, 4, 19, 0, tzinfo=berlin),
        "deadline_at": None,
    }
    try:
        async with engine.begin() as conn:
            await write(conn, insert, [{**row, "task_id": "by-write"}, {**row, "task_id": "by-write-2"}])
            await conn.execute(insert, {**row, "task_id": "by-sqlalchemy"})
        async with engine.connect() as conn:
            stored = {r.task_id: r._asdict() for r in await conn.execute(sa.select(table))}
    finally:
        await engine.dispose()
    expected = {
        **stored["by-sqlalchemy"],
        "task_id": "by-write",
        "updated_at": stored["by-write"]["updated_at"],
    }
    assert stored["by-write"] == expected
    assert stored["by-write"]["input"] == row["input"]
    assert stored["by-write"]["state"] == "PENDING"  # a Python-side default of a column not given
    assert stored["by-write"]["created_at"] == dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC)
    assert stored["by-write-2"]["goal"] == "g"


async def test_a_batch_larger_than_the_socket_buffers_goes_through(
    connections: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    """Megabytes queued before the sync, with results coming back meanwhile: libpq sends as it queues and psycopg
    reads while it flushes, so neither side blocks on the other."""
    conn, other = connections
    await other.execute("CREATE TABLE blobs (body text NOT NULL)")
    big = "x" * 3_000_000
    async with batched_pipeline(conn):
        cursors = [
            await conn.execute("INSERT INTO blobs (body) VALUES (%s) RETURNING length(body)", (f"{n}{big}",))
            for n in range(4)
        ]
        await queue_commit(conn)
    assert [await cursor.fetchone() for cursor in cursors] == [(3_000_001,)] * 4
    assert await (await other.execute("SELECT count(*) FROM blobs")).fetchone() == (4,)
