"""The durable list of windows to recompute: survives reopening, keeps a window marked again
while it was recomputed, defers a failed one, and is shared by a group's workers, each window
claimed by one of them."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import derive_state
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


async def test_a_groups_workers_recompute_each_window_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers of a shared group on one host: one file, each window claimed by one of them.
    now = [1_000_000.0]
    monkeypatch.setattr(derive_state, "time", SimpleNamespace(time=lambda: now[0]))
    path = tmp_path / "derive.sqlite3"
    async with DirtyWindows(path) as a, DirtyWindows(path) as b:
        await a.mark({KEY})
        await b.mark({KEY, OTHER})
        taken = await a.claim(NOW)
        assert {key for key, _ in taken} == {KEY, OTHER}
        assert await b.claim(NOW) == [], "claimed by the other worker"
        assert len(await b.due(NOW)) == 2, "still marked: the claim is not a clear"
        (version,) = [v for key, v in taken if key == KEY]
        assert await a.clear(KEY, version)
        # Marked again by b while a recomputes OTHER: a's clear fails and the claim ends.
        await b.mark({OTHER})
        (other_version,) = [v for key, v in taken if key == OTHER]
        assert not await a.clear(OTHER, other_version)
        ((key, again),) = await b.claim(NOW)
        assert key == OTHER
        # b is killed mid-recomputation: the window waits out the claim, then a takes it.
        assert await a.claim(NOW) == []
        now[0] += derive_state.CLAIM_S + 1
        assert [k for k, _ in await a.claim(NOW)] == [OTHER]
        assert await a.clear(OTHER, again)
        assert await a.count() == await b.count() == 0


async def test_claims_share_out_a_long_list(tmp_path: Path) -> None:
    path = tmp_path / "derive.sqlite3"
    keys = {
        WindowKey("traffic", "G109", Window.QUARTER_HOUR, KEY.start + timedelta(minutes=15 * n))
        for n in range(derive_state.CLAIM_MAX + 5)
    }
    async with DirtyWindows(path) as a, DirtyWindows(path) as b:
        await a.mark(keys)
        first, second = await a.claim(NOW), await b.claim(NOW)
        assert len(first) == derive_state.CLAIM_MAX
        assert len(second) == 5
        assert {k for k, _ in first} | {k for k, _ in second} == keys
        # Oldest windows first.
        assert max(k.start for k, _ in first) < min(k.start for k, _ in second)


async def test_a_workers_own_file_from_before_is_taken_over(tmp_path: Path) -> None:
    own = tmp_path / "derive-worker1.sqlite3"
    async with DirtyWindows(own) as old:
        await old.mark({KEY, OTHER})
    async with DirtyWindows(tmp_path / "derive.sqlite3") as shared:
        await shared.mark({KEY})
        assert await shared.absorb(own) == 2
        assert {key for key, _ in await shared.due(NOW)} == {KEY, OTHER}
    left = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert not [name for name in left if name.startswith(own.name)]
