"""Per-reading derived points: hand-worked lines for each kind, boundaries included."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices import check_values
from pipelines.analytics.energy import Window, window_bounds
from pipelines.derive_config import DeriveSettings
from pipelines.derive_points import derived_line
from pipelines.derive_state import WindowKey
from pipelines.derive_windows import DATACENTER, TRAFFIC, keys_for_reading

AT = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
NS = 1_768_446_000_000_000_000


def _line(kind: str, values: dict[str, object], channel: str | None = None) -> str:
    line = derived_line(
        site="沱沱河 站",
        gateway="gw,1",
        device="dev-1",
        channel=channel,
        time=AT,
        values=check_values(kind, channel, values),
    )
    assert line is not None
    return line


def test_water_class_at_the_class_iii_limits_names_every_deciding_parameter() -> None:
    line = _line(
        "water_quality",
        {
            "water_temperature": 4.0,
            "ph": 7.5,
            "dissolved_oxygen": 5.0,
            "conductivity": 300.0,
            "turbidity": 3.0,
            "ammonia_nitrogen": 1.0,
            "permanganate_index": 6.0,
            "total_phosphorus": 0.2,
        },
    )
    assert line == (
        r"water_quality_class,device=dev-1,gateway=gw\,1,site=沱沱河\ 站 "
        'class=3.0,label="III",'
        'decided_by="dissolved_oxygen,permanganate_index,ammonia_nitrogen,total_phosphorus",'
        f'classed_on=5.0,missing="",partial=0.0 {NS}'
    )


def test_a_sample_without_optional_parameters_is_classed_on_what_it_has() -> None:
    line = _line(
        "water_quality",
        {
            "water_temperature": 4.0,
            "ph": 9.5,
            "dissolved_oxygen": 8.0,
            "conductivity": 300.0,
            "turbidity": 3.0,
        },
    )
    assert 'class=6.0,label="inferior V",decided_by="ph",classed_on=2.0' in line
    assert 'missing="permanganate_index,ammonia_nitrogen,total_phosphorus",partial=1.0' in line


def _road(surface: float, state: str, visibility: float, rh: float = 20.0) -> str:
    return _line(
        "road_weather",
        {
            "surface_temperature": surface,
            "surface_state": state,
            "water_film": 0.2,
            "visibility": visibility,
            "air_temperature": 2.0,
            "relative_humidity": rh,
            "wind_speed": 3.0,
        },
    )


def test_exactly_0_degc_on_a_wet_road_is_icing_risk_and_exactly_200_m_sets_no_limit() -> None:
    line = _road(0.0, "wet", 200.0)
    assert 'icing_level=1.0,icing_risk=1.0,icing_reasons="freezing_wet_surface"' in line
    assert "visibility_tier=0.0,leave_at_next_exit=0.0" in line
    assert "speed_limit_kmh" not in line
    # Dew point of 2 degC air at 20 % (Magnus): -18.6 degC.
    dew = float(line.split("dew_point=")[1].split()[0])
    assert dew == pytest.approx(-18.6, abs=0.1)


def test_just_above_0_degc_and_just_under_200_m() -> None:
    line = _road(0.1, "wet", 199.9)
    assert 'icing_level=0.0,icing_risk=0.0,icing_reasons=""' in line
    assert "visibility_tier=1.0,leave_at_next_exit=0.0" in line
    assert "speed_limit_kmh=60.0" in line


def test_under_50_m_the_driver_must_leave() -> None:
    line = _road(5.0, "dry", 49.0)
    assert "visibility_tier=3.0,leave_at_next_exit=1.0" in line
    assert "speed_limit_kmh=20.0" in line


def test_lane_flow_in_vehicles_per_hour_with_the_lane_tag() -> None:
    line = _line(
        "traffic_detector",
        {"interval_s": 60.0, "volume": 30.0, "mean_speed": 80.0, "occupancy": 15.0},
        channel="2",
    )
    assert line == (
        r"traffic_flow,device=dev-1,gateway=gw\,1,lane=2,site=沱沱河\ 站 "
        f"flow_vph=1800.0,congestion_level=1.0 {NS}"
    )


def test_other_kinds_derive_nothing() -> None:
    values = check_values(
        "hydrology", None, {"stage": 1.0, "discharge": 2.0, "water_temperature": 3.0}
    )
    assert (
        derived_line(site="s", gateway="g", device="d", channel=None, time=AT, values=values)
        is None
    )


_DC = DeriveSettings.model_validate(
    {
        "datacenters": [
            {
                "site": "dc",
                "utc_offset_h": 8,
                "facility": [{"device": "m", "circuit": "utility", "max_power_kw": 1}],
                "it": [{"device": "m", "circuit": "pdu_output", "max_power_kw": 1}],
            }
        ]
    }
)


@given(at=st.datetimes(datetime(2001, 1, 1), datetime(2099, 1, 1), timezones=st.just(UTC)))
def test_the_windows_a_reading_touches_are_its_own_and_its_neighbours(at: datetime) -> None:
    margin = timedelta(minutes=15)
    tz = timezone(timedelta(hours=8))
    expected = {
        WindowKey(DATACENTER, "dc", w, window_bounds(moment, w, tz)[0])
        for moment in (at - margin, at, at + margin)
        for w in Window
    }
    assert keys_for_reading(_DC, "dc", "energy_meter", "m", at) == expected
    assert keys_for_reading(_DC, "other site", "energy_meter", "m", at) == set()
    lanes = keys_for_reading(_DC, "G109", "traffic_detector", "radar", at)
    assert lanes == {
        WindowKey(TRAFFIC, "G109", w, window_bounds(at, w, tz)[0])
        for w in (Window.QUARTER_HOUR, Window.HOUR)
    }
