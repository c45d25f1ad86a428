"""The dead-letter store: every refused message or reading, kept with its reason for inspection and replay."""

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosqlite
from pydantic import JsonValue

from collector.durable_sqlite import DurableSqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    reading_index INTEGER,
    reading TEXT,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters(reason);
"""

# fmt: off
REASONS = (
    "too_large", "bad_topic", "not_utf8", "bad_json", "bad_envelope", "topic_mismatch",
    "bad_status", "bad_health", "bad_reading", "unknown_kind", "bad_channel",
    "invalid_values", "foreign_device", "clock_unset", "time_in_future",
    "conflicting_duplicate", "influx_refused",
)
# fmt: on
"""Every reason code the ingest gives a dead letter, as docs/wire-contract.md's table lists them."""


@dataclass(frozen=True)
class DeadLetter:
    """One refused message (``payload`` set) or reading (``reading`` set)."""

    id: int
    received_at: datetime
    topic: str
    reason: str
    detail: str
    reading_index: int | None
    reading: JsonValue
    payload: bytes | None


class DeadLetterStore(DurableSqlite):
    """An SQLite file of refusals; safe to read with the sqlite3 shell while the ingest runs.

    A refused reading keeps the reading's JSON; a refused message keeps its
    exact payload bytes (it may not even be UTF-8).
    """

    schema = _SCHEMA

    async def add_message(self, topic: str, payload: bytes, reason: str, detail: str) -> None:
        await self.add_many(topic, [(reason, detail, None, None)], payload=payload)

    async def add_many(
        self,
        topic: str,
        items: list[tuple[str, str, int | None, JsonValue]],
        *,
        payload: bytes | None = None,
    ) -> None:
        """Store refusals (reason, detail, reading index, reading) from one message in one commit."""
        now = datetime.now(UTC).isoformat()
        rows = [
            (
                now,
                topic,
                reason,
                detail,
                index,
                None if reading is None else json.dumps(reading, ensure_ascii=False),
                payload,
            )
            for reason, detail, index, reading in items
        ]
        await self.db.executemany(
            "INSERT INTO dead_letters (received_at, topic, reason, detail, reading_index, "
            "reading, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        await self.db.commit()

    async def list(
        self, *, reason: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadLetter]:
        """Oldest first; page with ``after_id`` = the last id of the previous page."""
        query = "SELECT * FROM dead_letters WHERE id > ?"
        params: tuple[object, ...] = (after_id,)
        if reason is not None:
            query += " AND reason = ?"
            params = (*params, reason)
        query += " ORDER BY id LIMIT ?"
        async with self.db.execute(query, (*params, limit)) as cursor:
            return [_row(r) for r in await cursor.fetchall()]

    async def remove(self, letter_id: int) -> None:
        """Forget a dead letter whose content is now stored (a successful replay)."""
        await self.db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
        await self.db.commit()

    async def refuse_again(self, letter_id: int, reason: str, detail: str) -> None:
        """A replay failed: keep the letter under the reason it failed with now."""
        await self.db.execute(
            "UPDATE dead_letters SET reason = ?, detail = ? WHERE id = ?",
            (reason, detail, letter_id),
        )
        await self.db.commit()

    async def get(self, letter_id: int) -> DeadLetter | None:
        async with self.db.execute("SELECT * FROM dead_letters WHERE id = ?", (letter_id,)) as cur:
            row = await cur.fetchone()
        return _row(row) if row is not None else None

    async def unknown_reason(self, reason: str) -> str | None:
        """Why selecting ``reason`` can find no letter, ever; None for a code of REASONS or
        one this store holds (an older ingest's)."""
        if reason in REASONS:
            return None
        held = await self.counts()
        if reason in held:
            return None
        older = [r for r in held if r not in REASONS]
        return f"{reason!r} is no reason code; the ingest's: {', '.join(REASONS)}" + (
            f"; this store also holds: {', '.join(older)}" if older else ""
        )

    async def counts(self) -> dict[str, int]:
        """Number of dead letters per reason."""
        async with self.db.execute(
            "SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason"
        ) as cursor:
            return {str(r[0]): int(r[1]) for r in await cursor.fetchall()}


def _row(row: aiosqlite.Row | tuple[object, ...]) -> DeadLetter:
    (letter_id, received_at, topic, reason, detail, index, reading, payload) = tuple(row)
    return DeadLetter(
        id=int(str(letter_id)),
        received_at=datetime.fromisoformat(str(received_at)),
        topic=str(topic),
        reason=str(reason),
        detail=str(detail),
        reading_index=None if index is None else int(str(index)),
        reading=None if reading is None else json.loads(str(reading)),
        payload=payload if isinstance(payload, bytes) else None,
    )
