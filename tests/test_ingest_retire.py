"""A group run with fewer workers retires the others: their queued share is stored, their sessions
are discarded, and later messages reach the remaining workers. Real CLI, broker and InfluxDB."""

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from devices.simulators import make_simulator
from pipelines.influx_query import influx_query
from pipelines.mqtt_consumer import MqttSession

CLIENT_ID, GROUP, SITE, GATEWAY = "ingest-shrink", "shrink", "shrink-site", "gw-s"

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, broker: int, influx: str, database: str, *, group: bool = True) -> Path:
    config = tmp_path / ("ingest.toml" if group else "single.toml")
    shared = f'shared_group = "{GROUP}"\n' if group else ""
    config.write_text(
        f'[mqtt]\nport = {broker}\nclient_id = "{CLIENT_ID}"\n{shared}'
        f'[influx]\nurl = "{influx}"\ndatabase = "{database}"\n'
        f'[dead_letter]\npath = "{tmp_path / "state" / "dead.sqlite3"}"\n'
        # Every message its own batch: nothing waits for a timer.
        "[batch]\nmax_delay_s = 0.05\n",
        encoding="utf-8",
    )
    return config


async def _supervisor(config: Path, workers: int | None) -> asyncio.subprocess.Process:
    """``run --workers N``, or a single ingest (None)."""
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "pipelines", "--config", str(config), "run"],
        *(["--workers", str(workers)] if workers is not None else []),
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_until(process: asyncio.subprocess.Process, pattern: str, count: int = 1) -> str:
    """The process's log up to the ``count``-th line matching ``pattern``."""
    assert process.stderr is not None
    seen = ""
    try:
        async with asyncio.timeout(60):
            while len(re.findall(pattern, seen)) < count:
                line = (await process.stderr.readline()).decode()
                assert line, f"the ingest ended:\n{seen}"
                seen += line
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} within 60 s:\n{seen}") from None
    return seen


async def _stop(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        _, rest = await process.communicate()
    assert process.returncode == 0, rest.decode()
    return rest.decode()


async def _publish(port: int, first: int, count: int, *, pause_s: float = 0.0) -> int:
    """``count`` messages of one hydrology reading each, numbered from ``first``, ``pause_s``
    apart; readings sent."""
    simulator = make_simulator("hydrology", "hydro-1", seed=7)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sent = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier="shrink-gateway") as client:
        for seq in range(first, first + count):
            readings = simulator.sample(start + timedelta(seconds=seq))
            message = wire.ReadingsMessage(
                gateway=GATEWAY, site=SITE, seq=seq, sent_at=start, readings=readings
            )
            await client.publish(wire.readings_topic(SITE, GATEWAY), message.encode(), qos=wire.QOS)
            sent += len(readings)
            if pause_s:
                await asyncio.sleep(pause_s)
    return sent


async def _stored(url: str, database: str) -> int:
    try:
        series = await influx_query(
            url, f"SELECT count(stage) FROM hydrology WHERE site = '{SITE}'", database=database
        )
    except Exception:
        return -1
    return int(series[0].values[0][1]) if series else 0


async def _wait_stored(url: str, database: str, expected: int) -> None:
    stored = -1
    async with asyncio.timeout(60):
        while (stored := await _stored(url, database)) != expected:
            assert stored <= expected, f"{stored} stored for {expected} sent: duplicates"
            await asyncio.sleep(0.2)


async def _had_three_workers(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, database: str
) -> Path:
    """Run the group with three workers until all are subscribed, and stop it; its config."""
    config = _config(tmp_path, mosquitto.port, influxdb.url, database)
    three = await _supervisor(config, 3)
    await _read_until(three, rf"ingest connected to .* as {CLIENT_ID}-\d", 3)
    await _stop(three)
    return config


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[MosquittoServer]:
    """A broker of the test's own: the sessions it leaves queue no other test's messages."""
    async with MosquittoServer(tmp_path / "mosquitto") as server:
        yield server


async def test_fewer_workers_retire_the_others_and_lose_nothing(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer
) -> None:
    database = "shrink"
    config = await _had_three_workers(tmp_path, mosquitto, influxdb, database)
    # Nobody reads: the broker queues each message for one of the three sessions.
    await _publish(mosquitto.port, 0, 60)
    # And gateways go on publishing while worker 2 retires: what the broker hands its session
    # after the marker would be lost when the session is discarded, unless it left the group.
    publishing = asyncio.create_task(_publish(mosquitto.port, 60, 600, pause_s=0.005))
    two = await _supervisor(config, 2)
    log = await _read_until(two, r"supervisor: worker 2 retired")
    assert f"no longer runs: {CLIENT_ID}-2 (" in log
    assert re.search(rf"session {CLIENT_ID}-2 retired: \d+ messages taken", log), log
    assert not publishing.done(), "the retirement must overlap the publishing"
    await publishing
    await _wait_stored(influxdb.url, database, 660)

    record = json.loads((tmp_path / "state" / "mqtt-sessions.json").read_text())
    key = f"127.0.0.1:{mosquitto.port} {GROUP}"
    assert record["groups"] == {key: [f"{CLIENT_ID}-0", f"{CLIENT_ID}-1"]}
    # Kept as retired until a start finds the broker has no session for it.
    assert record["retired"] == {key: [f"{CLIENT_ID}-2"]}
    # Later messages all reach the two workers: none is queued for the retired session.
    await _publish(mosquitto.port, 660, 30)
    await _wait_stored(influxdb.url, database, 690)
    await _stop(two)

    # The next start checks the retired session again, finds it gone and forgets it.
    again = await _supervisor(config, 2)
    await _read_until(again, r"supervisor: worker 2 retired")
    await _stop(again)
    record = json.loads((tmp_path / "state" / "mqtt-sessions.json").read_text())
    assert record["retired"] == {}
    # The broker keeps no session for worker 2.
    async with MqttSession(
        "127.0.0.1", mosquitto.port, f"{CLIENT_ID}-2", keepalive_s=30, clean=False
    ) as session:
        assert not session.session_present
    async with MqttSession(
        "127.0.0.1", mosquitto.port, f"{CLIENT_ID}-2", keepalive_s=30, clean=True
    ):
        pass
    # And a start after that retires nothing.
    third = await _supervisor(config, 2)
    await _read_until(third, rf"ingest connected to .* as {CLIENT_ID}-\d", 2)
    rest = await _stop(third)
    assert "retir" not in rest, rest


async def test_a_retiring_worker_killed_midway_is_restarted_and_finishes(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer
) -> None:
    database = "shrink_killed"
    config = await _had_three_workers(tmp_path, mosquitto, influxdb, database)
    await _publish(mosquitto.port, 0, 300)

    two = await _supervisor(config, 2)
    log = await _read_until(two, rf"retiring session {CLIENT_ID}-2")
    (pid,) = re.findall(r"worker 2 started: pid (\d+)", log)
    # Its marker is queued behind the share, or already back: either way it dies holding it.
    os.kill(int(pid), signal.SIGKILL)
    log = await _read_until(two, r"supervisor: worker 2 retired")
    assert re.search(rf"worker 2 \(pid {pid}\) died: killed by SIGKILL", log), log
    await _wait_stored(influxdb.url, database, 300)
    record = json.loads((tmp_path / "state" / "mqtt-sessions.json").read_text())
    assert record["groups"] == {
        f"127.0.0.1:{mosquitto.port} {GROUP}": [f"{CLIENT_ID}-0", f"{CLIENT_ID}-1"]
    }
    await _stop(two)


async def test_a_group_retires_the_single_ingest_it_replaces(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer
) -> None:
    database = "shrink_single"
    single_config = _config(tmp_path, mosquitto.port, influxdb.url, database, group=False)
    single = await _supervisor(single_config, None)
    await _read_until(single, rf"ingest connected to .* as {CLIENT_ID}$")
    await _stop(single)
    # Queued for the single ingest's session alone.
    await _publish(mosquitto.port, 0, 40)

    config = _config(tmp_path, mosquitto.port, influxdb.url, database)
    two = await _supervisor(config, 2)
    log = await _read_until(two, r"supervisor: the single ingest's session retired")
    assert f"no longer runs: {CLIENT_ID} (" in log
    await _wait_stored(influxdb.url, database, 40)
    record = json.loads((tmp_path / "state" / "mqtt-sessions.json").read_text())
    assert record["groups"] == {
        f"127.0.0.1:{mosquitto.port} {GROUP}": [f"{CLIENT_ID}-0", f"{CLIENT_ID}-1"]
    }
    await _publish(mosquitto.port, 40, 20)
    await _wait_stored(influxdb.url, database, 60)
    await _stop(two)
    # Without this, the broker would queue a copy of every message for it for ever.
    async with MqttSession(
        "127.0.0.1", mosquitto.port, CLIENT_ID, keepalive_s=30, clean=False
    ) as session:
        assert not session.session_present


async def test_a_session_in_use_is_not_retired_and_a_stale_marker_ends_nothing(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer
) -> None:
    database = "shrink_guarded"
    config = await _had_three_workers(tmp_path, mosquitto, influxdb, database)
    running = await _supervisor(config, 3)
    await _read_until(running, rf"ingest connected to .* as {CLIENT_ID}-\d", 3)
    # Retiring worker 1 by hand while it runs would discard a session in use.
    retire = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "pipelines", "--config", str(config), "run"],
        *["--worker", "1", "--retire"],
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await retire.communicate()
    assert retire.returncode == 2, err.decode()
    assert f"MQTT session {CLIENT_ID}-1 is in use by another process" in err.decode()
    await _stop(running)

    # A marker of an earlier retirement, still queued for worker 2's session, ahead of its
    # share of the messages published after it: it must not end this retirement.
    async with MqttSession(
        "127.0.0.1", mosquitto.port, f"{CLIENT_ID}-2", keepalive_s=30
    ) as session:
        topic = f"ecotel-ingest/retire/{CLIENT_ID}-2"
        await session.subscribe(topic, 1)
        await session.publish(topic, b"an earlier run's marker")
    await _publish(mosquitto.port, 0, 90)
    two = await _supervisor(config, 2)
    log = await _read_until(two, r"supervisor: worker 2 retired")
    assert "a retirement marker on" in log
    await _wait_stored(influxdb.url, database, 90)
    await _stop(two)
