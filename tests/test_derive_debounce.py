"""Windows waiting for recomputation are debounced: due once quiet for their delay, or after
CEILING delays however often touched; while the ingest is behind only the latter."""

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.analytics.energy import Window
from pipelines.derive_state import CEILING, DirtyWindows, WindowKey

DELAY = {w: timedelta(seconds=10) for w in Window}
KEY = WindowKey("traffic", "G109", Window.QUARTER_HOUR, datetime(2026, 1, 15, 2, tzinfo=UTC))


@pytest.fixture
def clock() -> list[float]:
    """The time the store reads (``DirtyWindows(clock=...)``), moved by the test."""
    return [1_000_000.0]


async def test_a_window_touched_again_waits_until_quiet(tmp_path: Path, clock: list[float]) -> None:
    async with DirtyWindows(tmp_path / "d.sqlite3", clock=lambda: clock[0]) as state:
        await state.mark({KEY})
        clock[0] += 8
        await state.mark({KEY})  # a backlog's next message
        clock[0] += 8
        assert await state.due(DELAY) == []  # 16 s since marked, only 8 since touched
        clock[0] += 2
        assert [key for key, _ in await state.due(DELAY)] == [KEY]


async def test_a_window_touched_without_pause_is_due_at_its_ceiling(
    tmp_path: Path, clock: list[float]
) -> None:
    async with DirtyWindows(tmp_path / "d.sqlite3", clock=lambda: clock[0]) as state:
        await state.mark({KEY})
        for _ in range(CEILING * 10 - 1):
            clock[0] += 1
            await state.mark({KEY})
            assert await state.due(DELAY) == []
        clock[0] += 1
        assert [key for key, _ in await state.due(DELAY)] == [KEY]


async def test_while_held_only_windows_past_their_ceiling_are_due(
    tmp_path: Path, clock: list[float]
) -> None:
    async with DirtyWindows(tmp_path / "d.sqlite3", clock=lambda: clock[0]) as state:
        await state.mark({KEY})
        clock[0] += 11
        assert await state.due(DELAY, held=True) == []
        assert len(await state.due(DELAY)) == 1
        clock[0] += CEILING * 10
        assert [key for key, _ in await state.due(DELAY, held=True)] == [KEY]


async def test_a_file_from_before_the_debounce_keeps_its_marks(
    tmp_path: Path, clock: list[float]
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE dirty (family TEXT NOT NULL, site TEXT NOT NULL, window TEXT NOT NULL, "
            "start_ns INTEGER NOT NULL, since REAL NOT NULL, version INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (family, site, window, start_ns))"
        )
        db.execute(
            "INSERT INTO dirty VALUES ('traffic', 'G109', '15min', ?, ?, 0)",
            (int(KEY.start.timestamp()) * 1_000_000_000, clock[0]),
        )
    async with DirtyWindows(path, clock=lambda: clock[0]) as state:
        assert [key for key, _ in await state.due(DELAY)] == [KEY]
        await state.mark({KEY})
        assert await state.due(DELAY) == []
