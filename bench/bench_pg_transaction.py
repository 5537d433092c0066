"""The floor of one step transition in Python: CPU and wall time of one small pipelined PostgreSQL transaction.

One 3-row INSERT (the shape of a step's events) and COMMIT in one psycopg pipeline, on a throwaway PostgreSQL,
three ways: psycopg alone; through SQLAlchemy's asyncio connection with the statement sent to the driver; and
through SQLAlchemy's Core execution (as most of the planner's statements are). The planner's end-of-step
transaction is two such round trips of about ten statements, so this is what its CPU per step is made of.

    .venv/bin/python bench/bench_pg_transaction.py [--transactions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RAW = (
    "INSERT INTO bench_events (task_id, type, step_id, state, attempt, created_at) "
    "VALUES (%(task_id)s, %(type)s, %(step_id)s, %(state)s, %(attempt)s, %(created_at)s)"
)


async def run(url: str, transactions: int) -> None:
    import psycopg
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmesh.services.planner.store import EVENTS
    from agentmesh.storage import utcnow

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE bench_events (LIKE task_events INCLUDING DEFAULTS INCLUDING IDENTITY)"))
    insert = sa.insert(EVENTS.to_metadata(sa.MetaData(), name="bench_events")).inline()

    def rows() -> list[dict[str, object]]:
        return [{"task_id": "t", "type": "STEP_STATE", "step_id": "s", "state": "READY", "attempt": 1,
                 "created_at": utcnow()} for _ in range(3)]

    plain = await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""))

    async def psycopg_alone() -> None:
        async with plain.pipeline():
            async with plain.cursor() as cursor:
                await cursor.executemany(RAW, rows())
            await plain.commit()

    async def through(conn: object, core: bool) -> None:
        await conn.begin()  # type: ignore[attr-defined]
        driver = (await conn.get_raw_connection()).driver_connection  # type: ignore[attr-defined]
        async with driver.pipeline():
            if core:
                await conn.execute(insert, rows())  # type: ignore[attr-defined]
            else:
                async with driver.cursor() as cursor:
                    await cursor.executemany(RAW, rows())
            await conn.commit()  # type: ignore[attr-defined]

    print(f"{transactions} transactions each, one 3-row INSERT + COMMIT in a pipeline:")
    print("| way | wall ms | CPU ms (this process) |")
    print("|---|---|---|")
    async with engine.connect() as conn:
        for name, once in (
            ("psycopg alone", psycopg_alone),
            ("SQLAlchemy connection, statement to the driver", lambda: through(conn, core=False)),
            ("SQLAlchemy Core execute", lambda: through(conn, core=True)),
        ) * 2:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(transactions):
                await once()
            print(f"| {name} | {(time.perf_counter() - wall) / transactions * 1000:.3f} | "
                  f"{(time.process_time() - cpu) / transactions * 1000:.3f} |")
    await plain.close()
    await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=300)
    args = parser.parse_args()

    from agentmesh.storage import upgrade
    from tests.fixtures.postgres import _throwaway_server

    with _throwaway_server() as server:
        server.execute('CREATE DATABASE "bench_tx"')
        url = server.url("bench_tx")
        upgrade(url)
        asyncio.run(run(url, args.transactions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
