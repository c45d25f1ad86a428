"""``record --append`` onto what a killed recorder left, and onto rotated parts: every session stays
readable, in recording order."""

import asyncio
import itertools
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.servers import MosquittoServer
from deploy.traces.file_format import (
    TraceError,
    TraceHeader,
    TraceRecord,
    TraceWriter,
    load_trace,
    part_path,
)

CLI = [sys.executable, "-m", "deploy.traces"]
HEADER = TraceHeader(
    broker="mqtt://old", filters=["#"], started_at=datetime(2026, 1, 1, tzinfo=UTC)
)


def _records(n: int, start: int = 0) -> list[TraceRecord]:
    return [
        TraceRecord(1_000 * i, f"old/{i}", f"payload {i} ".encode() * 20, 1)
        for i in range(start, start + n)
    ]


def _two_members(path: Path, later: int) -> bytes:
    """A trace of two gzip members: 10 messages, then ``later`` more; its bytes."""
    with TraceWriter(path, HEADER) as writer:
        for rec in _records(10):
            writer.write(rec)
        writer.flush()
        for rec in _records(later, start=10):
            writer.write(rec)
    return path.read_bytes()


def _cut_trace(path: Path) -> list[TraceRecord]:
    """A trace whose last member was cut mid-way (kill -9); returns what is readable of it."""
    whole = _two_members(path, 200)
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


def _readable(path: Path) -> list[TraceRecord]:
    try:
        return load_trace([path])[0]
    except TraceError as exc:
        if "not an ecotel trace" not in str(exc):
            raise
        return []  # cut before its header line ended


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.floats(0.0, 1.0))
def test_appending_after_a_cut_anywhere_loses_no_whole_line(
    tmp_path_factory: pytest.TempPathFactory, cut: float
) -> None:
    path = tmp_path_factory.mktemp("cut") / "t.trace.gz"
    whole = _two_members(path, 30)
    path.write_bytes(whole[: int(len(whole) * cut)])
    readable = _readable(path)
    second = TraceHeader(broker="mqtt://new", filters=["#"], started_at=datetime.now(UTC))
    with TraceWriter(path, second, append=True) as writer:
        for rec in _records(3, start=100):
            writer.write(rec)
    back, stats = load_trace([path])
    assert stats.truncated == []
    assert back == readable + _records(3, start=100)
    assert stats.headers[-1].broker == "mqtt://new"


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("ra-*.trace.gz"))


@pytest.mark.slow
async def test_append_with_rotation_continues_the_part_numbers(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    out = tmp_path / "ra.trace.gz"
    args = ["record", "--port", str(mosquitto.port), "-t", "ra/#", "-o", str(out)]
    args += ["--rotate-s", "0.5", "--duration", "2.5"]
    stop = asyncio.Event()

    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for n in itertools.count():
                await client.publish("ra/n", str(n).encode(), qos=1)
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)

    publisher = asyncio.create_task(publish())
    try:
        rc, said = await _run(*args)
        assert rc == 0, said
        first = _parts(tmp_path)
        assert len(first) >= 2, said
        rc, said = await _run(*args)
        assert rc == 2, "without --append the parts on disk are not overwritten or mixed"
        assert f"{first[-1]} exists (part {len(first)}); pass --append" in said
        rc, said = await _run(*args, "--append")
        assert rc == 0, said
    finally:
        stop.set()
        await publisher
    parts = _parts(tmp_path)
    assert parts[: len(first)] == first
    assert len(parts) > len(first)
    back, stats = load_trace(parts)
    numbers = [int(r.payload) for r in back]
    assert numbers == sorted(numbers), "read in name order, the parts go forward in time"
    assert [h.part for h in stats.headers] == list(range(1, len(parts) + 1))


def test_part_names_sort_in_part_order() -> None:
    names = [part_path(Path("site.trace.gz"), n).name for n in range(1, 12_001)]
    assert names[0] == "site-000001.trace.gz"
    assert sorted(names) == names
