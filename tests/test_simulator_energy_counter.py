"""The simulated energy meter's counters: a function of time, so a restarted gateway reads on."""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from devices.datacenter import CIRCUITS
from devices.simulators import Simulator, make_simulator

# After every meter's commissioning (at least 2,000 hours before 2024), so counters are running.
running = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


def reading(meter: Simulator, at: datetime, quantity: str) -> dict[str, float]:
    """One quantity of every circuit at ``at``."""
    out: dict[str, float] = {}
    for r in meter.sample(at):
        value = r.values[quantity]
        assert isinstance(r.channel, str), r
        assert isinstance(value, float), r
        out[r.channel] = value
    return out


def meter(seed: int, device: str = "meters-1", it_load_kw: float = 800.0) -> Simulator:
    options: Mapping[str, JsonValue] = {"circuits": list(CIRCUITS), "it_load_kw": it_load_kw}
    return make_simulator("energy_meter", device, seed=seed, interval_s=10, options=options)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(-(2**63), 2**63),
    device=st.sampled_from(["meters-1", "dc-west", "m"]),
    at=running,
    first_run_s=st.integers(1, 3 * 86_400),
    restart_s=st.integers(1, 86_400),
)
def test_a_restarted_simulator_reads_the_counter_where_the_first_one_left_it(
    seed: int, device: str, at: datetime, first_run_s: int, restart_s: int
) -> None:
    """A gateway started earlier and one restarted later see the same meter."""
    earlier, later = meter(seed, device), meter(seed, device)
    reading(earlier, at - timedelta(seconds=first_run_s), "energy_kwh")
    reading(later, at - timedelta(seconds=min(restart_s, first_run_s - 1)), "energy_kwh")
    assert reading(earlier, at, "energy_kwh") == reading(later, at, "energy_kwh")
    assert reading(meter(seed, device), at, "energy_kwh") == reading(later, at, "energy_kwh")


def test_a_month_of_counters_rises_by_the_circuits_power_every_interval() -> None:
    """Every 10 minutes for a month, with restarts: each rise lies between the circuit's lower
    and higher power at either end (the lights switch on the hour) times the interval, within
    the day's estimate and the power's jitter; a day's rise is within 5% of the day's energy."""
    step = timedelta(minutes=10)
    hours = step.total_seconds() / 3_600.0
    start = datetime(2026, 6, 20, 3, 7, 11, tzinfo=UTC)  # the warmest month: cooling swings most
    # A big site, so even the lighting circuit rises by far more than the counter's 0.1 kWh.
    sim = meter(seed=21, it_load_kw=20_000)
    previous, previous_kw = (
        reading(sim, start, "energy_kwh"),
        reading(sim, start, "active_power_kw"),
    )
    day_start, day_energy = previous, dict.fromkeys(CIRCUITS, 0.0)
    for i in range(1, 30 * 144 + 1):
        at = start + i * step
        if i % 997 == 0:  # the gateway restarts: a new simulator
            sim = meter(seed=21, it_load_kw=20_000)
        now, now_kw = reading(sim, at, "energy_kwh"), reading(sim, at, "active_power_kw")
        for c in CIRCUITS:
            low, high = sorted((previous_kw[c] * hours, now_kw[c] * hours))
            assert 0.92 * low < now[c] - previous[c] < 1.08 * high, (c, at, previous, now)
            day_energy[c] += (low + high) / 2.0
        if i % 144 == 0:
            for c in CIRCUITS:
                rise = now[c] - day_start[c]
                assert rise == pytest.approx(day_energy[c], rel=0.05), (c, at)
            day_start, day_energy = now, dict.fromkeys(CIRCUITS, 0.0)
        previous, previous_kw = now, now_kw


def test_counters_stand_where_a_meter_in_service_for_years_would() -> None:
    """Power times the hours in service (2,000-40,000 before 2024, plus the years since), not a
    new meter at 0; loosely, as the power at one instant is not the years' mean."""
    at = datetime(2026, 11, 28, 15, tzinfo=UTC)
    since = (at - datetime(2024, 1, 1, tzinfo=UTC)).total_seconds() / 3_600.0
    energy, power = reading(meter(21), at, "energy_kwh"), reading(meter(21), at, "active_power_kw")
    for c in CIRCUITS:
        hours = energy[c] / power[c]
        assert 0.6 * (2_000 + since) < hours < 1.8 * (40_000 + since), (c, hours)
