"""The durable list of windows to recompute: survives reopening, keeps a window marked again
while it was recomputed, defers a failed one, and is shared by a group's workers, each window
claimed by one of them."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


async def test_a_groups_workers_recompute_each_window_once(tmp_path: Path) -> None:
    # Two workers of a shared group on one host: one file, each window claimed by one of them.
    now = [1_000_000.0]
    path = tmp_path / "derive.sqlite3"
    async with (
        DirtyWindows(path, clock=lambda: now[0]) as a,
        DirtyWindows(path, clock=lambda: now[0]) as b,
    ):
        await a.mark({KEY})
        await b.mark({KEY, OTHER})
        first, second = await a.claim(NOW), await b.claim(NOW)
        assert first is not None
        assert second is not None
        assert {first[0], second[0]} == {KEY, OTHER}, "oldest first, one each"
        assert await a.claim(NOW) is None, "both claimed"
        assert len(await a.due(NOW)) == 2, "still marked: a claim is not a clear"
        assert await a.clear(*first)
        # Marked again by a while b recomputes its window: b's clear fails, its claim ends.
        await a.mark({second[0]})
        assert not await b.clear(*second)
        again = await a.claim(NOW)
        assert again is not None
        assert again[0] == second[0]
        # a is killed midway: the window waits out the claim, then b takes it.
        assert await b.claim(NOW) is None
        now[0] += derive_state.CLAIM_S + 1
        taken = await b.claim(NOW)
        assert taken == again
        # a, back from a pause, finds its claim lapsed: its failed clear leaves b's claim alone.
        await b.mark({taken[0]})
        assert not await a.clear(*again)
        assert await a.claim(NOW) is None, "b's claim still holds"
        assert not await b.clear(*taken)  # marked again: due once more, for anyone
        last = await a.claim(NOW)
        assert last is not None
        assert await a.clear(*last)
        assert await a.count() == await b.count() == 0


async def test_claims_go_oldest_first_and_never_twice(tmp_path: Path) -> None:
    path = tmp_path / "derive.sqlite3"
    keys = [
        WindowKey("traffic", "G109", Window.QUARTER_HOUR, KEY.start + timedelta(minutes=15 * n))
        for n in range(20)
    ]
    async with DirtyWindows(path) as a, DirtyWindows(path) as b:
        await a.mark(set(keys))
        taken: list[WindowKey] = []
        while (claimed := await (a if len(taken) % 2 else b).claim(NOW)) is not None:
            taken.append(claimed[0])
        assert taken == keys


async def test_a_workers_spool_holds_every_claim_until_released(tmp_path: Path) -> None:
    # Worker 1's points wait in its spool (InfluxDB was down): windows computed now would
    # miss them, so no worker claims any window until worker 1 has written them.
    path = tmp_path / "derive.sqlite3"
    async with DirtyWindows(path) as one, DirtyWindows(path) as two:
        await one.mark({KEY}, hold="ingest-1")
        await two.mark({OTHER})
        assert await two.claim(NOW) is None
        assert await one.claim(NOW) is None
        assert list(await two.holders()) == ["ingest-1"]
        await one.mark({KEY}, hold="ingest-1")  # still spooling: one hold
        await one.release("ingest-1")
        assert await two.holders() == {}
        assert await two.claim(NOW) is not None


async def test_marking_and_claiming_share_one_connection_safely(tmp_path: Path) -> None:
    # The ingest marks (one task) while it recomputes (another) on the same connection.
    async with DirtyWindows(tmp_path / "derive.sqlite3") as state:

        async def marking() -> None:
            for n in range(150):
                start = KEY.start + timedelta(minutes=15 * (n % 10))
                await state.mark({WindowKey("traffic", "G109", Window.QUARTER_HOUR, start)})

        async def claiming() -> int:
            cleared = 0
            for _ in range(150):
                claimed = await state.claim(NOW)
                if claimed is not None:
                    cleared += await state.clear(*claimed)
            return cleared

        # Without the lock a claim's BEGIN met a mark's open transaction: OperationalError
        # in every one of 10 runs, and the ingest's recomputing task died of it.
        _, cleared = await asyncio.gather(marking(), claiming())
        assert cleared + await state.count() >= 1


async def test_a_workers_own_file_from_before_is_taken_over(tmp_path: Path) -> None:
    own = tmp_path / "derive-worker1.sqlite3"
    async with DirtyWindows(own) as old:
        await old.mark({KEY, OTHER})
    async with DirtyWindows(tmp_path / "derive.sqlite3") as shared:
        await shared.mark({KEY})
        assert await shared.absorb(own) == 2
        assert {key for key, _ in await shared.due(NOW)} == {KEY, OTHER}
        # Taken over by another worker first: nothing left, and no error.
        assert await shared.absorb(tmp_path / "derive-worker2.sqlite3") == 0
    left = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert not [name for name in left if "-worker" in name]
