"""The one-call validation of a whole message agrees with the per-reading checks on every
message: same stored lines, same refusals with the same reasons and readings."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import wire
from devices import KindValues, Reading
from pipelines.config import SiteValidation
from pipelines.decode import Checks, DecodedReadings, TimeWindow, check_readings, decode_readings
from pipelines.site_limits import SiteLimits

SITE, GATEWAY = "沱沱河 站", "gw 1"
TOPIC = wire.readings_topic(SITE, GATEWAY)
NOW = datetime.now(UTC).replace(microsecond=0)
GOOD: list[dict[str, Any]] = [
    {
        "device": "hydro-1",
        "kind": "hydrology",
        "values": {"stage": 2.31, "discharge": 120.5, "water_temperature": 1.2},
    },
    {"device": "lanes", "kind": "traffic_detector", "channel": "L1", "values": {}},
    {
        "device": "road-1",
        "kind": "road_weather",
        "values": {"surface_state": "dry", "surface_temperature": -3.5},
    },
]
ODD: st.SearchStrategy[object] = st.sampled_from(
    [None, 0, 1, -1.5, 1e9, True, "1.0", "wet", "snow", [], {}, "2026-01-01T00:00:00"]
)


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    reading: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(GOOD))))
    offset = draw(st.sampled_from([0, -60, -3600, 3 * 3600, -40 * 365 * 86400]))
    reading["time"] = (NOW + timedelta(seconds=offset)).isoformat()
    for name in draw(
        st.lists(
            st.sampled_from(["values", "time", "channel", "kind", "device", "clock", "extra"]),
            max_size=1,
        )
    ):
        if name == "values":
            reading["values"][
                draw(
                    st.sampled_from(
                        ["stage", "discharge", "surface_state", "occupancy", "volume", "x"]
                    )
                )
            ] = draw(ODD)
        elif name == "kind":
            reading["kind"] = draw(st.sampled_from(["hydrology", "weather", "nope", 3]))
        elif name == "device":
            reading["device"] = draw(st.sampled_from(["hydro-1", "other", "a/b", " x", ""]))
        elif name == "channel":
            reading["channel"] = draw(st.sampled_from(["L1", "L9", None, "a b", 4]))
        elif name == "clock":
            reading["clock"] = draw(st.sampled_from(["corrected", "unsynced", "late"]))
        else:
            reading[name] = draw(ODD)
    return reading


def _checks() -> Checks:
    sites = {
        SITE: SiteValidation.model_validate(
            {
                "limits": {"hydrology": {"stage": [0.0, 40.0]}},
                "gateways": {GATEWAY: {"devices": ["hydro-1", "lanes", "road-1"]}},
            }
        )
    }
    devices = {(SITE, GATEWAY): frozenset(["hydro-1", "lanes", "road-1"])}
    return Checks(TimeWindow(), SiteLimits(sites), None, devices)


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(st.lists(readings(), min_size=1, max_size=4))
def test_one_call_and_per_reading_checks_agree(raw: list[dict[str, Any]]) -> None:
    body = {
        "schema": 1,
        "gateway": GATEWAY,
        "site": SITE,
        "seq": 1,
        "sent_at": NOW.isoformat(),
        "readings": raw,
    }
    checks = _checks()
    got = decode_readings(TOPIC, json.dumps(body).encode(), max_bytes=1 << 20, checks=checks)
    want = DecodedReadings(SITE, GATEWAY, 1)
    check_readings(want, json.loads(json.dumps(raw)), checks)
    assert got.lines == want.lines
    assert got.rejections == want.rejections
    assert [_stored(r, v) for r, v in got.readings] == [_stored(r, v) for r, v in want.readings]


def _stored(reading: Reading, values: KindValues) -> tuple[object, ...]:
    return (reading.device, reading.kind, reading.channel, reading.time, reading.clock, values)
