"""Re-stamping at any speed: one function maps every time of the trace, so a redelivered copy
stays a copy (stored once) and readings keep their place against their message's send time."""

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from deploy.traces.file_format import load_trace
from deploy.traces.record import RecordOptions, recording
from deploy.traces.rewrite import Rewrite
from tests.trace_fixtures import TRACES, TraceStack, expected_points, readings_of

pytestmark = pytest.mark.slow

DUP = TRACES / "duplicated_seq.trace.gz"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("speed", [10.0, 0.5, None])
async def test_a_redelivered_message_is_stored_once_at_any_speed(
    trace_stack: TraceStack, speed: float | None
) -> None:
    before = datetime.now(UTC)
    await trace_stack.replay(DUP, speed=speed, rewrite=Rewrite(restamp=True))
    readings = [r for r in trace_stack.replayed if r.topic.endswith("/readings")]
    # The fixture keeps what went out: re-stamped payloads, the redelivery still a copy.
    assert readings[1].payload == readings[2].payload
    assert _at(json.loads(readings[0].payload)["sent_at"]) > before - timedelta(seconds=60)
    points = await trace_stack.points()
    assert points == expected_points(trace_stack.replayed)
    assert len(points) == 3, "seq 2 and its redelivery are one point"
    assert trace_stack.ingest.stats.repeated_messages == 1
    assert await trace_stack.dead_letters() == []


async def test_cli_restamp_at_ten_times_keeps_copies_and_scales_reading_times(
    trace_stack: TraceStack, tmp_path: Path
) -> None:
    source, _ = load_trace([DUP])
    heard = tmp_path / "heard.trace.gz"
    async with recording(
        trace_stack.broker_settings, RecordOptions(filters=["ecotel/v1/#"], out=heard), quiet_s=0.3
    ):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "deploy.traces",
                "replay",
                str(DUP),
                "--port",
                str(trace_stack.broker.port),
                "--speed",
                "10",
                "--restamp",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    arrived, _ = load_trace([heard])
    trace_stack.replayed.extend(arrived)
    await trace_stack.settle()
    assert [r.topic for r in arrived] == [r.topic for r in source]
    assert arrived[2].payload == arrived[3].payload, "the redelivery went out byte-identical"
    # Readings 1 s apart in the field are 0.1 s apart at --speed 10, as their messages are.
    times = [_at(r["time"]) for _, _, r in readings_of(arrived)]
    field = [_at(r["time"]) for _, _, r in readings_of(source)]
    assert len(times) == len(field) == 4
    for (a, b), (fa, fb) in zip(pairwise(times), pairwise(field), strict=True):
        assert (b - a) * 10 == fb - fa
    assert len(await trace_stack.points()) == 3
    assert trace_stack.ingest.stats.repeated_messages == 1
