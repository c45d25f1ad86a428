"""Replay keeps the trace's order across QoS: a QoS 2 message is passed on at PUBREL, so the replay
releases it before sending the next one (the broker's retained status is the trace's last)."""

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.config import BrokerSettings
from deploy.servers import MosquittoServer
from deploy.traces.file_format import TraceHeader, TraceRecord, load_trace, write_trace
from deploy.traces.record import RecordOptions, recording

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "deploy.traces"]
T0 = 1_795_886_000_000_000


def _status(state: str) -> bytes:
    body = {"schema": 1, "gateway": "q2-gw", "site": "Tuotuohe", "state": state, "at": "x"}
    return json.dumps(body).encode()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_mixed_qos_arrive_in_trace_order_and_the_last_retained_wins(
    mosquitto: MosquittoServer, tmp_path: Path, version: str
) -> None:
    root = f"order-{uuid.uuid4().hex[:8]}"
    status = f"{root}/status"
    records = [
        TraceRecord(T0, status, _status("online"), qos=2, retain=True),
        TraceRecord(T0 + 1000, status, _status("offline"), qos=1, retain=True),
    ] + [
        TraceRecord(T0 + 2000 + i, f"{root}/seq", str(i).encode(), qos=(2, 1, 0)[i % 3])
        for i in range(30)
    ]
    trace = tmp_path / "q2.trace.gz"
    header = TraceHeader(broker="test", filters=["#"], started_at=datetime.now(UTC))
    write_trace(trace, header, records)
    broker = BrokerSettings(port=mosquitto.port)
    heard = tmp_path / "heard.trace.gz"
    # At QoS 1: a QoS 2 subscriber's client hands a message over at PUBREL, reordering it itself.
    watch = RecordOptions(filters=[f"{root}/#"], out=heard, qos=1)
    async with recording(broker, watch, quiet_s=0.5):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                *CLI,
                "replay",
                str(trace),
                "--port",
                str(mosquitto.port),
                "--max-speed",
                "--mqtt",
                version,
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    arrived, _ = load_trace([heard])
    assert [r.payload for r in arrived] == [r.payload for r in records]
    # A new subscriber gets the broker's retained status: the trace's last, offline.
    later = tmp_path / "retained.trace.gz"
    async with recording(broker, RecordOptions(filters=[status], out=later), quiet_s=0.5):
        pass
    retained, _ = load_trace([later])
    assert [json.loads(r.payload)["state"] for r in retained] == ["offline"]
