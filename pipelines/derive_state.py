"""The windows waiting for recomputation, on disk: a restart of the ingest forgets none of them.

A window is marked once its raw readings are in InfluxDB and before their
messages are acknowledged; it is cleared only if nobody marked it again while
it was being recomputed (the version column). It is due once nothing touched it
for its delay, or once it has waited ``CEILING`` times its delay in all. A shared
group's workers on one host mark windows in one file, and a worker claims the windows
it recomputes, so that each is recomputed once rather than by every worker.
"""

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import aiosqlite

from collector.durable_sqlite import DurableSqlite, StoreUnusable
from pipelines.analytics.energy import Window
from pipelines.line_protocol import moment_ns, timestamp_ns

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirty (
    family TEXT NOT NULL,
    site TEXT NOT NULL,
    window TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    since REAL NOT NULL,
    touched REAL NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    claimed_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (family, site, window, start_ns)
);
CREATE TABLE IF NOT EXISTS holds (
    holder TEXT PRIMARY KEY,
    since REAL NOT NULL
);
"""


CEILING = 5
"""A window touched without pause is still recomputed after this many times its delay."""

CLAIM_S = 120.0
"""How long a worker's claim on a window lasts: a worker killed while recomputing it leaves
it to the others after this."""


@dataclass(frozen=True, order=True)
class WindowKey:
    """One window of one site's figures: ``family`` is "datacenter" or "traffic"."""

    family: str
    site: str
    window: Window
    start: datetime


_MARK = (
    "INSERT INTO dirty (family, site, window, start_ns, since, touched) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO UPDATE SET version = version + 1, touched = max(touched, excluded.touched)"
)


def _where(key: WindowKey) -> tuple[str, str, str, int]:
    return key.family, key.site, key.window.value, timestamp_ns(key.start)


class DirtyWindows(DurableSqlite):
    """Windows touched by readings since they were last recomputed.

    A worker whose raw points wait in its spool (InfluxDB was down) *holds* the file: its
    marked windows would be computed without them, so nobody claims any window until it
    has written them and released its hold.
    """

    schema = _SCHEMA

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path)
        self.clock = clock
        # One connection, used by the marking and the recomputing tasks: a transaction of
        # one must not interleave with a statement of the other.
        self._lock = asyncio.Lock()
        self._claims: dict[WindowKey, float] = {}

    async def opened(self) -> None:
        # Files from before the debounce lack ``touched``: their windows count as quiet.
        async with self.db.execute("PRAGMA table_info(dirty)") as cur:
            columns = {row[1] async for row in cur}
        if "touched" not in columns:
            await self.db.execute("ALTER TABLE dirty ADD COLUMN touched REAL NOT NULL DEFAULT 0")
        if "claimed_until" not in columns:
            await self.db.execute(
                "ALTER TABLE dirty ADD COLUMN claimed_until REAL NOT NULL DEFAULT 0"
            )
        await self.db.commit()

    async def absorb(self, old: Path) -> int:
        """Take over the marks of another file (a worker's own, from before a group shared
        one file), then delete it; the number of windows taken."""
        try:
            async with (
                aiosqlite.connect(old) as source,
                source.execute("SELECT family, site, window, start_ns, since FROM dirty") as cur,
            ):
                rows = [(*row, row[4]) for row in await cur.fetchall()]
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # locked, an I/O error: its marks must stay
                raise StoreUnusable(old, exc) from exc
            rows = []  # taken over and deleted by another worker meanwhile (connect made it anew)
        except sqlite3.DatabaseError as exc:  # damaged: the operator decides, the file is named
            raise StoreUnusable(old, exc) from exc
        async with self._lock:
            await self.db.executemany(_MARK, rows)
            await self.db.commit()
        for name in (old.name, f"{old.name}-wal", f"{old.name}-shm"):
            await asyncio.to_thread(old.with_name(name).unlink, missing_ok=True)
        return len(rows)

    async def mark(self, keys: set[WindowKey], *, hold: str | None = None) -> None:
        """Mark windows dirty (one transaction); an already dirty one keeps its ``since``
        and is ``touched`` again. ``hold``: the marking worker's name, its points still in
        its spool: held in the same transaction, so that no one claims them meanwhile."""
        if not keys and hold is None:
            return
        now = self.clock()
        async with self._lock:
            await self.db.executemany(
                _MARK,
                [(k.family, k.site, k.window.value, timestamp_ns(k.start), now, now) for k in keys],
            )
            if hold is not None:
                await self.db.execute(
                    "INSERT INTO holds (holder, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (hold, now),
                )
            await self.db.commit()

    async def release(self, holder: str) -> None:
        """``holder``'s spooled points are in InfluxDB: its windows may be claimed."""
        async with self._lock:
            await self.db.execute("DELETE FROM holds WHERE holder = ?", (holder,))
            await self.db.commit()

    async def holders(self) -> dict[str, float]:
        """Who holds the file, since when (``clock()``, by default time.time())."""
        async with self._lock, self.db.execute("SELECT holder, since FROM holds") as cur:
            return {str(holder): float(since) for holder, since in await cur.fetchall()}

    async def due(
        self, delays: dict[Window, timedelta], *, held: bool = False
    ) -> list[tuple[WindowKey, int]]:
        """Windows untouched for their delay, or dirty for ``CEILING`` delays, with the version
        seen; oldest windows first. ``held`` (the ingest is behind): only the latter.

        Debounced because a backlog touches the same windows with every message: recomputed
        every delay, each was computed ~50 times instead of once (docs/performance.md).
        """
        async with self._lock:
            return await self._due(delays, held, self.clock(), unclaimed=False)

    async def claim(
        self, delays: dict[Window, timedelta], *, held: bool = False
    ) -> tuple[WindowKey, int] | None:
        """The oldest of ``due``'s windows that nobody has claimed, claimed for ``CLAIM_S``;
        None if there is none, or while a worker holds the file. A shared group's workers
        mark windows in one file and each window is recomputed by one of them rather than
        by all (each a query load on InfluxDB); one at a time, so that a claim never
        outlasts its lease while other windows of a batch are recomputed."""
        now = self.clock()
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                async with db.execute("SELECT 1 FROM holds LIMIT 1") as cur:
                    held_by_spool = await cur.fetchone() is not None
                found = [] if held_by_spool else await self._due(delays, held, now, limit=1)
                for key, _ in found:
                    await db.execute(
                        "UPDATE dirty SET claimed_until = ? WHERE family = ? AND site = ? "
                        "AND window = ? AND start_ns = ?",
                        (now + CLAIM_S, *_where(key)),
                    )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        if not found:
            return None
        key, version = found[0]
        self._claims[key] = now + CLAIM_S
        return key, version

    async def _due(
        self,
        delays: dict[Window, timedelta],
        held: bool,
        now: float,
        *,
        unclaimed: bool = True,
        limit: int = -1,
    ) -> list[tuple[WindowKey, int]]:
        # Due-ness in SQL: a long backlog leaves thousands of windows marked.
        delay = "CASE window " + " ".join("WHEN ? THEN ?" for _ in delays) + " END"
        arguments: list[object] = [
            v for w, d in delays.items() for v in (w.value, d.total_seconds())
        ]
        query = (
            "SELECT family, site, window, start_ns, version FROM dirty "
            f"WHERE (? OR claimed_until <= ?) AND ((NOT ? AND touched + ({delay}) <= ?) "
            f"OR since + ? * ({delay}) <= ?) ORDER BY start_ns, window LIMIT ?"
        )
        parameters = [not unclaimed, now, held, *arguments, now, CEILING, *arguments, now, limit]
        async with self.db.execute(query, parameters) as cur:
            return [
                (WindowKey(family, site, Window(window), moment_ns(start_ns)), int(version))
                for family, site, window, start_ns, version in await cur.fetchall()
            ]

    async def clear(self, key: WindowKey, version: int) -> bool:
        """Forget a recomputed window unless it was marked again meanwhile (then this worker's
        claim on it ends: it is due again); True if forgotten."""
        claimed = self._claims.pop(key, None)
        async with self._lock:
            cur = await self.db.execute(
                "DELETE FROM dirty WHERE family = ? AND site = ? AND window = ? AND start_ns = ? "
                "AND version = ?",
                (*_where(key), version),
            )
            forgotten = cur.rowcount > 0
            if not forgotten and claimed is not None:
                await self._release_claim(key, claimed)
            await self.db.commit()
        return forgotten

    async def defer(self, key: WindowKey) -> None:
        """Restart a window's delay (its recomputation failed): tried again, not in a hot loop."""
        claimed = self._claims.pop(key, None)
        async with self._lock:
            await self.db.execute(
                "UPDATE dirty SET since = ?1, touched = ?1 WHERE family = ?2 AND site = ?3 "
                "AND window = ?4 AND start_ns = ?5",
                (self.clock(), *_where(key)),
            )
            if claimed is not None:
                await self._release_claim(key, claimed)
            await self.db.commit()

    async def _release_claim(self, key: WindowKey, claimed_until: float) -> None:
        # Only this worker's own claim: once it lapsed, another worker may hold a newer one.
        await self.db.execute(
            "UPDATE dirty SET claimed_until = 0 WHERE family = ? AND site = ? AND window = ? "
            "AND start_ns = ? AND claimed_until = ?",
            (*_where(key), claimed_until),
        )

    async def count(self) -> int:
        async with self._lock, self.db.execute("SELECT count(*) FROM dirty") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
