"""A replay ends when asked, whatever the broker does: Ctrl-C or SIGTERM with the broker frozen,
a broker that never answers CONNECT, a window that would never let a message out."""

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.servers import MosquittoServer
from deploy.traces.file_format import TraceHeader, TraceRecord, write_trace

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "deploy.traces"]
T0 = 1_795_886_000_000_000


def _trace(path: Path, count: int, gap_us: int, size: int = 200) -> Path:
    records = [TraceRecord(T0 + i * gap_us, f"stop/{i % 4}", b"x" * size, 1) for i in range(count)]
    write_trace(
        path, TraceHeader(broker="test", filters=["#"], started_at=datetime.now(UTC)), records
    )
    return path


@contextlib.asynccontextmanager
async def _frozen(broker: MosquittoServer) -> AsyncIterator[None]:
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_replay_held_up_by_a_frozen_broker_stops_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    trace = _trace(tmp_path / "paced.trace.gz", 6000, 10_000)  # 60 s, 100 messages a second
    async with MosquittoServer(tmp_path / "mosquitto") as broker:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "replay", str(trace), "--port", str(broker.port), "--window", "10",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"replayed" in first, first
        async with _frozen(broker):
            lines = [await asyncio.wait_for(proc.stderr.readline(), 30) for _ in range(3)]
            proc.send_signal(sig)
            # Without the fix this waits until the broker thaws: the bound only catches a hang.
            rest = await asyncio.wait_for(proc.stderr.read(), 30)
            await asyncio.wait_for(proc.wait(), 10)
    # The progress line counts the broker's hold-up as lateness (it said 0.001 s).
    late = [float(m[1]) for m in re.finditer(rb"([\d.]+) s behind schedule", lines[-1])]
    assert late, lines
    assert late[0] >= 0.5, lines
    assert proc.returncode == 0, rest
    text = rest.decode()
    assert "Traceback" not in text
    done = re.search(r"stopped: replayed ([\d,]+)/6,000 messages \(([\d,]+) taken", text)
    assert done, text
    assert int(done[2].replace(",", "")) <= int(done[1].replace(",", "")) < 6000


@pytest.mark.parametrize("window", ["0", "-5"])
async def test_a_window_below_one_is_refused_in_one_line(
    mosquitto: MosquittoServer, tmp_path: Path, window: str
) -> None:
    trace = _trace(tmp_path / "t.trace.gz", 3, 1000)
    result = await asyncio.to_thread(
        subprocess.run,
        [
            *CLI,
            "replay",
            str(trace),
            "--port",
            str(mosquitto.port),
            "--max-speed",
            f"--window={window}",
        ],
        capture_output=True,
        text=True,
        timeout=60,  # --window 0 used to wait for ever
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"ecotel-trace: --window {window}: at least 1 message must be in flight"
    ]


async def test_a_server_that_never_answers_connect_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # holds the connection open and says nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    trace = _trace(tmp_path / "t.trace.gz", 3, 1000)
    async with server:
        result = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "replay", str(trace), "--port", str(port), "--max-speed"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for writer in accepted:
            writer.close()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"ecotel-trace: broker: 127.0.0.1:{port} did not answer CONNECT within 10 s "
        "(not an MQTT broker, or a stuck one?)"
    ]


async def test_ctrl_c_during_a_long_gap_in_the_trace_stops_at_once(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    trace = _trace(tmp_path / "gap.trace.gz", 2, 600_000_000)  # the second message 10 min later
    proc = await asyncio.create_subprocess_exec(
        *CLI, "replay", str(trace), "--port", str(mosquitto.port),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"replayed 1/2 messages" in first, first
    proc.send_signal(signal.SIGINT)
    rest = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0, rest
    assert "stopped: replayed 1/2 messages (1 taken by the broker)" in rest, rest
