"""The windows waiting for recomputation, on disk: a restart of the ingest forgets none of them.

A window is marked once its raw readings are in InfluxDB and before their
messages are acknowledged; it is cleared only if nobody marked it again while
it was being recomputed (the version column). It is due once nothing touched it
for its delay, or once it has waited ``CEILING`` times its delay in all.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
    PRIMARY KEY (family, site, window, start_ns)
);
"""


CEILING = 5
"""A window touched without pause is still recomputed after this many times its delay."""


@dataclass(frozen=True, order=True)
class WindowKey:
    """One window of one site's figures: ``family`` is "datacenter" or "traffic"."""

    family: str
    site: str
    window: Window
    start: datetime


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
            await self.db.commit()

    async def mark(self, keys: set[WindowKey]) -> None:
        """Mark windows dirty (one transaction); an already dirty one keeps its ``since``
        and is ``touched`` again."""
        if not keys:
            return
        now = time.time()
        await self.db.executemany(
            "INSERT INTO dirty (family, site, window, start_ns, since, touched) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET version = version + 1, touched = excluded.touched",
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
        now = time.time()
        found = []
        async with self.db.execute(
            "SELECT family, site, window, start_ns, since, touched, version FROM dirty "
            "ORDER BY start_ns, window"
        ) as cur:
            async for family, site, window, start_ns, since, touched, version in cur:
                delay = delays[Window(window)].total_seconds()
                quiet = not held and touched + delay <= now
                if quiet or since + CEILING * delay <= now:
                    key = WindowKey(family, site, Window(window), _from_ns(start_ns))
                    found.append((key, int(version)))
        return found

    async def clear(self, key: WindowKey, version: int) -> bool:
        """Forget a recomputed window unless it was marked again meanwhile; True if forgotten."""
        cur = await self.db.execute(
            "DELETE FROM dirty WHERE family = ? AND site = ? AND window = ? AND start_ns = ? "
            "AND version = ?",
            (key.family, key.site, key.window.value, timestamp_ns(key.start), version),
        )
        await self.db.commit()
        return cur.rowcount > 0

    async def defer(self, key: WindowKey) -> None:
        """Restart a window's delay (its recomputation failed): tried again, not in a hot loop."""
        await self.db.execute(
            "UPDATE dirty SET since = ?1, touched = ?1 WHERE family = ?2 AND site = ?3 "
            "AND window = ?4 AND start_ns = ?5",
            (time.time(), key.family, key.site, key.window.value, timestamp_ns(key.start)),
        )
        await self.db.commit()

    async def count(self) -> int:
        async with self.db.execute("SELECT count(*) FROM dirty") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
