"""The durable list of windows to recompute: survives reopening, keeps a window marked again
while it was recomputed, and defers a failed one."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines.analytics.energy import Window
from pipelines.derive_state import DirtyWindows, WindowKey

NOW = {w: timedelta(0) for w in Window}
KEY = WindowKey("datacenter", "共和 DC", Window.QUARTER_HOUR, datetime(2026, 1, 15, 2, tzinfo=UTC))
OTHER = WindowKey("traffic", "G109", Window.HOUR, datetime(2026, 1, 15, 2, tzinfo=UTC))


async def test_marks_survive_a_reopen_and_come_back_with_their_key(tmp_path: Path) -> None:
    path = tmp_path / "derive.sqlite3"
    async with DirtyWindows(path) as state:
        await state.mark({KEY, OTHER})
    async with DirtyWindows(path) as state:
        assert {key for key, _ in await state.due(NOW)} == {KEY, OTHER}


async def test_a_window_marked_again_meanwhile_is_not_cleared(tmp_path: Path) -> None:
    async with DirtyWindows(tmp_path / "d.sqlite3") as state:
        await state.mark({KEY})
        ((key, seen),) = await state.due(NOW)
        await state.mark({KEY})  # a late reading arrives while KEY is being recomputed
        assert not await state.clear(key, seen)
        ((_, again),) = await state.due(NOW)
        assert await state.clear(KEY, again)
        assert await state.count() == 0


async def test_a_window_waits_its_delay_and_a_failed_one_waits_again(tmp_path: Path) -> None:
    hour = {w: timedelta(hours=1) for w in Window}
    async with DirtyWindows(tmp_path / "d.sqlite3") as state:
        await state.mark({KEY})
        assert await state.due(hour) == []
        assert len(await state.due(NOW)) == 1
        await state.defer(KEY)
        assert await state.due(hour) == []
        assert await state.count() == 1
