"""Road rules: Magnus dew point, icing risk at 0 degC, art. 81 visibility tiers, flow and congestion."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from devices.highway import RoadWeather, SurfaceState, TrafficDetector
from pipelines.analytics.road_safety import (
    CongestionLevel,
    CongestionThresholds,
    IcingLevel,
    IcingReason,
    LaneCount,
    LaneTotals,
    VisibilityTier,
    congestion_level,
    dew_point,
    flow_rate_per_hour,
    icing_risk,
    lane_flow_rate,
    lane_totals,
    low_visibility_rule,
    road_icing_risk,
    site_flow,
    site_flow_of_totals,
)


def test_dew_point_hand_worked() -> None:
    # gamma = ln(0.5) + 17.625*20/263.04 = 0.646953; Td = 243.04*gamma/(17.625-gamma)
    assert dew_point(20.0, 50.0) == pytest.approx(9.261, abs=1e-3)
    assert dew_point(-10.0, 100.0) == pytest.approx(-10.0)
    assert dew_point(0.0, 100.0) == pytest.approx(0.0)


@given(t=st.floats(-60, 50), rh=st.floats(1, 100))
def test_dew_point_never_exceeds_air_temperature(t: float, rh: float) -> None:
    assert dew_point(t, rh) <= t + 1e-9


@pytest.mark.parametrize("rh", [0.0, -1.0, 100.5, math.nan])
def test_dew_point_refuses_impossible_humidity(rh: float) -> None:
    with pytest.raises(ValueError, match="humidity"):
        dew_point(10.0, rh)


@pytest.mark.parametrize(
    ("surface", "state", "level", "reasons"),
    [
        # Exactly 0 degC on a wet surface is at risk; just above is not.
        (0.0, "wet", IcingLevel.RISK, (IcingReason.FREEZING_WET_SURFACE,)),
        (0.1, "wet", IcingLevel.NONE, ()),
        (-2.0, "moist", IcingLevel.RISK, (IcingReason.FREEZING_WET_SURFACE,)),
        (-2.0, "slush", IcingLevel.RISK, (IcingReason.FREEZING_WET_SURFACE,)),
        (-5.0, "dry", IcingLevel.NONE, ()),
        # The sensor's own frozen states are ICY whatever the temperature says.
        (1.5, "ice", IcingLevel.ICY, (IcingReason.ICY_SURFACE_STATE,)),
        (-3.0, "snow", IcingLevel.ICY, (IcingReason.ICY_SURFACE_STATE,)),
        (-3.0, "frost", IcingLevel.ICY, (IcingReason.ICY_SURFACE_STATE,)),
    ],
)
def test_icing_by_surface_state(
    surface: float, state: SurfaceState, level: IcingLevel, reasons: tuple[IcingReason, ...]
) -> None:
    # Dry air (dew point far below the surface) isolates the surface-state rules.
    risk = icing_risk(surface, state, air_temperature=2.0, relative_humidity=20.0)
    assert risk.level is level
    assert risk.reasons == reasons


def test_surface_at_or_below_the_dew_point_is_at_risk() -> None:
    point = dew_point(-2.0, 90.0)
    at = icing_risk(point, "dry", air_temperature=-2.0, relative_humidity=90.0)
    assert at.level is IcingLevel.RISK
    assert at.reasons == (IcingReason.AT_OR_BELOW_DEW_POINT,)
    assert at.dew_point == pytest.approx(point)
    above = icing_risk(point + 0.01, "dry", air_temperature=-2.0, relative_humidity=90.0)
    assert above.level is IcingLevel.NONE


def test_zero_humidity_has_no_dew_point_and_no_condensation() -> None:
    risk = icing_risk(-30.0, "dry", air_temperature=-20.0, relative_humidity=0.0)
    assert risk.dew_point is None
    assert risk.level is IcingLevel.NONE


def test_all_rules_that_fire_are_reported() -> None:
    reading = RoadWeather(
        surface_temperature=-1.0,
        surface_state="ice",
        water_film=0.0,
        visibility=800.0,
        air_temperature=0.5,
        relative_humidity=95.0,
        wind_speed=3.0,
    )
    risk = road_icing_risk(reading)
    assert risk.level is IcingLevel.ICY
    assert risk.reasons == (IcingReason.ICY_SURFACE_STATE, IcingReason.AT_OR_BELOW_DEW_POINT)


@pytest.mark.parametrize(
    ("visibility", "tier", "speed", "gap", "leave"),
    [
        (200.0, VisibilityTier.NORMAL, None, None, False),  # exactly 200 m is not under 200
        (199.9, VisibilityTier.UNDER_200_M, 60, 100, False),
        (100.0, VisibilityTier.UNDER_200_M, 60, 100, False),
        (99.0, VisibilityTier.UNDER_100_M, 40, 50, False),
        (50.0, VisibilityTier.UNDER_100_M, 40, 50, False),
        (49.9, VisibilityTier.UNDER_50_M, 20, None, True),
        (0.0, VisibilityTier.UNDER_50_M, 20, None, True),
        (20_000.0, VisibilityTier.NORMAL, None, None, False),
    ],
)
def test_art_81_tiers(
    visibility: float, tier: VisibilityTier, speed: int | None, gap: int | None, leave: bool
) -> None:
    rule = low_visibility_rule(visibility)
    assert rule.tier is tier
    assert rule.max_speed_kmh == speed
    assert rule.min_gap_m == gap
    assert rule.leave_at_next_exit is leave


@given(a=st.floats(0, 20_000), b=st.floats(0, 20_000))
def test_lower_visibility_never_relaxes_the_rule(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert low_visibility_rule(low).tier >= low_visibility_rule(high).tier


def test_flow_rate_scales_the_count_to_an_hour() -> None:
    assert flow_rate_per_hour(30, 60) == pytest.approx(1_800)
    assert flow_rate_per_hour(0, 300) == 0
    lane = TrafficDetector(interval_s=300.0, volume=120.0, mean_speed=85.0, occupancy=9.0)
    assert lane_flow_rate(lane) == pytest.approx(1_440)
    with pytest.raises(ValueError, match="interval_s"):
        flow_rate_per_hour(10, 0)
    with pytest.raises(ValueError, match="volume"):
        flow_rate_per_hour(-1, 60)


@pytest.mark.parametrize(
    ("occupancy", "level"),
    [
        (0.0, CongestionLevel.FREE),
        (14.99, CongestionLevel.FREE),
        (15.0, CongestionLevel.MODERATE),
        (24.99, CongestionLevel.MODERATE),
        (25.0, CongestionLevel.HEAVY),
        (40.0, CongestionLevel.HEAVY),  # jammed is strictly above 40%
        (40.01, CongestionLevel.JAMMED),
        (100.0, CongestionLevel.JAMMED),
    ],
)
def test_congestion_by_occupancy(occupancy: float, level: CongestionLevel) -> None:
    assert congestion_level(occupancy) is level


def test_congestion_thresholds_are_configurable_and_checked() -> None:
    strict = CongestionThresholds(moderate_from=10, heavy_from=20, jammed_above=30)
    assert congestion_level(31, strict) is CongestionLevel.JAMMED
    with pytest.raises(ValidationError, match="thresholds"):
        CongestionThresholds(moderate_from=30, heavy_from=20)
    with pytest.raises(ValueError, match="occupancy"):
        congestion_level(101)


def _lane(lane: str, volume: float, occupancy: float, interval_s: float = 300) -> LaneCount:
    return LaneCount(lane=lane, interval_s=interval_s, volume=volume, occupancy=occupancy)


def test_site_flow_sums_lane_rates_over_a_complete_window() -> None:
    # 15 min = three 5-min counts per lane: lane 1 carries 100+110+90 = 300 veh -> 1200 veh/h,
    # lane 2 carries 50 * 3 = 150 veh -> 600 veh/h.
    counts = [_lane("1", v, 10.0) for v in (100, 110, 90)] + [_lane("2", 50, 22.0)] * 3
    flow = site_flow(counts, 900)
    assert flow.flow_vph == pytest.approx(1_800)
    assert flow.vehicles == 450
    assert flow.lanes == 2
    assert flow.coverage == pytest.approx(1.0)
    assert flow.mean_occupancy == pytest.approx(16.0)
    assert flow.congestion_level is CongestionLevel.MODERATE
    assert flow.complete


def test_a_missing_count_lowers_coverage_not_the_rate() -> None:
    counts = [_lane("1", 100, 10.0), _lane("1", 100, 10.0), _lane("2", 50, 5.0)] + [
        _lane("2", 50, 5.0)
    ] * 2
    flow = site_flow(counts, 900)
    assert flow.flow_vph == pytest.approx(1_200 + 600)  # lane 1: 200 veh in 600 s
    assert flow.coverage == pytest.approx(600 / 900)
    assert not flow.complete


def test_site_flow_refuses_an_empty_window_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="no lane reading"):
        site_flow([], 900)
    with pytest.raises(ValueError, match="occupancy"):
        site_flow([_lane("1", 1, 120.0)], 900)


_COUNTS = st.lists(
    st.builds(
        LaneCount,
        lane=st.sampled_from(["1", "2", "3"]),
        interval_s=st.sampled_from([20.0, 60.0, 300.0]),
        volume=st.floats(0, 200),
        occupancy=st.floats(0, 100),
    ),
    min_size=1,
    max_size=30,
)


@given(_COUNTS, st.sampled_from([900.0, 3600.0]))
def test_a_window_from_lane_sums_is_the_window_from_its_readings(
    counts: list[LaneCount], window_s: float
) -> None:
    # What InfluxDB's sums per lane give (pipelines/derive_windows.py), summed here in
    # another order: the figures agree to rounding.
    by_lane: dict[str, list[LaneCount]] = {}
    for c in counts:
        by_lane.setdefault(c.lane, []).append(c)
    summed = [
        LaneTotals(
            lane=lane,
            covered_s=sum(c.interval_s for c in reversed(rows)),
            vehicles=sum(c.volume for c in reversed(rows)),
            shortest_s=min(c.interval_s for c in rows),
            occupancy_s=sum(c.occupancy * c.interval_s for c in reversed(rows)),
        )
        for lane, rows in by_lane.items()
    ]
    direct = site_flow(counts, window_s)
    from_sums = site_flow_of_totals(summed, window_s)
    assert from_sums.flow_vph == pytest.approx(direct.flow_vph, rel=1e-9, abs=1e-9)
    assert from_sums.vehicles == pytest.approx(direct.vehicles, rel=1e-9, abs=1e-9)
    assert from_sums.mean_occupancy == pytest.approx(direct.mean_occupancy, rel=1e-9, abs=1e-9)
    assert (from_sums.lanes, from_sums.complete) == (direct.lanes, direct.complete)
    assert from_sums.coverage == pytest.approx(direct.coverage)
    assert {t.lane for t in lane_totals(counts)} == set(by_lane)


def test_lane_sums_that_no_valid_readings_could_give_are_refused() -> None:
    good = {"lane": "1", "covered_s": 900.0, "vehicles": 30.0, "shortest_s": 300.0}
    with pytest.raises(ValueError, match="occupancy"):
        site_flow_of_totals([LaneTotals(**good, occupancy_s=900.0 * 101)], 900)
    with pytest.raises(ValueError, match="volume"):
        site_flow_of_totals([LaneTotals(**{**good, "vehicles": -1.0}, occupancy_s=0.0)], 900)
    with pytest.raises(ValueError, match="no lane reading"):
        site_flow_of_totals([], 900)
