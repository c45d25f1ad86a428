"""The InfluxDB mapping, checked against a real InfluxDB: escaping, identity and idempotent retries."""

from datetime import UTC, datetime, timedelta

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import Reading, check_values
from devices.identifiers import IDENTIFIER_PATTERN
from pipelines.influx_query import influx_query
from pipelines.line_protocol import timestamp_ns, to_line

names = st.from_regex(IDENTIFIER_PATTERN, fullmatch=True) | st.sampled_from(
    ["沱沱河 水文站", "G109 K3012", "a,b=c", 'quote"d', "tab stop", "= leading equals", "x y,z"]
)
T0 = datetime(2026, 7, 1, 6, 30, 0, 123456, tzinfo=UTC)
RACK = {"inlet_temperature": 23.5, "relative_humidity": 41.0}


def _line(site: str, gateway: str, device: str, rack: str, at: datetime = T0) -> str:
    reading = Reading(device=device, kind="rack_environment", channel=rack, time=at, values=RACK)
    return to_line(
        site, gateway, reading, check_values(reading.kind, reading.channel, reading.values)
    )


async def _write(url: str, db: str, body: str) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
        response = await http.post(
            "/write", params={"db": db, "precision": "ns"}, content=body.encode()
        )
    assert response.status_code == 204, response.text


def test_line_shape_and_escaping() -> None:
    line = _line("沱沱河 站", 'gw"1', "a,b=c d", "A 01")
    assert line == (
        'rack_environment,device=a\\,b\\=c\\ d,gateway=gw"1,rack=A\\ 01,site=沱沱河\\ 站 '
        f"inlet_temperature=23.5,relative_humidity=41.0 {timestamp_ns(T0)}"
    )


def test_timestamps_are_exact_to_the_microsecond() -> None:
    assert timestamp_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert timestamp_ns(T0) == int(T0.timestamp()) * 10**9 + 123456 * 1000
    assert timestamp_ns(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1000


def test_string_fields_escape_quotes_and_backslashes() -> None:
    values = {
        "surface_temperature": -1.0,
        "surface_state": "ice",
        "water_film": 0.2,
        "visibility": 150.0,
        "air_temperature": -2.0,
        "relative_humidity": 95.0,
        "wind_speed": 3.0,
    }
    reading = Reading(device="rws", kind="road_weather", time=T0, values=values)
    line = to_line("s", "g", reading, check_values("road_weather", None, values))
    assert 'surface_state="ice"' in line
    assert "wind_direction" not in line, "absent optional quantities are not written"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(site=names, gateway=names, device=names, rack=names)
async def test_any_names_round_trip_through_a_real_influxdb(
    influxdb, influx_db, site: str, gateway: str, device: str, rack: str
) -> None:
    await _write(influxdb.url, influx_db, _line(site, gateway, device, rack))
    series = await influx_query(
        influxdb.url,
        "SELECT last(inlet_temperature) FROM rack_environment GROUP BY *",
        database=influx_db,
    )
    stored = {(s.tags["site"], s.tags["gateway"], s.tags["device"], s.tags["rack"]) for s in series}
    assert (site, gateway, device, rack) in stored


async def test_a_retried_reading_is_one_point_and_distinct_readings_are_not(
    influxdb, influx_db
) -> None:
    base = ("site A", "gw", "dev", "A01")
    lines = [
        _line(*base),
        _line(*base),  # a retry: same point
        _line("site B", "gw", "dev", "A01"),
        _line("site A", "gw2", "dev", "A01"),
        _line("site A", "gw", "dev2", "A01"),
        _line("site A", "gw", "dev", "A02"),
        _line(*base, at=T0 + timedelta(microseconds=1)),
    ]
    await _write(influxdb.url, influx_db, "\n".join(lines))
    await _write(influxdb.url, influx_db, lines[0])  # and a redelivery later
    series = await influx_query(
        influxdb.url, "SELECT count(inlet_temperature) FROM rack_environment", database=influx_db
    )
    assert series[0].values[0][1] == 6
