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


async def test_a_second_gateway_on_the_same_outbox_is_refused_naming_the_first(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    # Two writers would each keep their own count of what the outbox holds, and its pending
    # count (health, stop, drain) would stay wrong for good.
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "twin-gw"\nsite = "svc"\nstate_dir = "{tmp_path / "state"}"\n'
        f"[broker]\nport = {mosquitto.port}\n"
        '[[devices]]\nid = "aws"\nkind = "weather"\ninterval_s = 1\n'
        'source = { type = "simulator", seed = 1 }\n',
        encoding="utf-8",
    )
    run = [sys.executable, "-m", "collector", "run", "--config", str(config)]
    first = await asyncio.create_subprocess_exec(*run, stderr=asyncio.subprocess.PIPE)
    assert first.stderr is not None
    async with asyncio.timeout(30):
        while b"readings waiting in" not in await first.stderr.readline():
            pass
    second = await asyncio.create_subprocess_exec(*run, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await second.communicate()
    assert second.returncode == 2, err.decode()
    assert f"in use by another process (pid {first.pid}" in err.decode()
    first.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        await first.communicate()
    assert first.returncode == 0
    # Once the first has stopped, the outbox is free again.
    again = await asyncio.create_subprocess_exec(*run, stderr=asyncio.subprocess.PIPE)
    assert again.stderr is not None
    async with asyncio.timeout(30):
        while b"readings waiting in" not in await again.stderr.readline():
            pass
    again.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        await again.communicate()
    assert again.returncode == 0


async def test_a_damaged_outbox_stops_the_gateway_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "bad-gw"\nsite = "svc"\nstate_dir = "{tmp_path / "state"}"\n'
        '[[devices]]\nid = "aws"\nkind = "weather"\ninterval_s = 1\n'
        'source = { type = "simulator", seed = 1 }\n',
        encoding="utf-8",
    )
    outbox = tmp_path / "state" / "bad-gw.outbox.sqlite3"
    outbox.parent.mkdir()
    outbox.write_bytes(b"not a database" * 300)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    assert process.returncode == 1
    text = err.decode()
    assert f"cannot open {outbox}: file is not a database" in text
    assert f"(gateway.state_dir in {config}, or ECOTEL_GW_GATEWAY__STATE_DIR)" in text
    assert "Traceback" not in text
