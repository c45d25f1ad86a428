"""``record --append`` onto what a killed recorder left, and onto rotated parts: every session stays
readable, in recording order."""

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.servers import MosquittoServer
from deploy.traces.file_format import TraceHeader, TraceRecord, TraceWriter, load_trace

CLI = [sys.executable, "-m", "deploy.traces"]
HEADER = TraceHeader(
    broker="mqtt://old", filters=["#"], started_at=datetime(2026, 1, 1, tzinfo=UTC)
)


def _records(n: int, start: int = 0) -> list[TraceRecord]:
    return [
        TraceRecord(1_000 * i, f"old/{i}", f"payload {i} ".encode() * 20, 1)
        for i in range(start, start + n)
    ]


def _cut_trace(path: Path) -> list[TraceRecord]:
    """A trace whose last member was cut mid-way (kill -9); returns what is readable of it."""
    with TraceWriter(path, HEADER) as writer:
        for rec in _records(10):
            writer.write(rec)
        writer.flush()
        for rec in _records(200, start=10):
            writer.write(rec)
    whole = path.read_bytes()
    first_member = len(whole) - (len(whole) - 1) // 2
    path.write_bytes(whole[: first_member + (len(whole) - first_member) // 2])
    readable, stats = load_trace([path])
    assert stats.truncated == [path]
    assert 10 < len(readable) < 210, "the cut member still has whole lines"
    assert readable == _records(len(readable))
    return readable


async def _record(port: int, out: Path, topic: str, count: int, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "record", "--port", str(port), "-t", f"{topic}/#", "-o", str(out),
        "--count", str(count), *extra, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said = b""
    while b"recording " not in said:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, said
        said += line
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for i in range(count):
            await client.publish(f"{topic}/{i}", f"new {i}".encode(), qos=1)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return (said + err).decode()


async def test_append_onto_a_cut_trace_keeps_old_lines_and_new_messages(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    path = tmp_path / "killed.trace.gz"
    readable = _cut_trace(path)
    err = await _record(mosquitto.port, path, "app", 5, "--append")
    back, stats = load_trace([path])
    assert stats.truncated == []
    assert back[: len(readable)] == readable
    assert [(r.topic, r.payload) for r in back[len(readable) :]] == [
        (f"app/{i}", f"new {i}".encode()) for i in range(5)
    ]
    assert [h.broker for h in stats.headers] == ["mqtt://old", f"mqtt://127.0.0.1:{mosquitto.port}"]
    assert "cut gzip member" in err, "the repair is said"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.floats(0.0, 1.0))
def test_appending_after_a_cut_anywhere_loses_no_whole_line(
    tmp_path_factory: pytest.TempPathFactory, cut: float
) -> None:
    path = tmp_path_factory.mktemp("cut") / "t.trace.gz"
    with TraceWriter(path, HEADER) as writer:
        for rec in _records(10):
            writer.write(rec)
        writer.flush()
        for rec in _records(30, start=10):
            writer.write(rec)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * cut)])
    readable, _ = load_trace([path])
    second = TraceHeader(broker="mqtt://new", filters=["#"], started_at=datetime.now(UTC))
    with TraceWriter(path, second, append=True) as writer:
        for rec in _records(3, start=100):
            writer.write(rec)
    back, stats = load_trace([path])
    assert stats.truncated == []
    assert back == readable + _records(3, start=100)
    assert stats.headers[-1].broker == "mqtt://new"
