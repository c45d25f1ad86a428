"""A message larger than the broker takes: the replay names it (its place in the trace, its topic)
instead of a packet id or a broken link."""

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.servers import MosquittoServer
from deploy.traces.file_format import TraceHeader, TraceRecord, write_trace

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "deploy.traces"]
T0 = 1_795_886_000_000_000
BIG_TOPIC = "ecotel/v1/Tuotuohe/big-gw/readings"


def _trace(path: Path) -> Path:
    # Two QoS 0 messages first: the big one is message 3 of the trace but packet id 1.
    records = [
        TraceRecord(T0, "limits/a", b"small", 0),
        TraceRecord(T0 + 1, "limits/b", b"small", 0),
        TraceRecord(T0 + 2, BIG_TOPIC, b"x" * 300_000, 1),
        TraceRecord(T0 + 3, "limits/c", b"after", 1),
    ]
    write_trace(
        path, TraceHeader(broker="test", filters=["#"], started_at=datetime.now(UTC)), records
    )
    return path


def _replay(trace: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "replay", str(trace), "--port", str(port), "--max-speed", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ("max_packet_size 100000", "maximum packet size, 100,000 bytes"),
        ("message_size_limit 100000", "reason 0x95, Packet too large"),
    ],
)
async def test_a_message_over_the_brokers_limit_is_named(
    tmp_path: Path, config: str, why: str
) -> None:
    trace = _trace(tmp_path / "big.trace.gz")
    async with MosquittoServer(tmp_path / "mosquitto", extra_config=config) as broker:
        result = await asyncio.to_thread(_replay, trace, broker.port)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "message 3 of the trace" in result.stderr, result.stderr
    assert f"topic {BIG_TOPIC}" in result.stderr
    assert why in result.stderr


async def test_over_mqtt_311_a_link_closed_on_a_too_large_packet_names_the_largest_in_flight(
    tmp_path: Path,
) -> None:
    trace = _trace(tmp_path / "big.trace.gz")
    async with MosquittoServer(
        tmp_path / "mosquitto", extra_config="max_packet_size 100000"
    ) as broker:
        result = await asyncio.to_thread(
            subprocess.run,
            [
                *CLI,
                "replay",
                str(trace),
                "--port",
                str(broker.port),
                "--max-speed",
                "--quiet",
                "--mqtt",
                "3.1.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert "the broker link broke" in result.stderr
    assert f"message 3 of the trace (topic {BIG_TOPIC}" in result.stderr, result.stderr
