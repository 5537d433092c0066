"""A psycopg pipeline that sends its statements together, when it syncs.

psycopg's pipeline mode flushes the connection after every statement: one ``send()`` system call per statement,
each waking the server's backend. A step transition of the planner is about a dozen statements, and on a busy
machine those sends were most of the transition's CPU time (py-spy: ~55% of the planner's end-of-step
transaction inside ``send``). This pipeline leaves the statements in libpq's output buffer until the pipeline
syncs (on exit, ``sync()``, or a read of a result), so a transaction's statements go out in one write and its
results come back together. libpq still sends on its own when its buffer passes 8 kB, reading as it writes, so a
long pipeline cannot deadlock against the server.

It overrides how psycopg's pipeline sends queued statements (``_communicate_gen`` after each statement, and
the sync, fetch and exit steps that send them); results are processed by psycopg's own code.
``tests/integration/test_storage_pipeline.py`` pins the behaviour on the installed psycopg.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection, AsyncPipeline
from psycopg.abc import PQGen
from psycopg.generators import send

__all__ = ["batched_pipeline", "queue_begin", "queue_commit"]


class _BatchedPipeline(AsyncPipeline):
    """Queues statements without sending them; a sync, a fetch of a result and the exit send all of them at once.

    psycopg's own loop (``pipeline_communicate``) hands libpq one statement per turn of the event loop and flushes
    after each. Here every queued statement goes into libpq's buffer in one go, then one flush sends them.
    """

    def _communicate_gen(self) -> PQGen[None]:
        return  # after each statement is queued: keep it queued
        yield

    def _send_queued_gen(self) -> PQGen[None]:
        while self.command_queue:
            self.command_queue.popleft()()
        yield from send(self.pgconn)  # flushes all of it, reading meanwhile so the server never blocks on us

    def _sync_gen(self) -> PQGen[None]:
        self._enqueue_sync()
        yield from self._send_queued_gen()
        yield from super()._fetch_gen(flush=False)

    def _exit_gen(self) -> PQGen[None]:
        try:
            self._enqueue_sync()
            yield from self._send_queued_gen()
        finally:
            yield from super()._fetch_gen(flush=True)

    def _fetch_gen(self, *, flush: bool) -> PQGen[None]:
        if self.command_queue:  # a result is read before the pipeline synced: send what it depends on first
            yield from self._send_queued_gen()
        yield from super()._fetch_gen(flush=flush)


@contextlib.asynccontextmanager
async def batched_pipeline(connection: AsyncConnection[Any]) -> AsyncIterator[AsyncPipeline]:
    """Like ``connection.pipeline()``, but statements are sent when the pipeline syncs, in one write."""
    async with connection.lock:
        if connection._pipeline is not None:  # nested: the outer pipeline's mode holds
            pipeline = connection._pipeline
        else:
            pipeline = connection._pipeline = _BatchedPipeline(connection)
    try:
        async with pipeline:
            yield pipeline
    finally:
        if pipeline.level == 0:
            async with connection.lock:
                connection._pipeline = None


async def queue_begin(connection: AsyncConnection[Any]) -> None:
    """Queue BEGIN as the pipeline's first statement; the connection must be in autocommit mode.

    On a connection out of autocommit, psycopg starts each transaction itself and, in a pipeline, waits for that
    BEGIN's answer before anything else is sent: a round trip of its own. In autocommit psycopg adds nothing, and
    the BEGIN goes out with the statements it opens.
    """
    if not connection.autocommit:
        raise ValueError("queue_begin needs a connection in autocommit mode (psycopg would begin on its own)")
    await connection.execute("BEGIN")


async def queue_commit(connection: AsyncConnection[Any]) -> None:
    """Queue COMMIT as the pipeline's last statement, sent with the rest when the pipeline exits.

    ``connection.commit()`` in a pipeline syncs at once and the exit syncs again: two writes and two waits for
    the server where one does. An error in any statement surfaces at the exit; the server then skips the rest,
    COMMIT included, and the transaction is left aborted for the caller to roll back or discard.
    """
    await connection.execute("COMMIT")
