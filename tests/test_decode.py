"""Decoding and validating readings messages: what is stored, what is refused, and why."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector import wire
from devices import Reading
from pipelines.decode import MessageRejected, decode_readings

TOPIC = wire.readings_topic("沱沱河 站", "gw 1")
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
HYDRO = {"stage": 2.31, "discharge": 120.5, "water_temperature": 1.2}


def _message(*readings: dict[str, object], **envelope: object) -> bytes:
    body: dict[str, object] = {
        "schema": 1,
        "gateway": "gw 1",
        "site": "沱沱河 站",
        "seq": 7,
        "sent_at": "2026-11-22T10:00:01Z",
        "readings": list(readings),
    }
    body.update(envelope)
    return json.dumps(body, ensure_ascii=False).encode()


def _reading(**fields: object) -> dict[str, object]:
    reading: dict[str, object] = {
        "device": "hydro-1",
        "kind": "hydrology",
        "time": "2026-11-22T10:00:00Z",
        "values": HYDRO,
    }
    reading.update(fields)
    return reading


def test_a_message_built_by_the_collector_decodes_to_its_points() -> None:
    message = wire.ReadingsMessage(
        gateway="gw 1",
        site="沱沱河 站",
        seq=3,
        sent_at=NOW,
        readings=[Reading(device="hydro-1", kind="hydrology", time=NOW, values=HYDRO)],
    )
    decoded = decode_readings(TOPIC, message.encode(), max_bytes=1 << 20)
    assert decoded.rejections == []
    assert decoded.seq == 3
    assert decoded.lines == [
        "hydrology,device=hydro-1,gateway=gw\\ 1,site=沱沱河\\ 站 "
        "stage=2.31,discharge=120.5,water_temperature=1.2 1795341600000000000"
    ]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"x" * 2000, "too_large"),
        ("ecotel/v1/site/readings", _message(_reading()), "bad_topic"),
        ("other/v1/沱沱河 站/gw 1/readings", _message(_reading()), "bad_topic"),
        # Levels no payload could name: a leading $, a blank edge.
        ("ecotel/v1/$bad/gw 1/readings", _message(_reading(), site="$bad"), "bad_topic"),
        ("ecotel/v1/沱沱河 站/gw 1 /readings", _message(_reading()), "bad_topic"),
        (TOPIC, b"\xff\xfe{}", "not_utf8"),
        (TOPIC, b'{"schema": 1, "gateway": ', "bad_json"),
        (TOPIC, b"[1, 2]", "bad_envelope"),
        (TOPIC, _message(_reading(), schema=2), "bad_envelope"),
        (TOPIC, _message(), "bad_envelope"),
        (TOPIC, _message(_reading(), seq=-1), "bad_envelope"),
        (TOPIC, _message(_reading(), gateway="gw 2"), "topic_mismatch"),
        (TOPIC, _message(_reading(), site="Madoi"), "topic_mismatch"),
    ],
)
def test_unusable_messages_are_refused_whole(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        decode_readings(topic, payload, max_bytes=1000)
    assert caught.value.rejection.reason == reason
    assert caught.value.rejection.detail


@pytest.mark.parametrize(
    ("reading", "reason", "fragment"),
    [
        (_reading(kind="toaster"), "unknown_kind", "toaster"),
        (_reading(time="2026-11-22T10:00:00"), "bad_reading", "time"),
        (_reading(device="a/b"), "bad_reading", "device"),
        (_reading(channel="1"), "bad_channel", "no channel"),
        (_reading(values={**HYDRO, "stage": "high"}), "invalid_values", "stage"),
        (_reading(values={**HYDRO, "discharge": -1}), "invalid_values", "discharge"),
        (_reading(values={"stage": 1.0}), "invalid_values", "discharge: Field required"),
    ],
)
def test_a_bad_reading_is_refused_alone(
    reading: dict[str, object], reason: str, fragment: str
) -> None:
    decoded = decode_readings(
        TOPIC, _message(_reading(), reading, _reading(device="hydro-2")), max_bytes=1 << 20
    )
    assert len(decoded.lines) == 2
    [rejection] = decoded.rejections
    assert (rejection.reason, rejection.reading_index) == (reason, 1)
    assert fragment in rejection.detail
    assert rejection.reading == json.loads(json.dumps(reading))


def test_times_with_an_offset_are_stored_in_utc() -> None:
    decoded = decode_readings(
        TOPIC, _message(_reading(time="2026-11-22T18:00:00+08:00")), max_bytes=1 << 20
    )
    assert decoded.lines[0].endswith(" 1795341600000000000")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(payload: bytes) -> None:
    try:
        decoded = decode_readings(TOPIC, payload, max_bytes=1 << 20)
    except MessageRejected as exc:  # either outcome is fine, a crash is not
        assert exc.rejection.reason in {"not_utf8", "bad_json", "bad_envelope", "topic_mismatch"}  # noqa: PT017
    else:
        assert len(decoded.lines) + len(decoded.rejections) >= 1


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_arbitrary_json_readings_are_stored_or_refused_never_crash(reading: object) -> None:
    payload = json.dumps(
        {
            "schema": 1,
            "gateway": "gw 1",
            "site": "沱沱河 站",
            "seq": 1,
            "sent_at": "2026-11-22T10:00:01Z",
            "readings": [reading],
        }
    ).encode()
    try:
        decoded = decode_readings(TOPIC, payload, max_bytes=1 << 20)
    except MessageRejected as exc:
        assert exc.rejection.reason == "bad_envelope"  # noqa: PT017  # NaN/Infinity are not JSON for pydantic
    else:
        assert len(decoded.lines) + len(decoded.rejections) == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"time": "1970-01-01T00:03:12Z"}, "clock_unset"),
        ({"clock": "unsynced"}, "clock_unset"),
        ({"time": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "time_in_future"),
        ({"clock": "corrected"}, None),
        ({"time": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}, None),
    ],
)
def test_readings_from_an_untrustworthy_clock_are_refused(
    fields: dict[str, object], reason: str | None
) -> None:
    decoded = decode_readings(TOPIC, _message(_reading(**fields)), max_bytes=1_000_000)
    if reason is None:
        assert len(decoded.lines) == 1
        assert decoded.rejections == []
    else:
        assert decoded.lines == []
        assert [r.reason for r in decoded.rejections] == [reason]


def test_one_point_twice_with_other_values_is_refused_and_an_exact_copy_stored_once() -> None:
    later = "2026-11-22T10:00:10Z"
    decoded = decode_readings(
        TOPIC,
        _message(
            _reading(),
            _reading(values={**HYDRO, "stage": 9.99}),
            # The same instant in another offset is the same point.
            _reading(time="2026-11-22T18:00:00+08:00"),
            _reading(time=later),
        ),
        max_bytes=1 << 20,
    )
    assert [line.rsplit(" ", 1)[1] for line in decoded.lines] == [
        "1795341600000000000",
        "1795341610000000000",
    ]
    assert "stage=2.31" in decoded.lines[0]
    [conflict] = decoded.rejections
    assert (conflict.reason, conflict.reading_index) == ("conflicting_duplicate", 1)
    assert "reading #0" in conflict.detail
    assert "hydro-1" in conflict.detail
    assert conflict.reading == _reading(values={**HYDRO, "stage": 9.99})


def test_readings_of_one_device_on_different_channels_are_different_points() -> None:
    lanes = [
        _reading(device="radar", kind="traffic_detector", channel=lane, values=values)
        for lane, values in [
            ("1", {"interval_s": 60.0, "volume": 10.0, "mean_speed": 90.0, "occupancy": 5.0}),
            ("2", {"interval_s": 60.0, "volume": 12.0, "mean_speed": 80.0, "occupancy": 6.0}),
        ]
    ]
    decoded = decode_readings(TOPIC, _message(*lanes), max_bytes=1 << 20)
    assert (len(decoded.lines), decoded.rejections) == (2, [])
