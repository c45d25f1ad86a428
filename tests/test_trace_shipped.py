"""The shipped traces (tests/traces/, made by make_traces.py through a real broker) replayed into the stack.

Each test states the exact outcome: the readings InfluxDB holds and every
dead letter with its reason. Expected points come from the trace's own JSON.
"""

import json

import pytest

from tests.trace_fixtures import (
    TRACES,
    TraceStack,
    expected_points,
    reading_point,
    readings_of,
)

pytestmark = pytest.mark.slow


def _reasons(letters) -> list[tuple[str, int | None]]:
    return sorted((d.reason, d.reading_index) for d in letters)


@pytest.mark.parametrize("domain", ["ecology", "highway", "datacenter"])
async def test_domain_trace_is_stored_whole(trace_stack: TraceStack, domain: str) -> None:
    await trace_stack.replay(TRACES / f"{domain}.trace.gz")
    expected = expected_points(trace_stack.replayed)
    assert len(expected) >= 10
    assert await trace_stack.points() == expected
    assert await trace_stack.dead_letters() == []
    # The gateway went online and, at its clean stop, offline; it reported its health.
    assert await trace_stack.count("gateway_status") == 2
    assert await trace_stack.count("gateway_health") >= 1
    assert trace_stack.ingest.stats.missing_messages == 0


async def test_malformed_json_is_dead_lettered_with_its_bytes(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "malformed_json.trace.gz")
    readings = [r for r in trace_stack.replayed if r.topic.endswith("/readings")]
    truncated = readings[2].payload
    assert await trace_stack.points() == expected_points(readings[:2] + readings[3:])
    letters = await trace_stack.dead_letters()
    assert _reasons(letters) == [("bad_json", None)]
    assert letters[0].payload == truncated
    # seq 3 was not readable, so the ingest cannot know it arrived: counted missing.
    assert trace_stack.ingest.stats.missing_messages == 1


@pytest.mark.parametrize(
    ("trace", "bad", "detail"),
    [
        ("wrong_types", {1: "stage", 2: "discharge"}, "stage"),
        ("out_of_range", {0: "ph", 1: "water_temperature"}, "ph"),
    ],
)
async def test_bad_values_reject_only_their_reading(
    trace_stack: TraceStack, trace: str, bad: dict[int, str], detail: str
) -> None:
    await trace_stack.replay(TRACES / f"{trace}.trace.gz")
    readings = readings_of(trace_stack.replayed)
    good = {reading_point(s, g, r) for i, (s, g, r) in enumerate(readings) if i not in bad}
    assert len(good) == 1
    assert await trace_stack.points() == good
    letters = await trace_stack.dead_letters()
    assert _reasons(letters) == [("invalid_values", i) for i in sorted(bad)]
    for letter in letters:
        assert letter.reading_index is not None
        assert bad[letter.reading_index] in letter.detail
        assert letter.reading == readings[letter.reading_index][2]


async def test_duplicated_sequence_is_stored_once_and_counted(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "duplicated_seq.trace.gz")
    readings = [r for r in trace_stack.replayed if r.topic.endswith("/readings")]
    assert readings[1].payload == readings[2].payload, "the trace holds the redelivery"
    points = await trace_stack.points()
    assert points == expected_points(readings)
    assert len(points) == 3
    assert await trace_stack.dead_letters() == []
    assert trace_stack.ingest.stats.repeated_messages == 1
    assert trace_stack.ingest.stats.missing_messages == 0


async def test_unset_clock_readings_are_refused(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "unset_clock.trace.gz")
    assert await trace_stack.points() == set()
    letters = await trace_stack.dead_letters()
    # Message 1: three readings from 1970; message 2: one marked unsynced.
    assert _reasons(letters) == [
        ("clock_unset", 0),
        ("clock_unset", 0),
        ("clock_unset", 1),
        ("clock_unset", 2),
    ]
    details = sorted(letter.detail for letter in letters)
    assert sum("1970-01-01" in d for d in details) == 3
    assert sum("unsynced" in d for d in details) == 1


async def test_six_hour_backlog_is_stored_in_full(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "backlog.trace.gz")
    expected = expected_points(trace_stack.replayed)
    # Two devices every 60 s for six hours, then one live reading.
    assert len(expected) == 2 * 6 * 60 + 1
    times = sorted(p[2] for p in expected)
    assert (times[-1] - times[0]) / 1e9 >= 6 * 3600 - 120
    assert await trace_stack.points() == expected
    assert await trace_stack.dead_letters() == []
    assert trace_stack.ingest.stats.missing_messages == 0


async def test_oversized_message_is_dead_lettered_whole(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "oversized.trace.gz")
    readings = [r for r in trace_stack.replayed if r.topic.endswith("/readings")]
    assert len(readings[0].payload) > 1_048_576
    assert await trace_stack.points() == expected_points(readings[1:])
    letters = await trace_stack.dead_letters()
    assert _reasons(letters) == [("too_large", None)]
    assert letters[0].payload == readings[0].payload


async def test_bytes_that_are_not_utf8_are_kept_exactly(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "not_utf8.trace.gz")
    sent = [r.payload for r in trace_stack.replayed if r.topic.endswith("/readings")]
    assert await trace_stack.points() == set()
    letters = await trace_stack.dead_letters()
    assert _reasons(letters) == [("not_utf8", None)] * 2
    assert sorted(d.payload or b"" for d in letters) == sorted(sent)
    # The first is GBK-encoded JSON: readable once decoded as GBK, so the bytes are the evidence.
    assert json.loads(sent[0].decode("gbk"))["note"] == "沱沱河"


async def test_a_gateway_speaking_for_another_is_refused(trace_stack: TraceStack) -> None:
    await trace_stack.replay(TRACES / "impersonation.trace.gz")
    own = [
        r
        for r in trace_stack.replayed
        if r.topic.endswith("/readings") and json.loads(r.payload)["gateway"] == "rogue-gw"
    ]
    assert await trace_stack.points() == expected_points(own)
    letters = await trace_stack.dead_letters()
    assert _reasons(letters) == [("bad_health", None), ("topic_mismatch", None)]
    mismatch = next(d for d in letters if d.reason == "topic_mismatch")
    assert "tuotuohe-gw1" in mismatch.detail
    assert await trace_stack.count("gateway_health") == 0
