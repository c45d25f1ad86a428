"""The trace_stack fixture's own promises: expected points only from topics the ingest takes,
``replayed`` as it went out (rewritten), and a cut trace is a failed test, not a quiet one."""

import json
import shutil
from pathlib import Path

import pytest

from deploy.traces.file_format import TraceRecord, load_trace
from deploy.traces.rewrite import Rewrite
from tests.trace_fixtures import TRACES, TraceStack, expected_points, readings_of


def _readings(topic: str) -> TraceRecord:
    body = {
        "schema": 1,
        "site": "S",
        "gateway": "gw",
        "seq": 1,
        "readings": [
            {"device": "aws-1", "kind": "weather", "time": "2026-11-28T10:00:00Z", "values": {}}
        ],
    }
    return TraceRecord(1, topic, json.dumps(body).encode(), 1)


def test_only_readings_on_topics_the_ingest_subscribes_to_are_expected() -> None:
    records = [
        _readings("ecotel/v1/S/gw/readings"),
        _readings("ecotel/v2/S/gw/readings"),
        _readings("other/ecotel/v1/S/gw/readings"),
        _readings("ecotel/v1/S/gw/extra/readings"),
    ]
    assert [r["device"] for _, _, r in readings_of(records)] == ["aws-1"]


@pytest.mark.slow
async def test_replayed_holds_the_rewritten_messages(trace_stack: TraceStack) -> None:
    await trace_stack.replay(
        TRACES / "duplicated_seq.trace.gz", rewrite=Rewrite(gateways={"dup-gw": "demo-gw"})
    )
    assert {r.topic.split("/")[3] for r in trace_stack.replayed} == {"demo-gw"}
    points = await trace_stack.points()
    assert points == expected_points(trace_stack.replayed)
    assert {dict(p[1])["gateway"] for p in points} == {"demo-gw"}


@pytest.mark.slow
async def test_a_truncated_trace_fails_the_test(trace_stack: TraceStack, tmp_path: Path) -> None:
    cut = tmp_path / "cut.trace.gz"
    shutil.copy(TRACES / "backlog.trace.gz", cut)
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 200])
    _, stats = load_trace([cut])
    assert stats.truncated, "the cut file ends in a truncated member"
    with pytest.raises(pytest.fail.Exception, match="truncated trace"):
        await trace_stack.replay(cut, settle=False)
    # Asked for, it replays what is left.
    await trace_stack.replay(cut, truncated_ok=True)
    assert await trace_stack.points() == expected_points(trace_stack.replayed)
