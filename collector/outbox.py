"""The gateway's durable outbox: every reading is on disk before it is published, and leaves only on PUBACK.

An SQLite file in WAL mode with ``synchronous=FULL``: a committed reading
survives kill -9 and power loss. Readings are committed in groups (every
``commit_interval_s``, 0.25 s by default), so a power cut costs at most the
readings taken in the last group that was not yet committed; kill -9 the same.

The message being published is stored with its sequence number and exact
payload in the same transaction that reserves the number, so after a crash it
is sent again byte for byte: the ingest sees a repeated ``seq`` (counted as a
duplicate) and InfluxDB the same points (no duplicate data). Several messages
may be in flight at once; each is its own row until its PUBACK.

A write that finds the disk full (SQLITE_FULL) raises ``DiskFull`` instead of
SQLite's error: readings that could not be committed are counted as dropped,
and the gateway carries on, since only publishing (which deletes) frees space.
"""

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeGuard

from collector.clock import Anchor
from collector.durable_sqlite import DurableSqlite
from collector.wire import ReadingsMessage
from devices import Reading

log = logging.getLogger("ecotel.gateway.outbox")

Lane = Literal["live", "backlog"]
FullPolicy = Literal["drop_oldest", "drop_newest"]

MAX_PAGES_ENV = "ECOTEL_TEST_OUTBOX_MAX_PAGES"
"""Test only: SQLite's ``max_page_count`` for the outbox, a disk that fills without root.
A real station never sets it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    taken_at TEXT NOT NULL,
    body TEXT NOT NULL,
    -- Readings taken while the wall clock was untrusted wait here (held = 1)
    -- with the boot and monotonic time that can correct their timestamp.
    held INTEGER NOT NULL DEFAULT 0,
    boot TEXT,
    mono REAL
);
CREATE TABLE IF NOT EXISTS inflight (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    ids TEXT NOT NULL,
    lane TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DiskFull(Exception):
    """No room on the disk for an outbox write (SQLITE_FULL); nothing of it was committed."""

    def __init__(self, path: Path, cause: sqlite3.OperationalError, dropped: int = 0) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause
        self.dropped = dropped
        """Readings that were not committed and are counted as dropped (``Outbox.add``)."""


def _is_full(exc: BaseException) -> TypeGuard[sqlite3.OperationalError]:
    return (
        isinstance(exc, sqlite3.OperationalError)
        and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    )


@dataclass(frozen=True)
class OutgoingMessage:
    """A message reserved for publishing: its number, its exact bytes and the readings it carries."""

    seq: int
    payload: bytes
    ids: list[int]
    lane: Lane
    size: int | None = None
    """Bytes its readings take in the outbox; None when read back after a restart."""


class Outbox(DurableSqlite):
    """Store-and-forward of readings on disk, with a byte budget and a policy for when it is full."""

    schema = _SCHEMA
    # Its counts are kept in memory and written back whole: two gateways on one outbox would
    # each write their own, and its pending count would be wrong for good.
    single_process = True

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        policy: FullPolicy = "drop_oldest",
        boot_id: str = "unknown-boot",
    ) -> None:
        super().__init__(path)
        self.boot_id = boot_id
        self.held = 0
        """Readings of this boot waiting for the clock; not publishable yet."""
        self.max_bytes = max_bytes
        self.policy = policy
        self._bytes = 0
        self._count = 0
        self._live_floor = 0
        self._last_id = 0
        # Lane sizes kept in memory: counting a days-long backlog per message would not scale.
        self._live = self._backlog = 0
        self.dropped = 0
        # Drops not yet in meta.dropped: those of a full disk are counted in memory and
        # written with the next transaction that commits.
        self._dropped_saved = 0
        # Messages reserved and not yet acknowledged, by seq: the next reservation
        # of a lane starts after the newest of them.
        self._sending: dict[int, OutgoingMessage] = {}
        self._next_seq = 0
        # One writer at a time: sqlite3 commits whatever the connection has pending,
        # so two coroutines interleaving statements would commit each other's halves.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            dropped = self.dropped
            try:
                if dropped != self._dropped_saved:
                    await self._save_dropped(dropped)
                yield
                # A full disk can fail the commit itself (the WAL grows then): rolled back too.
                await self.db.commit()
                self._dropped_saved = max(self._dropped_saved, dropped)
            except BaseException as exc:
                await self.db.rollback()
                if _is_full(exc):
                    raise DiskFull(self.path, exc) from exc
                raise

    async def opened(self) -> None:
        if pages := os.environ.get(MAX_PAGES_ENV):
            await self.db.execute(f"PRAGMA max_page_count = {int(pages)}")
        async with self.db.execute("PRAGMA table_info(readings)") as cur:
            columns = {row[1] async for row in cur}
        # An outbox written before clock sanity existed; column by column, as each ALTER
        # commits on its own and opening may be retried.
        for ddl in ("held INTEGER NOT NULL DEFAULT 0", "boot TEXT", "mono REAL"):
            if ddl.split()[0] not in columns:
                await self.db.execute(f"ALTER TABLE readings ADD COLUMN {ddl}")
        # Held readings are few: found through this index, never by a scan of all.
        await self.db.execute(
            "CREATE INDEX IF NOT EXISTS readings_held ON readings(id) WHERE held = 1"
        )
        # Held readings of an earlier boot can no longer be corrected (the monotonic
        # clock restarted): they go out as they are, marked "unsynced".
        released = await self.db.execute(
            "UPDATE readings SET held = 0 WHERE held = 1 AND boot IS NOT ?", (self.boot_id,)
        )
        if released.rowcount:
            log.warning(
                "%d readings taken with an unset clock before a reboot cannot be corrected; "
                "sent marked clock=unsynced",
                released.rowcount,
            )
        await self.db.commit()
        # Counted as they change, not at start: scanning a day's backlog (gigabytes
        # on an SD card) would keep the gateway from polling for a minute or more.
        count, size = await self._meta("count"), await self._meta("bytes")
        if count is None or size is None:  # an outbox from before the counters
            row = await self._one("SELECT count(*), total(length(body)) FROM readings")
            count, size = int(row[0]), int(row[1])
            async with self._transaction():
                await self._store_counts(count, size)
        if count and (await self._one("SELECT max(id) FROM readings"))[0] is None:
            # Counts written by two processes at once before the outbox was locked: none left.
            log.warning("outbox %s counted %d readings and holds none: reset", self.path, count)
            count = size = 0
            async with self._transaction():
                await self._store_counts(0, 0)
        self._count, self._bytes = count, size
        self.held = int((await self._one("SELECT count(*) FROM readings WHERE held = 1"))[0])
        # Whatever is on disk at start is backlog: it waited through an outage.
        self._last_id = self._live_floor = int(
            (await self._one("SELECT max(id) FROM readings"))[0] or 0
        )
        self._live, self._backlog = 0, self._count - self.held
        self.dropped = self._dropped_saved = await self._meta("dropped") or 0
        # Never below a number already in flight, whatever wrote the file.
        top = (await self._one("SELECT max(seq) FROM inflight"))[0]
        self._next_seq = max(await self._meta("next_seq") or 0, 0 if top is None else int(top) + 1)

    async def limit_journal(self, max_bytes: int) -> None:
        """Keep the write-ahead log under ``max_bytes`` (SQLite's default lets it reach ~4 MB):
        on a small disk the log, not the readings, would fill it, and nothing could be sent."""
        pages = max(16, max_bytes // 4096)
        await self.db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        await self.db.execute(f"PRAGMA journal_size_limit = {pages * 4096}")

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

    async def add(self, readings: list[Reading], mono: list[float | None] | None = None) -> int:
        """Commit readings (one transaction); returns how many the full-budget policy dropped.

        ``mono[i]``, when given, is the monotonic time of a reading taken while the
        wall clock was untrusted: it is held until ``correct_held``. On a full disk
        none is committed: they are counted as dropped and ``DiskFull`` says how many.
        """
        if not readings:
            return 0
        monos = mono or [None] * len(readings)
        rows = [
            (
                r.time.isoformat(),
                r.model_dump_json(exclude_none=True),
                0 if m is None else 1,
                None if m is None else self.boot_id,
                m,
            )
            for r, m in zip(readings, monos, strict=True)
        ]
        held = sum(1 for m in monos if m is not None)
        incoming = sum(len(row[1]) for row in rows)
        gone = _Dropped([], [], 0)
        refused = self._bytes + incoming > self.max_bytes and self.policy == "drop_newest"
        try:
            async with self._transaction():
                if refused:
                    await self._save_dropped(self.dropped + len(rows))
                else:
                    if self._bytes + incoming > self.max_bytes:
                        gone = await self._drop_oldest(self._bytes + incoming - self.max_bytes)
                        await self._save_dropped(self.dropped + gone.count)
                    await self._insert(rows, gone, incoming)
                row = await self._one("SELECT max(id) FROM readings")
        except DiskFull as full:
            # Nothing of this transaction is on disk, the oldest readings it deleted included.
            self.dropped += len(rows)
            raise DiskFull(self.path, full.cause, len(rows)) from full.cause
        if refused:
            self.dropped += len(rows)
            self._dropped_saved = self.dropped
            return len(rows)
        # In memory only once committed: a rolled-back drop must not change the counts.
        self._forget(gone.ids)
        self.held -= len(gone.held)
        self.dropped += gone.count
        self._dropped_saved = self.dropped
        self._last_id = int(row[0] or 0)
        self._count += len(rows) - gone.count
        self._live += len(rows) - held
        self.held += held
        self._bytes += incoming - gone.size
        return gone.count

    async def _insert(
        self, rows: Sequence[tuple[object, ...]], gone: "_Dropped", size: int
    ) -> None:
        """Insert the rows and the counts they make, less what ``gone`` deleted; in a transaction."""
        cursor = await self.db.executemany(
            "INSERT INTO readings (taken_at, body, held, boot, mono) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        await cursor.close()
        await self._store_counts(
            self._count - gone.count + len(rows), self._bytes - gone.size + size
        )

    async def correct_held(self, anchor: Anchor) -> int:
        """The clock is trusted again: give this boot's held readings their true time and release them."""
        updates = []
        grown = 0
        async with self._transaction():
            async with self.db.execute(
                "SELECT id, mono, body FROM readings WHERE held = 1 AND boot = ?", (self.boot_id,)
            ) as cur:
                rows = list(await cur.fetchall())
            for reading_id, mono, body in rows:
                reading = Reading.model_validate_json(body)
                fixed = reading.model_copy(
                    update={"time": anchor.wall_at(float(mono)), "clock": "corrected"}
                )
                new_body = fixed.model_dump_json(exclude_none=True)
                grown += len(new_body) - len(body)
                updates.append((fixed.time.isoformat(), new_body, int(reading_id)))
            await self.db.executemany(
                "UPDATE readings SET taken_at = ?, body = ?, held = 0 WHERE id = ?", updates
            )
            await self._store_counts(self._count, self._bytes + grown)
        self._bytes += grown
        for _, _, reading_id in updates:
            if reading_id <= self._live_floor:
                self._backlog += 1
            else:
                self._live += 1
        self.held -= len(updates)
        return len(updates)

    async def _drop_oldest(self, need: int) -> "_Dropped":
        """Delete the oldest readings until ``need`` bytes are free; inside a transaction.

        The counts in memory are the caller's to change, once the transaction commits."""
        # Never the readings of a message in flight: the broker may have them.
        busy = set(await self._inflight_ids())
        freed = 0
        ids: list[int] = []
        held: list[int] = []
        async with self.db.execute(
            "SELECT id, length(body), held FROM readings ORDER BY id"
        ) as cur:
            async for reading_id, size, is_held in cur:
                if freed >= need:
                    break
                if reading_id in busy:
                    continue
                (held if is_held else ids).append(int(reading_id))
                freed += int(size)
        await self._delete(ids + held)
        return _Dropped(ids, held, freed)

    async def _save_dropped(self, total: int) -> None:
        """Write the persistent drop count; inside a transaction."""
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = ?",
            (total, total),
        )

    async def inflight(self) -> OutgoingMessage | None:
        """The oldest message reserved but not acknowledged (after a crash or a lost link)."""
        messages = await self._read_inflight()
        return messages[0] if messages else None

    async def inflight_messages(self) -> list[OutgoingMessage]:
        """Every message reserved but not acknowledged, oldest first; they go out again first."""
        messages = await self._read_inflight()
        self._sending = {m.seq: m for m in messages}
        return messages

    async def _read_inflight(self) -> list[OutgoingMessage]:
        # Under the lock: after any acknowledgement still being written.
        async with (
            self._lock,
            self.db.execute("SELECT seq, payload, ids, lane FROM inflight ORDER BY seq") as cur,
        ):
            rows = list(await cur.fetchall())
        return [OutgoingMessage(int(r[0]), bytes(r[1]), json.loads(r[2]), r[3]) for r in rows]

    async def _inflight_ids(self) -> list[int]:
        async with self.db.execute("SELECT ids FROM inflight") as cur:
            return [i for (ids,) in await cur.fetchall() for i in json.loads(ids)]

    def sending_seqs(self) -> list[int]:
        """Numbers of the messages reserved and not yet acknowledged."""
        return list(self._sending)

    async def lanes(self) -> tuple[int, int]:
        """(live, backlog) readings waiting to be reserved (not those in flight)."""
        live, backlog = self._live, self._backlog
        for message in self._sending.values():
            if message.ids[-1] <= self._live_floor:
                backlog -= len(message.ids)
            else:
                live -= len(message.ids)
        return max(live, 0), max(backlog, 0)

    def _forget(self, ids: list[int]) -> None:
        backlog = sum(1 for i in ids if i <= self._live_floor)
        self._backlog -= backlog
        self._live -= len(ids) - backlog

    async def oldest_taken_at(self) -> datetime | None:
        async with self.db.execute(
            "SELECT taken_at FROM readings WHERE held = 0 ORDER BY id LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    async def reserve(
        self, lane: Lane, limit: int, gateway: str, site: str, sent_at: datetime
    ) -> OutgoingMessage | None:
        """Take up to ``limit`` oldest readings of a lane into a numbered message, durably.

        Readings of messages still in flight are not taken again. Messages left
        from before (``inflight_messages``) must be acknowledged first: the lanes'
        bounds may have moved since they were reserved.
        """
        low, high = (self._live_floor, None) if lane == "live" else (0, self._live_floor)
        # Rows of this lane above the newest one in flight are not reserved yet. A held
        # reading released below it waits until the lane has nothing in flight.
        after = max(
            (
                m.ids[-1]
                for m in self._sending.values()
                if low < m.ids[-1] and (high is None or m.ids[-1] <= high)
            ),
            default=low,
        )
        # The payload is a second copy of its readings until the PUBACK: on a full disk a
        # smaller message may still fit, and each one acknowledged frees room for the next.
        while True:
            try:
                # Few round trips to SQLite's thread per message: under load each
                # one waits to be scheduled.
                async with self._transaction():
                    rows = list(
                        await self.db.execute_fetchall(
                            "SELECT id, body FROM readings WHERE id > ? AND id <= ? AND held = 0 "
                            "ORDER BY id LIMIT ?",
                            (after, high if high is not None else _MAX_ID, limit),
                        )
                    )
                    if not rows:
                        return None
                    seq = self._next_seq
                    ids = [int(r[0]) for r in rows]
                    bodies: list[str] = [r[1] for r in rows]
                    payload = _payload(gateway, site, seq, sent_at, bodies)
                    await self.db.execute(
                        "INSERT INTO inflight (seq, payload, ids, lane) VALUES (?, ?, ?, ?)",
                        (seq, payload, json.dumps(ids), lane),
                    )
                    await self.db.execute(
                        "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = ?",
                        (seq + 1, seq + 1),
                    )
                break
            except DiskFull:
                if limit > 1:
                    limit //= 2
                    continue
                if self._sending:
                    return None  # what is in flight frees room when it is acknowledged
                raise
        self._next_seq = seq + 1
        message = OutgoingMessage(seq, payload, ids, lane, sum(len(b) for b in bodies))
        self._sending[seq] = message
        return message

    async def acknowledged(self, message: OutgoingMessage) -> None:
        """The broker has the message: its readings leave the outbox (one transaction)."""
        async with self._transaction():
            # Nothing else deletes a message's readings while it is in flight, but
            # one read back after a restart does not know their size.
            size, count = message.size, len(message.ids)
            if size is None:
                rows = list(
                    await self.db.execute_fetchall(
                        f"SELECT total(length(body)), count(*) FROM readings WHERE id IN "
                        f"({','.join('?' * len(message.ids))})",
                        message.ids,
                    )
                )
                size, count = int(rows[0][0]), int(rows[0][1])
            await self._delete(message.ids)
            await self.db.execute("DELETE FROM inflight WHERE seq = ?", (message.seq,))
            await self._store_counts(self._count - count, self._bytes - size)
        self._sending.pop(message.seq, None)
        self._bytes -= size
        self._count -= count
        self._forget(message.ids)

    async def _delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            await self.db.execute(
                f"DELETE FROM readings WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )

    async def remembered(self, key: str) -> int:
        """A small number the gateway keeps across restarts (0 if never set)."""
        return await self._meta(key) or 0

    async def remember(self, key: str, value: int) -> None:
        async with self._transaction():
            await self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = ?",
                (key, value, value),
            )

    async def _meta(self, key: str) -> int | None:
        rows = list(await self.db.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,)))
        return int(rows[0][0]) if rows else None

    async def _one(self, sql: str) -> sqlite3.Row:
        """The one row of an aggregate query."""
        rows = list(await self.db.execute_fetchall(sql))
        return rows[0]

    async def _store_counts(self, count: int, size: int) -> None:
        """Readings and bytes in the outbox, in the same transaction that changes them."""
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('count', ?), ('bytes', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (count, size),
        )


_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class _Dropped:
    """Readings deleted by ``drop_oldest`` in a transaction not yet committed."""

    ids: list[int]
    held: list[int]
    size: int

    @property
    def count(self) -> int:
        return len(self.ids) + len(self.held)


def _payload(gateway: str, site: str, seq: int, sent_at: datetime, bodies: list[str]) -> bytes:
    """The message's bytes, exactly as ``ReadingsMessage.encode`` writes them.

    The stored bodies are already the readings' canonical JSON, so they are
    spliced in rather than parsed and written again (most of a drain's CPU).
    The envelope is encoded with the first reading, which proves the splice.
    """
    first = ReadingsMessage(
        gateway=gateway,
        site=site,
        seq=seq,
        sent_at=sent_at,
        readings=[Reading.model_validate_json(bodies[0])],
    ).encode()
    tail = f"[{bodies[0]}]}}".encode()
    if not first.endswith(tail):
        # A body in another form (written by an older version): the slow, sure way.
        return ReadingsMessage(
            gateway=gateway,
            site=site,
            seq=seq,
            sent_at=sent_at,
            readings=[Reading.model_validate_json(b) for b in bodies],
        ).encode()
    return first[: -len(tail)] + f"[{','.join(bodies)}]}}".encode()
