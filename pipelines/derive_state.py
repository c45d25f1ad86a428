"""The windows waiting for recomputation, on disk: a restart of the ingest forgets none of them.

A window is marked once its raw readings are in InfluxDB and before their
messages are acknowledged; it is cleared only if nobody marked it again while
it was being recomputed (the version column). It is due once nothing touched it
for its delay, or once it has waited ``CEILING`` times its delay in all. A shared
group's workers on one host mark windows in one file, and a worker claims the windows
it recomputes, so that each is recomputed once rather than by every worker.
"""

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite

from collector.durable_sqlite import DurableSqlite
from pipelines.analytics.energy import Window
from pipelines.line_protocol import timestamp_ns

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
"""


CEILING = 5
"""A window touched without pause is still recomputed after this many times its delay."""

CLAIM_S = 120.0
"""How long a worker's claim on a window lasts: a worker killed while recomputing it leaves
it to the others after this."""

CLAIM_MAX = 16
"""Windows claimed at once: a long list is shared out between a group's workers."""


@dataclass(frozen=True, order=True)
class WindowKey:
    """One window of one site's figures: ``family`` is "datacenter" or "traffic"."""

    family: str
    site: str
    window: Window
    start: datetime


_MARK = (
    "INSERT INTO dirty (family, site, window, start_ns, since, touched) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO UPDATE SET version = version + 1, touched = excluded.touched"
)


def _where(key: WindowKey) -> tuple[str, str, str, int]:
    return key.family, key.site, key.window.value, timestamp_ns(key.start)


def _from_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1_000)


class DirtyWindows(DurableSqlite):
    """Windows touched by readings since they were last recomputed."""

    schema = _SCHEMA

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
        async with (
            aiosqlite.connect(old) as source,
            source.execute("SELECT family, site, window, start_ns, since FROM dirty") as cur,
        ):
            rows = [(*row, row[4]) for row in await cur.fetchall()]
        await self.db.executemany(_MARK, rows)
        await self.db.commit()
        for name in (old.name, f"{old.name}-wal", f"{old.name}-shm"):
            await asyncio.to_thread(old.with_name(name).unlink, missing_ok=True)
        return len(rows)

    async def mark(self, keys: set[WindowKey]) -> None:
        """Mark windows dirty (one transaction); an already dirty one keeps its ``since``
        and is ``touched`` again."""
        if not keys:
            return
        now = time.time()
        await self.db.executemany(
            _MARK,
            [(k.family, k.site, k.window.value, timestamp_ns(k.start), now, now) for k in keys],
        )
        await self.db.commit()

    async def due(
        self, delays: dict[Window, timedelta], *, held: bool = False
    ) -> list[tuple[WindowKey, int]]:
        """Windows untouched for their delay, or dirty for ``CEILING`` delays, with the version
        seen; oldest windows first. ``held`` (the ingest is behind): only the latter.

        Debounced because a backlog touches the same windows with every message: recomputed
        every delay, each was computed ~50 times instead of once (docs/performance.md).
        """
        return await self._due(delays, held, time.time(), claimed=True)

    async def claim(
        self, delays: dict[Window, timedelta], *, held: bool = False
    ) -> list[tuple[WindowKey, int]]:
        """``due``'s windows that no other worker has claimed, at most ``CLAIM_MAX``, claimed
        for ``CLAIM_S``: a shared group's workers mark windows in one file, and each window
        is recomputed by one of them rather than by all (each a query load on InfluxDB)."""
        now = time.time()
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            found = (await self._due(delays, held, now, claimed=False))[:CLAIM_MAX]
            await db.executemany(
                "UPDATE dirty SET claimed_until = ? WHERE family = ? AND site = ? "
                "AND window = ? AND start_ns = ?",
                [(now + CLAIM_S, *_where(key)) for key, _ in found],
            )
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return found

    async def _due(
        self, delays: dict[Window, timedelta], held: bool, now: float, *, claimed: bool
    ) -> list[tuple[WindowKey, int]]:
        found = []
        async with self.db.execute(
            "SELECT family, site, window, start_ns, since, touched, version FROM dirty "
            "WHERE ? OR claimed_until <= ? ORDER BY start_ns, window",
            (claimed, now),
        ) as cur:
            async for family, site, window, start_ns, since, touched, version in cur:
                delay = delays[Window(window)].total_seconds()
                quiet = not held and touched + delay <= now
                if quiet or since + CEILING * delay <= now:
                    key = WindowKey(family, site, Window(window), _from_ns(start_ns))
                    found.append((key, int(version)))
        return found

    async def clear(self, key: WindowKey, version: int) -> bool:
        """Forget a recomputed window unless it was marked again meanwhile (then its claim
        ends: it is due again); True if forgotten."""
        cur = await self.db.execute(
            "DELETE FROM dirty WHERE family = ? AND site = ? AND window = ? AND start_ns = ? "
            "AND version = ?",
            (*_where(key), version),
        )
        forgotten = cur.rowcount > 0
        if not forgotten:
            await self.db.execute(
                "UPDATE dirty SET claimed_until = 0 WHERE family = ? AND site = ? "
                "AND window = ? AND start_ns = ?",
                _where(key),
            )
        await self.db.commit()
        return forgotten

    async def defer(self, key: WindowKey) -> None:
        """Restart a window's delay (its recomputation failed): tried again, not in a hot loop."""
        await self.db.execute(
            "UPDATE dirty SET since = ?1, touched = ?1, claimed_until = 0 WHERE family = ?2 "
            "AND site = ?3 AND window = ?4 AND start_ns = ?5",
            (time.time(), *_where(key)),
        )
        await self.db.commit()

    async def count(self) -> int:
        async with self.db.execute("SELECT count(*) FROM dirty") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
