"""The spool's writer and drainer share one SQLite connection: a failed delete must not take the
writer's acknowledged batch with it when it rolls back."""

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path

from pipelines.points import Point
from pipelines.spool import Spool

_BUDGET = 1 << 20


def _batch(n: int) -> list[Point]:
    return [Point(f"turns value={i} {n * 1000 + i}", "test", "t/turns") for i in range(10)]


def _first_lines(path: Path) -> list[str]:
    """The first line of each batch in the file, oldest first."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT points FROM batches ORDER BY id").fetchall()
    return [json.loads(row[0])[0][0] for row in rows]


async def test_a_failed_delete_does_not_roll_back_the_writers_acknowledged_batch(
    tmp_path: Path,
) -> None:
    """The drainer's delete fails (as on a locked or full file) while the writer's insert is
    queued behind it on the connection's thread: the writer's batch must still be on disk.

    Each of aiosqlite's calls is one turn of its thread, so without turns the thread runs
    the failed DELETE, the writer's INSERT, the drainer's ROLLBACK (taking the INSERT with
    it), then the writer's COMMIT of nothing, and ``add`` says True for a batch on no disk.
    A trigger planted in the file gives the DELETE a function that holds the thread until
    the writer has had its chance to queue the INSERT, then fails: the long wait of a
    locked file, without the waiting."""
    path = tmp_path / "spool.sqlite3"
    loop = asyncio.get_running_loop()
    writer: asyncio.Task[bool] | None = None

    async def start_writer() -> None:
        nonlocal writer
        writer = asyncio.create_task(spool.add(_batch(2)))
        # The task runs up to its first real wait: a call queued to the connection's thread,
        # or the spool's turn taken by the drainer.
        for _ in range(3):
            await asyncio.sleep(0)

    def delete_fails() -> None:
        asyncio.run_coroutine_threadsafe(start_writer(), loop).result(timeout=30)
        raise RuntimeError("the file cannot be changed now")

    async with Spool(path, max_bytes=_BUDGET) as spool:
        assert await spool.add(_batch(1))
        with closing(sqlite3.connect(path)) as other:
            other.execute(
                "CREATE TRIGGER fail_delete BEFORE DELETE ON batches BEGIN "
                "SELECT delete_fails(); END"
            )
        await spool.db.create_function("delete_fails", 0, delete_fails)
        oldest = await spool.oldest()
        assert oldest is not None

        assert not await spool.remove(oldest[0])
        assert writer is not None, "the DELETE never reached the trigger"
        acknowledged = await writer
        assert acknowledged, "the writer's batch was refused: nothing raced"
        assert spool.points == 20

    assert _first_lines(path) == ["turns value=0 1000", "turns value=0 2000"], (
        "the drainer's rollback undid the writer's acknowledged insert"
    )
    async with Spool(path, max_bytes=_BUDGET) as reopened:
        assert reopened.points == 20
