"""The recorder against a real Mosquitto: its own client id beside a live gateway, one copy of each
message whatever the filters overlap, what the broker granted, retained messages after a reconnect."""

import asyncio
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from deploy.servers import MosquittoServer
from deploy.traces.file_format import TraceHeader, TraceRecord, write_trace

CLI = [sys.executable, "-m", "deploy.traces"]


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_gateway_config_does_not_lend_its_client_id(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    gateway_id = f"gw-link-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "gw1"\nsite = "S"\n\n[broker]\nhost = "127.0.0.1"\n'
        f'port = {mosquitto.port}\nclient_id = "{gateway_id}"\n'
    )
    trace = tmp_path / "one.trace.gz"
    header = TraceHeader(broker="t", filters=["#"], started_at=datetime.now(UTC))
    write_trace(trace, header, [TraceRecord(1, f"cid/{gateway_id}", b"x", 1)])
    # The live gateway's link, holding the id in the configuration.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=gateway_id) as gateway:
        rc, out = await _run(
            "record", "--broker-config", str(config), "-t", "cid/#",
            "-o", str(tmp_path / "rec.trace.gz"), "--duration", "1.5",
        )
        assert rc == 0, out
        rc, out = await _run(
            "replay", str(trace), "--broker-config", str(config), "--max-speed", "--quiet"
        )
        assert rc == 0, out
        # Still connected: the broker did not hand its id to the recorder or the replayer.
        await gateway.publish(f"cid/{gateway_id}/alive", b"yes", qos=1)
    log = mosquitto.log_path.read_text()
    assert f"Client {gateway_id} already connected" not in log
