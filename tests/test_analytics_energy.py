"""Counter intervals (rollover, replacement), window energy, PUE categories, PUE and REF per window."""

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.datacenter import CIRCUITS
from pipelines.analytics.energy import (
    IT_CIRCUIT_CATEGORY,
    CounterReading,
    IntervalEnergy,
    IntervalStatus,
    IssueReason,
    MeterConfig,
    PueCategory,
    Window,
    efficiency_ratio,
    interval_energies,
    interval_energy,
    pue_category,
    pue_for_window,
    pue_series,
    ref_for_window,
    total_energy,
    window_bounds,
    window_energy,
)

T0 = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
METER = MeterConfig(max_power_kw=500.0, counter_max_kwh=100_000.0)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _reading(minutes: float, kwh: float) -> CounterReading:
    return CounterReading(time=_at(minutes), energy_kwh=kwh)


def _counter(
    start_kwh: float, per_step: float, steps: int, every: float = 5
) -> list[CounterReading]:
    return [_reading(i * every, start_kwh + i * per_step) for i in range(steps + 1)]


def test_a_rising_counter_gives_the_difference() -> None:
    interval = interval_energy(_reading(0, 1_000.0), _reading(5, 1_012.5), METER)
    assert interval.status is IntervalStatus.OK
    assert interval.energy_kwh == pytest.approx(12.5)
    assert interval.complete


def test_a_rollover_at_counter_max_counts_across_the_wrap() -> None:
    # 100000 - 99990 + 5 = 15 kWh in 5 min (180 kW), under the 500 kW bound.
    interval = interval_energy(_reading(0, 99_990.0), _reading(5, 5.0), METER)
    assert interval.status is IntervalStatus.ROLLOVER
    assert interval.energy_kwh == pytest.approx(15.0)


def test_a_drop_too_big_for_a_rollover_is_a_replaced_meter() -> None:
    # As a rollover it would be 48003 kWh in 5 min: far above 500 kW.
    interval = interval_energy(_reading(0, 52_000.0), _reading(5, 3.0), METER)
    assert interval.status is IntervalStatus.RESET
    assert interval.energy_kwh is None
    assert not interval.complete


def test_without_counter_max_every_drop_is_a_reset() -> None:
    meter = MeterConfig(max_power_kw=500.0)
    assert interval_energy(_reading(0, 99_990.0), _reading(5, 5.0), meter).status is (
        IntervalStatus.RESET
    )


def test_a_rise_faster_than_max_power_is_not_counted() -> None:
    # A new meter that starts at a higher reading than the old one ended at.
    interval = interval_energy(_reading(0, 100.0), _reading(5, 70_000.0), METER)
    assert interval.status is IntervalStatus.IMPLAUSIBLE
    assert interval.energy_kwh is None


def test_readings_must_move_forward_in_time() -> None:
    with pytest.raises(ValueError, match="out of order"):
        interval_energies([_reading(5, 1.0), _reading(5, 2.0)], METER)


def test_an_interval_must_not_carry_a_number_it_cannot_have() -> None:
    with pytest.raises(ValueError, match="disagree"):
        IntervalEnergy(start=_at(0), end=_at(5), status=IntervalStatus.RESET, energy_kwh=1.0)


@given(
    values=st.lists(st.floats(0, 200_000), min_size=2, max_size=30),
    gaps=st.lists(st.integers(1, 86_400), min_size=29, max_size=29),
    max_power=st.floats(0.1, 100_000),
    counter_max=st.none() | st.floats(1, 200_000),
)
def test_interval_energy_is_never_negative_nor_above_max_power(
    values: list[float], gaps: list[int], max_power: float, counter_max: float | None
) -> None:
    meter = MeterConfig(max_power_kw=max_power, counter_max_kwh=counter_max)
    times = [T0]
    for gap in gaps[: len(values) - 1]:
        times.append(times[-1] + timedelta(seconds=gap))
    readings = [CounterReading(time=t, energy_kwh=v) for t, v in zip(times, values, strict=True)]
    for interval in interval_energies(readings, meter):
        if interval.energy_kwh is not None:
            assert interval.energy_kwh >= 0
            hours = interval.duration.total_seconds() / 3_600
            assert interval.energy_kwh <= max_power * hours * (1 + 1e-9)


def test_windows_align_to_the_local_wall_clock() -> None:
    china = timezone(timedelta(hours=8))
    at = datetime(2024, 6, 1, 17, 7, tzinfo=UTC)  # 01:07 on 2 June in Beijing
    assert window_bounds(at, Window.DAY, china) == (
        datetime(2024, 6, 1, 16, tzinfo=UTC),
        datetime(2024, 6, 2, 16, tzinfo=UTC),
    )
    assert window_bounds(at, Window.HOUR) == (
        datetime(2024, 6, 1, 17, tzinfo=UTC),
        datetime(2024, 6, 1, 18, tzinfo=UTC),
    )
    assert window_bounds(at, Window.QUARTER_HOUR)[0] == datetime(2024, 6, 1, 17, 0, tzinfo=UTC)


def test_an_interval_across_a_window_edge_is_split_in_proportion_to_time() -> None:
    readings = [_reading(-2, 0.0), _reading(8, 10.0), _reading(18, 20.0)]
    intervals = interval_energies(readings, METER)
    energy = window_energy(intervals, _at(0), _at(15), meter="it_load")
    # 8 of the first 10 minutes, 7 of the second.
    assert energy.energy_kwh == pytest.approx(15.0)
    assert energy.issues == ()


def test_a_missing_reading_blurs_only_the_windows_whose_edge_it_spans() -> None:
    # Readings every 5 min, but 10:15 and 10:20 are missing: one 15-min interval 10:10-10:25.
    readings = [r for r in _counter(0.0, 10.0, 12) if r.time not in (_at(15), _at(20))]
    intervals = interval_energies(readings, METER)
    quarter = window_energy(
        intervals, _at(0), _at(15), meter="it_load", max_split=timedelta(minutes=5)
    )
    assert quarter.energy_kwh is None
    assert [i.reason for i in quarter.issues] == [IssueReason.LONG_INTERVAL_ACROSS_BOUNDARY]
    assert (quarter.issues[0].start, quarter.issues[0].end) == (_at(10), _at(25))
    # Inside the hour the counter integrated the gap exactly.
    hour = window_energy(
        intervals, _at(0), _at(60), meter="it_load", max_split=timedelta(minutes=5)
    )
    assert hour.energy_kwh == pytest.approx(120.0)


def test_a_window_not_yet_covered_by_readings_has_no_energy() -> None:
    intervals = interval_energies(_counter(0.0, 10.0, 6), METER)  # 10:00..10:30
    energy = window_energy(intervals, _at(0), _at(60), meter="utility")
    assert energy.energy_kwh is None
    assert [(i.reason, i.start, i.end) for i in energy.issues] == [
        (IssueReason.NOT_COVERED, _at(30), _at(60))
    ]


def test_pue_category_follows_the_it_meter() -> None:
    assert pue_category("ups_output") is PueCategory.PUE1
    assert pue_category("pdu_output") is PueCategory.PUE2
    assert pue_category("it_load") is PueCategory.PUE3
    assert set(IT_CIRCUIT_CATEGORY) <= set(CIRCUITS)
    with pytest.raises(ValueError, match="cooling"):
        pue_category("cooling")


def test_pue_and_ref_of_a_complete_hour() -> None:
    facility = interval_energies(_counter(50_000.0, 12.5, 12), METER)
    it = interval_energies(_counter(7_000.0, 10.0, 12), METER)
    renewable = interval_energies(_counter(300.0, 5.0, 12), METER)
    result = pue_for_window(facility, it, at=_at(30), window=Window.HOUR, it_circuit="pdu_output")
    assert (result.start, result.end) == (_at(0), _at(60))
    assert result.facility_kwh == pytest.approx(150.0)
    assert result.it_kwh == pytest.approx(120.0)
    assert result.pue == pytest.approx(1.25)
    assert result.category is PueCategory.PUE2
    assert result.complete
    ref = ref_for_window(renewable, facility, at=_at(30), window=Window.HOUR)
    assert ref.ref == pytest.approx(0.4)


def test_pue_is_not_computed_across_a_meter_replacement() -> None:
    readings = _counter(50_000.0, 12.5, 12)
    readings[7] = _reading(35, 2.0)  # replaced meter: counts from 2 kWh on
    readings[8:] = [_reading(35 + 5 * i, 2.0 + 12.5 * i) for i in range(1, 6)]
    facility = interval_energies(readings, METER)
    it = interval_energies(_counter(7_000.0, 10.0, 12), METER)
    hour = pue_for_window(facility, it, at=_at(0), window=Window.HOUR, it_circuit="it_load")
    assert hour.pue is None
    assert hour.it_kwh == pytest.approx(120.0)
    assert [(i.meter, i.reason, i.start) for i in hour.issues] == [
        ("utility", IssueReason.INCOMPLETE_INTERVAL, _at(30))
    ]
    quarters = pue_series(
        facility, it, start=_at(0), end=_at(60), window=Window.QUARTER_HOUR, it_circuit="it_load"
    )
    assert [q.complete for q in quarters] == [True, True, False, True]
    assert quarters[3].pue == pytest.approx(1.25)


def test_pue_below_one_and_zero_it_energy_are_refused() -> None:
    facility = interval_energies(_counter(0.0, 5.0, 12), METER)
    it = interval_energies(_counter(0.0, 10.0, 12), METER)
    below = pue_for_window(facility, it, at=_at(0), window=Window.HOUR, it_circuit="it_load")
    assert below.pue is None
    assert [i.reason for i in below.issues] == [IssueReason.RATIO_OUT_OF_RANGE]
    idle = interval_energies(_counter(0.0, 0.0, 12), METER)
    zero = pue_for_window(facility, idle, at=_at(0), window=Window.HOUR, it_circuit="it_load")
    assert [i.reason for i in zero.issues] == [IssueReason.ZERO_DENOMINATOR]


@given(
    it_kwh=st.lists(st.floats(0.01, 1_000), min_size=14, max_size=14),
    overhead=st.lists(st.floats(0, 1_000), min_size=14, max_size=14),
    offset_s=st.integers(0, 299),
)
def test_pue_is_never_below_one_when_the_facility_includes_the_it_load(
    it_kwh: list[float], overhead: list[float], offset_s: int
) -> None:
    # 5-min intervals starting before the hour, so the edges are split pro rata.
    first = T0 - timedelta(seconds=offset_s)
    starts = [first + timedelta(minutes=5 * i) for i in range(14)]

    def series(values: list[float]) -> list[IntervalEnergy]:
        return [
            IntervalEnergy(
                start=s, end=s + timedelta(minutes=5), status=IntervalStatus.OK, energy_kwh=v
            )
            for s, v in zip(starts, values, strict=True)
        ]

    facility = series([i + o for i, o in zip(it_kwh, overhead, strict=True)])
    result = pue_for_window(
        facility, series(it_kwh), at=T0, window=Window.HOUR, it_circuit="it_load"
    )
    assert result.pue is not None
    assert result.pue >= 1.0


def test_several_meters_sum_and_one_gap_blanks_the_sum() -> None:
    pdu_a = window_energy(
        interval_energies(_counter(0.0, 10.0, 12), METER), _at(0), _at(60), meter="pdu-a"
    )
    pdu_b = window_energy(
        interval_energies(_counter(50.0, 5.0, 12), METER), _at(0), _at(60), meter="pdu-b"
    )
    both = total_energy([pdu_a, pdu_b], start=_at(0), end=_at(60))
    assert both.energy_kwh == pytest.approx(180.0)
    short = window_energy(
        interval_energies(_counter(0.0, 5.0, 6), METER), _at(0), _at(60), meter="pdu-c"
    )
    blank = total_energy([pdu_a, short], start=_at(0), end=_at(60))
    assert blank.energy_kwh is None
    assert [i.meter for i in blank.issues] == ["pdu-c"]


def test_partial_pue_of_a_zone_and_wue() -> None:
    # Zone: IT 120 kWh and its cooling 30 kWh in the hour -> pPUE (120 + 30) / 120 = 1.25.
    it = window_energy(
        interval_energies(_counter(0.0, 10.0, 12), METER), _at(0), _at(60), meter="it"
    )
    cooling = window_energy(
        interval_energies(_counter(0.0, 2.5, 12), METER), _at(0), _at(60), meter="cooling"
    )
    zone = total_energy([it, cooling], start=_at(0), end=_at(60))
    ppue, issues = efficiency_ratio(zone, it, denominator_meter="it", low=1.0, high=math.inf)
    assert ppue == pytest.approx(1.25)
    assert issues == ()
    # WUE: 216 L of water for 120 kWh of IT energy = 1.8 L/kWh.
    water = window_energy(
        interval_energies(_counter(0.0, 18.0, 12), METER), _at(0), _at(60), meter="water"
    )
    wue, _ = efficiency_ratio(water, it, denominator_meter="it", low=0.0, high=math.inf)
    assert wue == pytest.approx(1.8)
