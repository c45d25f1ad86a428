"""The gateway's durable outbox: every reading is on disk before it is published, and leaves only on PUBACK.

An SQLite file in WAL mode with ``synchronous=FULL``: a committed reading
survives kill -9 and power loss. Readings are committed in groups (every
``commit_interval_s``, 0.25 s by default), so a power cut costs at most the
readings taken in the last group that was not yet committed; kill -9 the same.

The message being published is stored with its sequence number and exact
payload in the same transaction that reserves the number, so after a crash it
is sent again byte for byte: the ingest sees a repeated ``seq`` (counted as a
duplicate) and InfluxDB the same points (no duplicate data).
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from collector.durable_sqlite import DurableSqlite
from collector.wire import ReadingsMessage
from devices import Reading

log = logging.getLogger("ecotel.gateway.outbox")

Lane = Literal["live", "backlog"]
FullPolicy = Literal["drop_oldest", "drop_newest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    taken_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inflight (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    ids TEXT NOT NULL,
    lane TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutgoingMessage:
    """A message reserved for publishing: its number, its exact bytes and the readings it carries."""

    seq: int
    payload: bytes
    ids: list[int]
    lane: Lane


class Outbox(DurableSqlite):
    """Store-and-forward of readings on disk, with a byte budget and a policy for when it is full."""

    schema = _SCHEMA

    def __init__(self, path: Path, *, max_bytes: int, policy: FullPolicy = "drop_oldest") -> None:
        super().__init__(path)
        self.max_bytes = max_bytes
        self.policy = policy
        self._bytes = 0
        self._count = 0
        self._live_floor = 0
        self._last_id = 0
        # Lane sizes kept in memory: counting a days-long backlog per message would not scale.
        self._live = self._backlog = 0
        self.dropped = 0

    async def opened(self) -> None:
        async with self.db.execute(
            "SELECT count(*), total(length(body)), max(id) FROM readings"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self._count, self._bytes = int(row[0]), int(row[1])
        # Whatever is on disk at start is backlog: it waited through an outage.
        self._last_id = self._live_floor = int(row[2] or 0)
        self._live, self._backlog = 0, self._count
        self.dropped = await self._meta("dropped")

    @property
    def pending(self) -> int:
        """Readings on disk not yet acknowledged by the broker."""
        return self._count

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def mark_live(self) -> None:
        """Everything stored so far becomes backlog; what is taken from now on is live."""
        self._live_floor = max(self._live_floor, self._last_id)
        self._backlog += self._live
        self._live = 0

    async def add(self, readings: list[Reading]) -> int:
        """Commit readings (one transaction); returns how many the full-disk policy dropped."""
        if not readings:
            return 0
        rows = [(r.time.isoformat(), r.model_dump_json(exclude_none=True)) for r in readings]
        incoming = sum(len(body) for _, body in rows)
        dropped = 0
        if self._bytes + incoming > self.max_bytes:
            if self.policy == "drop_newest":
                dropped = len(rows)
                await self._count_dropped(dropped)
                return dropped
            dropped = await self._drop_oldest(self._bytes + incoming - self.max_bytes)
        cursor = await self.db.executemany(
            "INSERT INTO readings (taken_at, body) VALUES (?, ?)", rows
        )
        await cursor.close()
        await self.db.commit()
        async with self.db.execute("SELECT max(id) FROM readings") as cur:
            row = await cur.fetchone()
        self._last_id = int(row[0] or 0) if row else self._last_id
        self._count += len(rows)
        self._live += len(rows)
        self._bytes += incoming
        return dropped

    async def _drop_oldest(self, need: int) -> int:
        # Never the readings of the message in flight: the broker may have them.
        busy = set(await self._inflight_ids())
        freed = dropped = 0
        ids: list[int] = []
        async with self.db.execute("SELECT id, length(body) FROM readings ORDER BY id") as cur:
            async for reading_id, size in cur:
                if freed >= need:
                    break
                if reading_id in busy:
                    continue
                ids.append(int(reading_id))
                freed += int(size)
                dropped += 1
        await self._delete(ids)
        self._forget(ids)
        self._bytes -= freed
        self._count -= dropped
        await self._count_dropped(dropped)
        return dropped

    async def _count_dropped(self, n: int) -> None:
        self.dropped += n
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = ?",
            (self.dropped, self.dropped),
        )
        await self.db.commit()

    async def inflight(self) -> OutgoingMessage | None:
        """The message reserved but not acknowledged before (after a crash or a lost link)."""
        async with self.db.execute(
            "SELECT seq, payload, ids, lane FROM inflight ORDER BY seq"
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return OutgoingMessage(int(row[0]), bytes(row[1]), json.loads(row[2]), row[3])

    async def _inflight_ids(self) -> list[int]:
        message = await self.inflight()
        return message.ids if message else []

    async def lanes(self) -> tuple[int, int]:
        """(live, backlog) readings waiting, the message in flight included."""
        return self._live, self._backlog

    def _forget(self, ids: list[int]) -> None:
        backlog = sum(1 for i in ids if i <= self._live_floor)
        self._backlog -= backlog
        self._live -= len(ids) - backlog

    async def oldest_taken_at(self) -> datetime | None:
        async with self.db.execute("SELECT taken_at FROM readings ORDER BY id LIMIT 1") as cur:
            row = await cur.fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    async def reserve(
        self, lane: Lane, limit: int, gateway: str, site: str, sent_at: datetime
    ) -> OutgoingMessage | None:
        """Take up to ``limit`` oldest readings of a lane into a numbered message, durably."""
        where = "id > ?" if lane == "live" else "id <= ?"
        async with self.db.execute(
            f"SELECT id, body FROM readings WHERE {where} ORDER BY id LIMIT ?",
            (self._live_floor, limit),
        ) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            return None
        seq = await self._meta("next_seq")
        message = ReadingsMessage(
            gateway=gateway,
            site=site,
            seq=seq,
            sent_at=sent_at,
            readings=[Reading.model_validate_json(body) for _, body in rows],
        )
        ids = [int(r[0]) for r in rows]
        payload = message.encode()
        await self.db.execute(
            "INSERT INTO inflight (seq, payload, ids, lane) VALUES (?, ?, ?, ?)",
            (seq, payload, json.dumps(ids), lane),
        )
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = ?",
            (seq + 1, seq + 1),
        )
        await self.db.commit()
        return OutgoingMessage(seq, payload, ids, lane)

    async def acknowledged(self, message: OutgoingMessage) -> None:
        """The broker has the message: its readings leave the outbox (one transaction)."""
        async with self.db.execute(
            f"SELECT total(length(body)), count(*) FROM readings WHERE id IN "
            f"({','.join('?' * len(message.ids))})",
            message.ids,
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        await self._delete(message.ids, commit=False)
        await self.db.execute("DELETE FROM inflight WHERE seq = ?", (message.seq,))
        await self.db.commit()
        self._bytes -= int(row[0])
        self._count -= int(row[1])
        self._forget(message.ids)

    async def _delete(self, ids: list[int], *, commit: bool = True) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            await self.db.execute(
                f"DELETE FROM readings WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
        if commit:
            await self.db.commit()

    async def remembered(self, key: str) -> int:
        """A small number the gateway keeps across restarts (0 if never set)."""
        return await self._meta(key)

    async def remember(self, key: str, value: int) -> None:
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
            (key, value, value),
        )
        await self.db.commit()

    async def _meta(self, key: str) -> int:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
