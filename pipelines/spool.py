"""The ingest's durable spool: batches InfluxDB could not take yet, on disk, so their messages can be acknowledged.

While InfluxDB is down or failing, a batch is committed here (SQLite, WAL,
``synchronous=FULL``) and its MQTT messages are acknowledged: the spool, not
the broker's queue, now holds them. A drainer writes the spool back oldest
first once InfluxDB answers again. Within the byte budget only: beyond it the
writer keeps retrying in place, so acknowledgements stop and the broker holds
the rest (backpressure, never a drop). So does a full disk under the file.
"""

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import ClassVar

from collector.durable_sqlite import DurableSqlite
from pipelines.points import Point

log = logging.getLogger("ecotel.ingest.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    points TEXT NOT NULL,
    count INTEGER NOT NULL
);
"""


class Spool(DurableSqlite):
    """Batches of points waiting for InfluxDB, oldest first, within ``max_bytes``."""

    schema = _SCHEMA
    max_pages: ClassVar[int | None] = None
    """Tests only: SQLite's ``max_page_count`` for the file, a full disk without root."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        super().__init__(path)
        self.max_bytes = max_bytes
        self.points = 0
        self.bytes = 0
        # What each kind of change last failed with: said once, until it works again.
        self._trouble: dict[str, str] = {}
        # The writer and the drainer share the connection: a rollback must undo only its own.
        self._changing = asyncio.Lock()

    async def opened(self) -> None:
        if self.max_pages is not None:
            await self.db.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
        await self._count()
        if self.points:
            log.warning("%d points spooled before the last stop wait for InfluxDB", self.points)

    async def _count(self) -> None:
        async with self.db.execute(
            "SELECT total(count), total(length(points)) FROM batches"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self.points, self.bytes = int(row[0]), int(row[1])

    async def add(self, batch: list[Point]) -> bool:
        """Commit a batch; False (nothing stored) if it would exceed the budget or the file
        cannot take it (disk full, locked too long: logged)."""
        body = json.dumps([[p.line, p.kind, p.topic, p.reading] for p in batch])
        if self.bytes + len(body) > self.max_bytes:
            return False
        if not await self._change(
            "INSERT INTO batches (points, count) VALUES (?, ?)",
            (body, len(batch)),
            "new batches",
            f"cannot spool {len(batch)} points",
            "the writer holds them and retries InfluxDB; their messages stay unacknowledged",
        ):
            return False
        self.points += len(batch)
        self.bytes += len(body)
        return True

    async def oldest(self, *, after: int = 0) -> tuple[int, list[Point]] | None:
        """The oldest batch whose id is above ``after``."""
        async with self.db.execute(
            "SELECT id, points FROM batches WHERE id > ? ORDER BY id LIMIT 1", (after,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        points = [
            Point(line, kind, topic, bool(reading))
            for line, kind, topic, reading in json.loads(row[1])
        ]
        return int(row[0]), points

    async def remove(self, batch_id: int) -> bool:
        """Forget a written batch; False if the file cannot be changed now (logged)."""
        async with self.db.execute(
            "SELECT count, length(points) FROM batches WHERE id = ?", (batch_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return True
        if not await self._change(
            "DELETE FROM batches WHERE id = ?",
            (batch_id,),
            "deletes",
            "cannot remove a written batch",
            "it stays on disk (written again after a restart: harmless); retrying",
        ):
            return False
        self.points -= int(row[0])
        self.bytes -= int(row[1])
        return True

    async def _change(
        self, sql: str, params: tuple[object, ...], kind: str, what: str, then: str
    ) -> bool:
        """Execute and commit ``sql``; False, rolled back, if SQLite cannot (said once a streak).

        OperationalError only (full, locked, I/O): the others mean a damaged file or a bug,
        which only a restart can tell, so they stop the ingest."""
        committing = False
        try:
            async with self._changing:
                try:
                    await self.db.execute(sql, params)
                    committing = True
                    await self.db.commit()
                except sqlite3.OperationalError:
                    await self.db.rollback()
                    if committing:
                        # A failed commit may still have reached the file: count it again.
                        await self._count()
                    raise
        except sqlite3.OperationalError as exc:
            if self._trouble.get(kind) != str(exc):
                log.error("%s in %s: %s; %s", what, self.path, exc, then)
                self._trouble[kind] = str(exc)
            return False
        if self._trouble.pop(kind, None) is not None:
            log.info("spool %s takes %s again", self.path, kind)
        return True
