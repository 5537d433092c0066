"""On SQLite the registry's reads never wait for the write lock (WAL readers run beside a writer)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from agentmesh import storage
from agentmesh.services.registry.store import RegistryStore


async def test_reads_go_on_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mesh.db'}"
    storage.upgrade(url)
    engine = storage.create_async_engine(url)
    writer = sqlite3.connect(tmp_path / "mesh.db", isolation_level=None)
    try:
        store = RegistryStore(engine)
        writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
        started = time.monotonic()
        assert await store.events_since(0) == []
        assert await store.oldest_revision() == 0
        assert await store.lease_expiries(["nobody"]) == {}
        revision, *_ = await store.load_snapshot()
        assert revision == 0
        assert time.monotonic() - started < 1.0  # a write-locking read would wait out the busy timeout
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await engine.dispose()
