"""Clock sanity: readings taken with an unset clock are held, corrected once it is set, and never stored in 1970."""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector import gateway as gateway_module
from collector.clock import ClockGuard, WallClock
from collector.config import GatewaySettings
from collector.gateway import Gateway
from pipelines.dead_letter import DeadLetterStore
from tests.gateway_harness import HYDRO_INTERVAL_S, Harness, gateway_settings

EARLIEST = datetime(2026, 1, 1, tzinfo=UTC)


class SettableClock(WallClock):
    """The real monotonic clock with a wall clock the test sets, as NTP or a GPS fix would."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def read(self) -> tuple[datetime, float]:
        wall, mono = super().read()
        return wall + self.offset, mono


UNSET = datetime(1970, 1, 1, tzinfo=UTC) - datetime.now(UTC)


def test_guard_states_unset_set_jump_and_back() -> None:
    clock = SettableClock(UNSET)
    guard = ClockGuard(EARLIEST, jump_threshold_s=60, wall=clock)
    assert (guard.state, guard.trusted, guard.stamp().trusted) == ("unset", False, False)
    assert guard.check() is None
    clock.offset = timedelta(0)  # NTP sets the clock
    anchor = guard.check()
    assert anchor is not None
    assert abs((anchor.wall - datetime.now(UTC)).total_seconds()) < 1
    assert (guard.state, guard.trusted, guard.jumps) == ("jumped", True, 1)
    clock.offset = timedelta(hours=2)  # a plausible jump: counted, accepted
    assert guard.check() is None
    assert (guard.state, guard.trusted, guard.jumps) == ("jumped", True, 2)
    assert guard.last_jump_s is not None
    assert abs(guard.last_jump_s - 7200) < 1
    clock.offset = UNSET  # back to 1970: untrusted again
    guard.check()
    assert (guard.state, guard.trusted) == ("unset", False)


def test_a_trusted_clock_stays_ok_under_small_steps() -> None:
    clock = SettableClock(timedelta(0))
    guard = ClockGuard(EARLIEST, jump_threshold_s=60, wall=clock)
    clock.offset = timedelta(seconds=30)  # an NTP slew-sized step, below the threshold
    guard.check()
    assert (guard.state, guard.jumps, guard.stamp().trusted) == ("ok", 0, True)


async def test_readings_taken_before_the_clock_is_set_get_their_true_time(
    harness: Harness, tmp_path: Path
) -> None:
    clock = SettableClock(UNSET)
    settings = GatewaySettings.model_validate(
        gateway_settings(harness.broker.port, tmp_path / "state")
    )
    settings.clock.check_interval_s = 0.1
    gateway = Gateway(settings, wall_clock=clock)
    task = asyncio.create_task(gateway.run())
    real_start = datetime.now(UTC)
    await asyncio.sleep(2.0)
    assert gateway.outbox.held >= 10, "readings taken with the clock unset are held"
    assert harness.observed == [], "nothing with a 1970 time leaves the gateway"
    assert gateway.clock.state == "unset"
    clock.offset = timedelta(0)  # NTP (or a GPS fix) sets the clock
    await asyncio.sleep(1.5)
    real_end = datetime.now(UTC)
    gateway.stop()
    await task
    assert gateway.outbox.held == 0
    assert gateway.outbox.pending == 0
    await harness.settle(gateway.stats.published)
    stored = sorted(await harness.stored_times())
    assert len(stored) == gateway.stats.polled
    first, last = (datetime.fromtimestamp(t / 1e9, UTC) for t in (stored[0], stored[-1]))
    # The corrected times are the real times the readings were taken (to the poll grid).
    assert real_start - timedelta(seconds=0.5) <= first <= real_start + timedelta(seconds=0.5)
    assert last <= real_end
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(stored)]
    assert max(gaps) < HYDRO_INTERVAL_S * 3, "the spacing of the held readings is kept"
    marks = [r.get("clock") for m in harness.observed for r in m["readings"]]
    assert marks.count("corrected") >= 10
    assert set(marks) <= {"corrected", None}


async def test_held_readings_of_an_earlier_boot_are_sent_unsynced_and_dead_lettered(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GatewaySettings.model_validate(
        gateway_settings(harness.broker.port, tmp_path / "state")
    )
    monkeypatch.setattr(gateway_module, "read_boot_id", lambda: "boot-before-power-cut")
    first = Gateway(config, wall_clock=SettableClock(UNSET))
    task = asyncio.create_task(first.run(drain_timeout_s=0.5))
    await asyncio.sleep(1.0)
    first.stop()
    await task
    held = first.outbox.held
    assert held >= 5
    assert first.outbox.pending == held
    # The power comes back: a new boot, and this time the clock is right.
    monkeypatch.setattr(gateway_module, "read_boot_id", lambda: "boot-after-power-cut")
    second = Gateway(config)
    task = asyncio.create_task(second.run())
    await asyncio.sleep(1.5)
    second.stop()
    await task
    assert second.outbox.pending == 0
    await harness.settle(held + second.stats.polled)
    stored = await harness.stored_times()
    assert len(stored) == second.stats.polled, "only readings with a true time are stored"
    assert min(stored) > EARLIEST.timestamp() * 1e9
    async with DeadLetterStore(harness.ingest.settings.dead_letter.path) as store:
        counts = await store.counts()
        letters = await store.list(reason="clock_unset", limit=1000)
    assert counts == {"clock_unset": held}
    assert all("marked unsynced" in letter.detail for letter in letters)
