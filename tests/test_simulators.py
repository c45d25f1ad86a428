"""The device simulators: valid, deterministic, seeded and believable readings for every kind."""

import statistics
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue, ValidationError

from devices import KINDS, Reading, check_values
from devices.datacenter import CIRCUITS
from devices.simulators import SIMULATORS, Simulator, make_simulator

BEIJING = timezone(timedelta(hours=8))
SITE_KINDS = (
    "water_quality",
    "hydrology",
    "weather",
    "soil_profile",
    "station_health",
    "road_weather",
)
DEFAULT_CHANNELS: dict[str, list[str | None]] = {
    "soil_profile": ["10", "40", "80", "160", "320"],
    "traffic_detector": ["1", "2", "3", "4"],
    "energy_meter": ["utility", "ups_output", "it_load", "cooling"],
    "rack_environment": ["A01", "A02", "A03", "A04"],
}

instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
seeds = st.integers(min_value=-(2**63), max_value=2**63)


def every(start: datetime, step: timedelta, count: int) -> Iterator[datetime]:
    return (start + i * step for i in range(count))


def num(values: Mapping[str, JsonValue], name: str) -> float:
    value = values[name]
    assert isinstance(value, float), (name, value)
    return value


def values_of(sim: Simulator, at: datetime, name: str, channel: str | None = None) -> float:
    [reading] = [r for r in sim.sample(at) if r.channel == channel]
    return num(reading.values, name)


def assert_valid(readings: list[Reading]) -> None:
    for r in readings:
        check_values(r.kind, r.channel, r.values)


# --- every kind, any seed, any time: readings the catalog accepts ---


def test_every_catalog_kind_has_a_simulator() -> None:
    assert set(SIMULATORS) == set(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=40, deadline=None)
@given(seed=seeds, at=instants)
def test_readings_pass_the_catalog(kind: str, seed: int, at: datetime) -> None:
    readings = make_simulator(kind, "dev-1", seed=seed).sample(at)
    assert [r.channel for r in readings] == DEFAULT_CHANNELS.get(kind, [None])
    for r in readings:
        assert (r.time, r.device, r.kind) == (at, "dev-1", kind)
        check_values(kind, r.channel, r.values)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(SITE_KINDS),
    altitude=st.floats(2_500, 6_000),
    latitude=st.floats(25, 40),
    longitude=st.floats(70, 125),
    interval=st.floats(0.05, 86_400),
    at=instants,
)
def test_any_allowed_site_gives_valid_readings(
    kind: str, altitude: float, latitude: float, longitude: float, interval: float, at: datetime
) -> None:
    options = {"altitude_m": altitude, "latitude": latitude, "longitude": longitude}
    sim = make_simulator(kind, "site", interval_s=interval, options=options)
    assert_valid(sim.sample(at))


@settings(max_examples=40, deadline=None)
@given(
    interval=st.integers(1, 3_600),
    lanes=st.lists(st.sampled_from(["1", "2", "3", "4", "5", "出口匝道"]), min_size=1, unique=True),
    seed=seeds,
    at=instants,
)
def test_traffic_counts_respect_capacity_at_any_interval(
    interval: int, lanes: list[str], seed: int, at: datetime
) -> None:
    readings = make_simulator(
        "traffic_detector", "radar", seed=seed, interval_s=interval, options={"lanes": lanes}
    ).sample(at)
    assert [r.channel for r in readings] == lanes
    assert_valid(readings)
    assert all(r.values["interval_s"] == interval for r in readings)


@settings(max_examples=25, deadline=None)
@given(
    circuits=st.lists(st.sampled_from(CIRCUITS), min_size=1, unique=True),
    it_load_kw=st.floats(1, 100_000),
    depths=st.lists(st.integers(5, 2_000), min_size=1, max_size=8, unique=True),
    at=instants,
)
def test_listed_channels_are_the_ones_reported(
    circuits: list[str], it_load_kw: float, depths: list[int], at: datetime
) -> None:
    meter = make_simulator(
        "energy_meter", "m", options={"circuits": circuits, "it_load_kw": it_load_kw}
    )
    first = meter.sample(at)
    later = meter.sample(at + timedelta(minutes=5))
    assert [r.channel for r in later] == circuits
    assert_valid(first + later)
    soil = make_simulator("soil_profile", "s", options={"depths_cm": depths}).sample(at)
    assert [r.channel for r in soil] == [str(d) for d in depths]
    assert_valid(soil)


# --- determinism ---


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_seed_same_readings_other_seed_other_values(kind: str) -> None:
    times = list(every(datetime(2025, 3, 1, 6, tzinfo=UTC), timedelta(minutes=97), 40))
    one, two = (make_simulator(kind, "twin", seed=7) for _ in range(2))
    other = make_simulator(kind, "twin", seed=8)
    ours = [one.sample(at) for at in times]
    assert ours == [two.sample(at) for at in times]
    assert [[r.values for r in rs] for rs in ours] != [
        [r.values for r in other.sample(at)] for at in times
    ]


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "energy_meter"])
def test_gauges_are_a_function_of_time_alone(kind: str) -> None:
    at = datetime(2025, 8, 9, 10, 11, 12, tzinfo=UTC)
    walked = make_simulator(kind, "g", seed=3)
    for earlier in every(at - timedelta(days=2), timedelta(hours=5), 9):
        walked.sample(earlier)
    assert walked.sample(at) == make_simulator(kind, "g", seed=3).sample(at)


def test_device_name_is_part_of_the_seed() -> None:
    at = datetime(2025, 5, 5, tzinfo=UTC)
    a, b = (make_simulator("weather", name).sample(at)[0].values for name in ("Tuotuohe", "Madoi"))
    assert a != b


# --- counters ---


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    start=instants,
    steps_s=st.lists(st.integers(-7 * 86_400, 3 * 86_400), min_size=1, max_size=30),
)
def test_energy_counters_never_fall_whatever_the_clock_does(
    seed: int, start: datetime, steps_s: list[int]
) -> None:
    meter = make_simulator("energy_meter", "m", seed=seed, options={"circuits": list(CIRCUITS)})
    at = start
    previous = {r.channel: num(r.values, "energy_kwh") for r in meter.sample(at)}
    for step in steps_s:
        at += timedelta(seconds=step)
        current = {r.channel: num(r.values, "energy_kwh") for r in meter.sample(at)}
        for circuit, kwh in current.items():
            assert kwh >= previous[circuit], (circuit, step)
        previous = current


def test_energy_counter_adds_power_times_elapsed_time() -> None:
    meter = make_simulator("energy_meter", "m", seed=1, options={"circuits": ["it_load"]})
    start = datetime(2025, 6, 1, tzinfo=UTC)
    first = values_of(meter, start, "energy_kwh", "it_load")
    power = values_of(meter, start + timedelta(hours=1), "active_power_kw", "it_load")
    added = values_of(meter, start + timedelta(hours=1), "energy_kwh", "it_load") - first
    assert added == pytest.approx(power, rel=0.1)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, day=st.integers(0, 364), hours=st.sampled_from([1, 3, 24]))
def test_daily_pue_from_counters_is_a_western_hubs(seed: int, day: int, hours: int) -> None:
    meter = make_simulator("energy_meter", "dc", seed=seed)
    start = datetime(2025, 1, 1, tzinfo=BEIJING) + timedelta(days=day)
    readings = [meter.sample(at) for at in every(start, timedelta(hours=hours), 24 // hours + 1)]
    energy = [{r.channel: num(r.values, "energy_kwh") for r in rs} for rs in readings]

    def used(circuit: str) -> float:
        return energy[-1][circuit] - energy[0][circuit]

    assert 1.1 < used("utility") / used("it_load") < 1.6
    # PUE1 (IT metered at the UPS output) sees less of the losses than PUE3.
    assert used("utility") / used("ups_output") < used("utility") / used("it_load")


# --- believability: ecology ---


def test_plateau_pressure_follows_altitude() -> None:
    times = list(every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=61), 144))
    station = make_simulator("weather", "w", seed=2)
    pressures = [values_of(station, at, "air_pressure") for at in times]
    assert all(500 < p < 720 for p in pressures)
    low, high = (
        make_simulator("weather", "w", seed=2, options={"altitude_m": alt})
        for alt in (3_500, 5_000)
    )
    at = times[0]
    assert values_of(low, at, "air_pressure") > values_of(high, at, "air_pressure") + 60


@pytest.mark.parametrize("month", [1, 4, 7, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_dawn_is_colder_than_afternoon_on_most_days(month: int, seed: int) -> None:
    station = make_simulator("weather", "w", seed=seed)
    colder = sum(
        values_of(station, datetime(2025, month, day, 5, tzinfo=BEIJING), "air_temperature")
        < values_of(station, datetime(2025, month, day, 15, tzinfo=BEIJING), "air_temperature")
        for day in range(1, 29)
    )
    assert colder >= 24


def test_winter_is_cold_and_summer_mild() -> None:
    station = make_simulator("weather", "w", seed=5)

    def temperatures(month: int) -> list[float]:
        start = datetime(2025, month, 1, tzinfo=UTC)
        return [
            values_of(station, at, "air_temperature")
            for at in every(start, timedelta(hours=3), 240)
        ]

    january, july = temperatures(1), temperatures(7)
    assert statistics.mean(january) < statistics.mean(july) - 15
    assert -45 < min(january) < -20
    assert 0 < statistics.mean(july) < 15


def test_sun_shines_by_day_only_and_strongly() -> None:
    station = make_simulator("weather", "w", seed=1)
    june = [datetime(2025, 6, day, tzinfo=BEIJING) for day in range(1, 29)]
    assert all(values_of(station, d + timedelta(hours=1), "solar_radiation") == 0 for d in june)
    noon = max(values_of(station, d + timedelta(hours=14), "solar_radiation") for d in june)
    assert 900 < noon < 1_300


def test_it_rains_mostly_in_the_monsoon() -> None:
    station = make_simulator("weather", "w", seed=0, interval_s=3_600)
    hourly = list(every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=1), 365 * 24))
    rain = [(at.month, values_of(station, at, "precipitation")) for at in hourly[::2]]
    total = 2 * sum(mm for _, mm in rain)
    summer = 2 * sum(mm for month, mm in rain if 6 <= month <= 9)
    assert 100 < total < 700
    assert summer > 0.6 * total


def test_stage_and_discharge_follow_one_rating_curve_with_a_summer_peak() -> None:
    gauge = make_simulator("hydrology", "h", seed=4)
    readings = [
        gauge.sample(at)[0].values
        for at in every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=29), 300)
    ]
    by_stage = sorted(readings, key=lambda v: (num(v, "stage"), num(v, "discharge")))
    flows = [num(v, "discharge") for v in by_stage]
    assert flows == sorted(flows), "a higher stage must carry more water"

    def mean_flow(month: int) -> float:
        start = datetime(2025, month, 1, tzinfo=UTC)
        return statistics.mean(
            values_of(gauge, at, "discharge") for at in every(start, timedelta(days=1), 28)
        )

    assert mean_flow(7) > 5 * mean_flow(2)


def test_river_water_is_near_freezing_in_winter_and_cool_in_summer() -> None:
    gauge = make_simulator("hydrology", "h", seed=4)
    jan = [
        values_of(gauge, at, "water_temperature")
        for at in every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=7), 100)
    ]
    jul = [
        values_of(gauge, at, "water_temperature")
        for at in every(datetime(2025, 7, 1, tzinfo=UTC), timedelta(hours=7), 100)
    ]
    assert all(-1 <= t <= 0.5 for t in jan)
    assert 3 < statistics.mean(jul) < 16


def test_plateau_river_is_clean_and_oxygen_follows_cold_and_pressure() -> None:
    sonde = make_simulator("water_quality", "wq", seed=6)
    year = [
        sonde.sample(at)[0].values
        for at in every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=37), 237)
    ]
    for v in year:
        assert 7.8 <= num(v, "ph") <= 8.6
        assert 100 <= num(v, "conductivity") <= 1_000
        assert num(v, "ammonia_nitrogen") <= 0.15  # GB 3838 class I
    jan, jul = datetime(2025, 1, 15, 6, tzinfo=UTC), datetime(2025, 7, 15, 6, tzinfo=UTC)
    assert values_of(sonde, jan, "dissolved_oxygen") > values_of(sonde, jul, "dissolved_oxygen")
    low, high = (
        make_simulator("water_quality", "wq", seed=6, options={"altitude_m": a})
        for a in (3_500, 5_000)
    )
    assert values_of(low, jan, "dissolved_oxygen") > values_of(high, jan, "dissolved_oxygen")
    assert 6 < values_of(sonde, jan, "dissolved_oxygen") < 10


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_permafrost_stays_frozen_under_a_damped_lagged_seasonal_wave(seed: int) -> None:
    profile = make_simulator("soil_profile", "p", seed=seed)
    by_depth: dict[str, list[tuple[datetime, float]]] = {}
    for at in every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=53), 331):
        for r in profile.sample(at):
            assert r.channel is not None
            by_depth.setdefault(r.channel, []).append((at, num(r.values, "soil_temperature")))
    assert max(t for _, t in by_depth["320"]) < 0
    assert max(t for _, t in by_depth["10"]) > 5, "the active layer thaws in summer"
    ranges = [max(t for _, t in s) - min(t for _, t in s) for s in by_depth.values()]
    assert ranges == sorted(ranges, reverse=True), "deeper layers swing less"
    warmest = {
        depth: max((p for p in s if p[0].year == 2025), key=lambda p: p[1])[0]
        for depth, s in by_depth.items()
    }
    assert warmest["320"] - warmest["40"] > timedelta(days=60), "and later"


def test_station_battery_charges_by_day_and_voltage_tracks_charge() -> None:
    station = make_simulator("station_health", "st", seed=3)
    gained = 0
    for day in range(1, 29):
        dawn = station.sample(datetime(2025, 1, day, 7, tzinfo=BEIJING))[0].values
        dusk = station.sample(datetime(2025, 1, day, 19, tzinfo=BEIJING))[0].values
        assert dawn["solar_charge_power"] == 0
        gained += num(dusk, "battery_soc") > num(dawn, "battery_soc")
    assert gained >= 25
    nights = [
        station.sample(at)[0].values
        for at in every(datetime(2025, 1, 1, 1, tzinfo=BEIJING), timedelta(days=1), 200)
    ]
    assert all(v["solar_charge_power"] == 0 for v in nights)
    by_charge = sorted(nights, key=lambda v: (num(v, "battery_soc"), num(v, "battery_voltage")))
    volts = [num(v, "battery_voltage") for v in by_charge]
    assert volts == sorted(volts), "a fuller battery shows a higher resting voltage"
    assert all(11.5 <= v <= 14.8 for v in volts)


# --- believability: highway ---


def test_morning_rush_outnumbers_the_small_hours() -> None:
    detector = make_simulator("traffic_detector", "radar", seed=9, interval_s=300)

    def weekday_volume(hour: int) -> float:
        days = [
            datetime(2025, 3, d, hour, tzinfo=BEIJING) for d in range(3, 29) if d % 7 not in (1, 2)
        ]
        return statistics.mean(
            sum(num(r.values, "volume") for r in detector.sample(at)) for at in days
        )

    assert weekday_volume(8) > 5 * weekday_volume(3)
    assert weekday_volume(18) > 5 * weekday_volume(3)


def test_speed_falls_and_occupancy_rises_with_volume() -> None:
    detector = make_simulator(
        "traffic_detector", "radar", seed=2, interval_s=900, options={"lanes": ["1"]}
    )
    samples = [
        detector.sample(datetime(2025, 3, 4, hour, tzinfo=BEIJING))[0].values
        for hour in (3, 8, 11, 18)
    ]
    night, *busy = samples
    for v in busy:
        assert num(v, "volume") > num(night, "volume")
        assert num(v, "occupancy") > num(night, "occupancy")
        if num(night, "volume"):
            assert num(v, "mean_speed") < num(night, "mean_speed")


def test_road_surface_is_colder_than_air_at_night_and_states_agree() -> None:
    station = make_simulator("road_weather", "rws", seed=1)
    for at in every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(minutes=71), 2_000):
        v = station.sample(at)[0].values
        surface, air = num(v, "surface_temperature"), num(v, "air_temperature")
        film = num(v, "water_film")
        if 2 <= at.astimezone(BEIJING).hour < 5:
            assert surface < air
        state = v["surface_state"]
        if state in ("ice", "frost", "snow"):
            assert surface <= 0
        if state == "ice":
            assert film > 0
        if film >= 0.05 and surface <= 0:
            assert state in ("ice", "snow")
        if state in ("wet", "moist"):
            assert film > 0
            assert surface > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_fog_comes_sometimes_but_rarely(seed: int) -> None:
    station = make_simulator("road_weather", "rws", seed=seed)
    month = list(every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(minutes=15), 31 * 96))
    visibility = [values_of(station, at, "visibility") for at in month]
    dense = sum(v < 200 for v in visibility)
    assert 0 < dense < 0.02 * len(month)
    assert statistics.median(visibility) > 10_000


# --- believability: data center ---


def test_rack_inlets_stay_mostly_in_the_recommended_band() -> None:
    racks = make_simulator("rack_environment", "row-a", seed=11)
    readings = [
        r.values
        for at in every(datetime(2025, 1, 1, tzinfo=UTC), timedelta(hours=3), 2_920)
        for r in racks.sample(at)
    ]
    inlet = [num(v, "inlet_temperature") for v in readings]
    assert sum(20 <= t <= 26 for t in inlet) > 0.95 * len(inlet)
    assert all(30 <= num(v, "relative_humidity") <= 60 for v in readings)


# --- options and misuse ---


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="water_qualty"):
        make_simulator("water_qualty", "x")


@pytest.mark.parametrize(
    ("kind", "options", "named"),
    [
        ("weather", {"altitde_m": 4_000}, "altitde_m"),
        ("soil_profile", {"depths_cm": [10, 10]}, "depths_cm"),
        ("soil_profile", {"depths_cm": [0]}, "depths_cm"),
        ("traffic_detector", {"lanes": []}, "lanes"),
        ("traffic_detector", {"lanes": ["a/b"]}, "lanes"),
        ("energy_meter", {"circuits": ["utility", "chiller"]}, "chiller"),
        ("energy_meter", {"it_load_kw": -5}, "it_load_kw"),
        ("rack_environment", {"rack": ["A01"]}, "rack"),
        ("hydrology", {"altitude_m": 100}, "altitude_m"),
    ],
)
def test_bad_options_fail_naming_the_key(kind: str, options: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        make_simulator(kind, "x", options=options)


@pytest.mark.parametrize(
    ("kind", "interval"),
    [("weather", 0), ("weather", -1), ("traffic_detector", 0.2), ("traffic_detector", 7_200)],
)
def test_unusable_intervals_are_refused(kind: str, interval: float) -> None:
    with pytest.raises(ValueError, match=kind):
        make_simulator(kind, "x", interval_s=interval)


def test_bad_device_name_and_naive_time_are_refused() -> None:
    with pytest.raises(ValidationError):
        make_simulator("weather", "a/b")
    with pytest.raises(ValueError, match="time zone"):
        make_simulator("weather", "w").sample(datetime(2025, 1, 1))


def test_sample_time_comes_back_in_utc() -> None:
    at = datetime(2025, 1, 1, 8, tzinfo=BEIJING)
    [reading] = make_simulator("weather", "w").sample(at)
    assert reading.time == at
    assert reading.time.utcoffset() == timedelta(0)
