"""The one-call validation of a whole message agrees with the per-reading checks on every
message: same stored lines, same refusals with the same reasons and readings."""

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from collector import wire
from devices import KINDS
from devices.simulators import make_simulator
from pipelines import decode
from pipelines.config import SiteValidation
from pipelines.decode import (
    Accepted,
    Checks,
    DecodedReadings,
    MessageRejected,
    Rejection,
    TimeWindow,
    check_readings,
    decode_readings,
)
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
RAW = ("1e400", "-0.0", "1E1", "2.5e-3", "12345678901234567890123", "1.0000000000000002")
"""Number tokens as a gateway's JSON may spell them (written into the text as they are)."""
ODD: st.SearchStrategy[object] = st.sampled_from(
    [None, 0, 1, -1.5, 1e9, True, "1.0", "wet", "snow", [], {}, "2026-01-01T00:00:00"]
    + [f"@{token}" for token in RAW]
)
TIMES = [
    NOW.isoformat().replace("+00:00", "Z"),
    NOW.isoformat().replace("+00:00", "z").replace("T", "t"),
    NOW.isoformat().replace("T", " "),
    (NOW + timedelta(hours=8)).isoformat().replace("+00:00", "+08:00"),
    (NOW - timedelta(hours=5, minutes=30)).isoformat().replace("+00:00", "-05:30"),
    NOW.isoformat().replace("+00:00", ".1234567Z"),
    NOW.isoformat().replace("+00:00", ".5+00:00"),
    NOW.isoformat().replace("+00:00", ""),
    NOW.date().isoformat(),
    NOW.isoformat().replace("+00:00", "+0000"),
    NOW.isoformat().replace("+00:00", "+00:60"),
    NOW.isoformat().replace("+00:00", "-00:61"),
    NOW.isoformat().replace("+00:00", "+24:00"),
    (NOW + timedelta(hours=23, minutes=59)).isoformat().replace("+00:00", "+23:59"),
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "@1700000000",
]


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
        elif name == "time":
            reading["time"] = draw(st.sampled_from(TIMES) | ODD)
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
@given(st.lists(readings(), min_size=1, max_size=4), st.sampled_from([NOW.isoformat(), *TIMES]))
def test_one_call_and_per_reading_checks_agree(raw: list[dict[str, Any]], sent_at: str) -> None:
    body = {
        "schema": 1,
        "gateway": GATEWAY,
        "site": SITE,
        "seq": 1,
        "sent_at": sent_at,
        "readings": raw,
    }
    checks = _checks()
    text = json.dumps(body, ensure_ascii=False)
    for token in (*RAW, "1700000000"):
        text = text.replace(f'"@{token}"', token)
    try:
        wire.ReadingsEnvelope.model_validate_json(text)
    except ValidationError:
        # pydantic refuses the envelope (its sent_at): so must the one call.
        with pytest.raises(MessageRejected, match="bad_envelope"):
            decode_readings(TOPIC, text.encode(), max_bytes=1 << 20, checks=checks)
        return
    got = decode_readings(TOPIC, text.encode(), max_bytes=1 << 20, checks=checks)
    want = DecodedReadings(SITE, GATEWAY, 1)
    check_readings(want, json.loads(text)["readings"], checks)
    assert got.lines == want.lines
    assert _timeless(got.rejections) == _timeless(want.rejections)
    assert [_stored(r) for r in got.readings] == [_stored(r) for r in want.readings]


def _timeless(rejections: list[Rejection]) -> list[Rejection]:
    """The two paths read the clock a moment apart: "N s ahead" may differ by one."""
    return [
        dataclasses.replace(r, detail=re.sub(r"is \d+ s ahead", "is N s ahead", r.detail))
        for r in rejections
    ]


def _stored(reading: Accepted) -> tuple[object, ...]:
    return (
        reading.device,
        reading.kind,
        reading.channel,
        reading.time,
        reading.model,
        dict(reading.values),
        reading.typed_values(),
    )


def test_what_gateways_send_takes_the_one_call_path() -> None:
    # Every kind as the simulators sample it and the gateway encodes it: the one call takes
    # the whole message (a silent fall back to the per-reading path would cost ~3x).
    start = NOW - timedelta(hours=1)
    readings = [
        reading
        for n, kind in enumerate(KINDS)
        for step in range(3)
        for reading in make_simulator(kind, f"{kind}-1", seed=n).sample(
            start + timedelta(seconds=10 * step)
        )
    ]
    payload = wire.ReadingsMessage(
        gateway=GATEWAY, site=SITE, seq=7, sent_at=NOW, readings=readings
    ).encode()
    checks = Checks()
    fast = decode._decode_whole(SITE, GATEWAY, payload, checks)
    assert fast is not None
    want = DecodedReadings(SITE, GATEWAY, 7)
    check_readings(want, json.loads(payload)["readings"], checks)
    assert fast.lines == want.lines
    assert len(fast.lines) == len(readings)
    assert {r.kind for r in fast.readings} == set(KINDS)
