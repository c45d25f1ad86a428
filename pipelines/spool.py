"""The ingest's durable spool: batches InfluxDB could not take yet, on disk, so their messages can be acknowledged.

While InfluxDB is down or failing, a batch is committed here (SQLite, WAL,
``synchronous=FULL``) and its MQTT messages are acknowledged: the spool, not
the broker's queue, now holds them. A drainer writes the spool back oldest
first once InfluxDB answers again. Within the byte budget only: beyond it the
writer keeps retrying in place, so acknowledgements stop and the broker holds
the rest (backpressure, never a drop).
"""

import json
import logging
from pathlib import Path

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

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        super().__init__(path)
        self.max_bytes = max_bytes
        self.points = 0
        self.bytes = 0

    async def opened(self) -> None:
        async with self.db.execute(
            "SELECT total(count), total(length(points)) FROM batches"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self.points, self.bytes = int(row[0]), int(row[1])
        if self.points:
            log.warning("%d points spooled before the last stop wait for InfluxDB", self.points)

    async def add(self, batch: list[Point]) -> bool:
        """Commit a batch; False (nothing stored) if it would exceed the budget."""
        body = json.dumps([[p.line, p.kind, p.topic, p.reading] for p in batch])
        if self.bytes + len(body) > self.max_bytes:
            return False
        await self.db.execute(
            "INSERT INTO batches (points, count) VALUES (?, ?)", (body, len(batch))
        )
        await self.db.commit()
        self.points += len(batch)
        self.bytes += len(body)
        return True

    async def oldest(self) -> tuple[int, list[Point]] | None:
        async with self.db.execute("SELECT id, points FROM batches ORDER BY id LIMIT 1") as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        points = [
            Point(line, kind, topic, bool(reading))
            for line, kind, topic, reading in json.loads(row[1])
        ]
        return int(row[0]), points

    async def remove(self, batch_id: int) -> None:
        async with self.db.execute(
            "SELECT count, length(points) FROM batches WHERE id = ?", (batch_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return
        await self.db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        await self.db.commit()
        self.points -= int(row[0])
        self.bytes -= int(row[1])
