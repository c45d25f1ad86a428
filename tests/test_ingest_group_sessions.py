"""A shared group never starts with fewer workers than it has had: the missing ones' share of every
message would wait at the broker, unread. Through the real CLI, against a real broker."""

import asyncio
import json
import multiprocessing
import re
import signal
import sys
from pathlib import Path
from typing import Any

from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import for_worker, load_ingest_config
from pipelines.group_sessions import record_sessions

CLIENT_ID, GROUP = "ingest-sessions", "sessions"


def _config(tmp_path: Path, broker: int, influx: str) -> Path:
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {broker}\nclient_id = "{CLIENT_ID}"\nshared_group = "{GROUP}"\n'
        f'[influx]\nurl = "{influx}"\ndatabase = "sessions"\n'
        f'[dead_letter]\npath = "{tmp_path / "state" / "dead.sqlite3"}"\n',
        encoding="utf-8",
    )
    return config


async def _ingest(config: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "pipelines", "--config", str(config), "run", *args],
        stderr=asyncio.subprocess.PIPE,
    )


async def _refused(config: Path, *args: str) -> str:
    """Run the ingest; it must exit 2 at once. Its stderr."""
    process = await _ingest(config, *args)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 2, err.decode()
    return err.decode()


async def test_a_group_refuses_to_start_without_a_session_it_has_had(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer
) -> None:
    config = _config(tmp_path, mosquitto.port, influxdb.url)
    supervisor = await _ingest(config, "--workers", "2")
    assert supervisor.stderr is not None
    seen = ""
    async with asyncio.timeout(30):
        while len(re.findall(rf"ingest connected to .* as {CLIENT_ID}-\d", seen)) < 2:
            seen += (await supervisor.stderr.readline()).decode()
    supervisor.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        await supervisor.communicate()

    record = json.loads((tmp_path / "state" / "mqtt-sessions.json").read_text())
    assert record["groups"] == {
        f"127.0.0.1:{mosquitto.port} {GROUP}": [f"{CLIENT_ID}-0", f"{CLIENT_ID}-1"]
    }
    # One process alone in the group (no --workers) would leave both sessions' share unread;
    # a supervisor retires the workers it no longer runs (tests/test_ingest_retire.py).
    err = await _refused(config)
    assert f"{CLIENT_ID}-0, {CLIENT_ID}-1" in err
    assert "--workers 2" in err
    assert "mqtt-sessions.json" in err
    assert "--retire" in err
    # Another client id's workers are not this supervisor's to retire.
    other = tmp_path / "other.toml"
    other.write_text(
        config.read_text().replace(f'client_id = "{CLIENT_ID}"', 'client_id = "renamed"'),
        encoding="utf-8",
    )
    err = await _refused(other, "--workers", "2")
    assert f"{CLIENT_ID}-0, {CLIENT_ID}-1 are not a worker of mqtt.client_id 'renamed'" in err


async def test_a_damaged_record_is_named_not_ignored(tmp_path: Path) -> None:
    config = _config(tmp_path, 1, "http://127.0.0.1:1")
    record = tmp_path / "state" / "mqtt-sessions.json"
    record.parent.mkdir()
    record.write_text("{not json", encoding="utf-8")
    err = await _refused(config, "--workers", "3")
    assert str(record) in err
    assert "fix or remove it" in err


def _record_workers(config: Path, first: int, start: Any) -> None:
    """One worker process started by hand, as many as a unit file per worker starts at boot."""
    settings = load_ingest_config(config)
    start.wait()
    for worker in range(first, first + 20):
        own = for_worker(settings, worker)
        record_sessions(own, [own.mqtt.session_id])


def test_workers_started_by_hand_at_once_are_all_recorded(tmp_path: Path) -> None:
    # Each record is a read and a rewrite of one file: without a lock, two at once keep only
    # one of their sessions, and a supervisor started later would strand the other's share.
    config = _config(tmp_path, 1883, "http://127.0.0.1:8086")
    # spawn, not fork: this process has threads (a lock held at fork would hang a child).
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(6)
    processes = [
        context.Process(target=_record_workers, args=(config, n * 100, start)) for n in range(6)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    record = json.loads((tmp_path / "state" / "mqtt-sessions.json").read_text())
    (recorded,) = record["groups"].values()
    assert len(recorded) == 120
