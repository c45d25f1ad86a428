"""The gateway as systemd runs it: READY=1 at start, WATCHDOG=1 while alive, STOPPING=1 on SIGTERM."""

import asyncio
import configparser
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from deploy.servers import MosquittoServer

ROOT = Path(__file__).resolve().parent.parent


async def test_gateway_speaks_systemds_notify_protocol(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "svc-gw"\nsite = "svc"\nstate_dir = "{tmp_path / "state"}"\n'
        f"[broker]\nport = {mosquitto.port}\n"
        '[[devices]]\nid = "aws"\nkind = "weather"\ninterval_s = 1\n'
        'source = { type = "simulator", seed = 1 }\n',
        encoding="utf-8",
    )
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "run", "--config", str(config), env=env
        )
        messages: list[str] = []

        async def collect(seconds: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                with contextlib.suppress(TimeoutError):
                    messages.append((await asyncio.to_thread(sock.recv, 100)).decode())

        await collect(3.0)
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        await collect(0.5)
    assert messages[0] == "READY=1"
    assert messages.count("WATCHDOG=1") >= 4, messages
    assert messages[-1] == "STOPPING=1"


def test_unit_file_runs_unprivileged_with_restart_and_watchdog() -> None:
    unit = configparser.ConfigParser(strict=False)
    unit.read(ROOT / "deploy" / "systemd" / "ecotel-gateway.service")
    service = unit["Service"]
    assert service["User"] != "root"
    assert service["Restart"] == "always"
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert "ecotel-gateway run --config" in service["ExecStart"]
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
