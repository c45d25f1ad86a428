"""Opening a durable SQLite file that another process holds locked (workers sharing a file)."""

import asyncio
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from collector.durable_sqlite import DurableSqlite, StoreUnusable


class _Store(DurableSqlite):
    schema = "CREATE TABLE IF NOT EXISTS facts (x INTEGER);"
    busy_timeout_s = 0.05
    open_timeout_s = 5.0


def _lock(path: Path) -> sqlite3.Connection:
    """Another process's connection, holding the fresh file exclusively (as a worker does
    for an instant while it switches a new shared file to WAL)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE IF NOT EXISTS facts (x INTEGER)")
    other.execute("BEGIN EXCLUSIVE")
    return other


async def test_open_waits_for_a_lock_longer_than_sqlites_busy_wait(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    other = _lock(path)
    asyncio.get_running_loop().call_later(0.5, other.execute, "COMMIT")
    async with _Store(path) as store:
        await store.db.execute("INSERT INTO facts VALUES (1)")
        await store.db.commit()
        async with store.db.execute("PRAGMA journal_mode") as cur:
            assert await cur.fetchone() == ("wal",)
    other.close()


async def test_open_that_gives_up_names_the_lock_and_leaves_no_thread(tmp_path: Path) -> None:
    class Impatient(_Store):
        open_timeout_s = 0.3

    path = tmp_path / "shared.sqlite3"
    other = _lock(path)
    before = set(threading.enumerate())
    with pytest.raises(StoreUnusable, match=re.escape(f"cannot open {path}: database is locked")):
        async with Impatient(path):
            pass
    # A connection thread left behind would keep the failed process from exiting (the event
    # loop's own executor threads, asyncio_N, are not the store's).
    for thread in set(threading.enumerate()) - before:
        if not thread.name.startswith("asyncio_"):
            thread.join(timeout=30)
            assert not thread.is_alive(), thread
    other.close()
