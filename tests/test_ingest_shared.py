"""Three ingest workers on one shared subscription: kill -9 one mid-run, every reading is stored once.

The supervisor (``ecotel-ingest run --workers 3``) runs real worker processes
against a Mosquitto of the test's own and the session InfluxDB; gateways
publish in-process, and an independent observer with a persistent session
records what the broker delivered. The killed worker's share of the messages
stays with its session at the broker (never re-dispatched to the others),
so only its restart, as the same worker, gets it stored.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from pydantic import ValidationError

from collector import wire
from collector.config import GatewaySettings
from collector.gateway import Gateway
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import MqttSettings
from pipelines.dead_letter import DeadLetterStore
from pipelines.influx_query import influx_query
from pipelines.sequence_tracker import Seen, SequenceTracker
from pipelines.supervisor import Supervisor
from tests.mqtt_observer import observe

WORKERS = 3
GATEWAYS, DEVICES, INTERVAL_S = 4, 6, 0.05
RUN_S = 8.0
SITE, CLIENT_ID, GROUP = "shared-site", "ingest-shared", "ingest"
BAD_GATEWAY, BAD_MESSAGES = "bad-gw", 30
# A long batch delay keeps every worker holding unwritten, unacknowledged
# messages at any moment, so the kill catches some in flight.
BATCH_DELAY_S = 0.5

Key = tuple[str, str]  # (gateway, device)


def _gateway(number: int, port: int, state_dir: Path) -> Gateway:
    return Gateway(
        GatewaySettings.model_validate(
            {
                "gateway": {
                    "id": f"gw-{number}",
                    "site": SITE,
                    "state_dir": str(state_dir),
                    "batch_max_delay_s": 0.05,
                    "commit_interval_s": 0.05,
                },
                "broker": {"host": "127.0.0.1", "port": port, "reconnect_max_s": 0.5},
                "devices": [
                    {
                        "id": f"hydro-{d}",
                        "kind": "hydrology",
                        "interval_s": INTERVAL_S,
                        "source": {"type": "simulator", "seed": number * 100 + d},
                    }
                    for d in range(DEVICES)
                ],
            }
        )
    )


def _ns(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


def _observed_times(observed: list[tuple[str, bytes]]) -> dict[Key, list[int]]:
    times: dict[Key, list[int]] = defaultdict(list)
    for topic, payload in observed:
        if f"/{BAD_GATEWAY}/" in topic:
            continue
        body = json.loads(payload)
        for reading in body["readings"]:
            times[(body["gateway"], reading["device"])].append(_ns(reading["time"]))
    return times


async def _stored_times(url: str, database: str) -> dict[Key, list[int]]:
    series = await influx_query(
        url,
        'SELECT stage FROM hydrology GROUP BY "gateway", "device"',
        database=database,
        epoch="ns",
    )
    return {(s.tags["gateway"], s.tags["device"]): [row[0] for row in s.values] for s in series}


async def _stored_count(url: str, database: str) -> int:
    try:
        series = await influx_query(url, "SELECT count(stage) FROM hydrology", database=database)
    except Exception:
        return 0  # the database is not there until a worker has created it
    return int(series[0].values[0][1]) if series else 0


class _Log:
    """The supervisor's stderr, shared with its workers: one line per record."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def text(self) -> str:
        return await asyncio.to_thread(self.path.read_text, encoding="utf-8", errors="replace")

    async def wait_for(self, pattern: str, count: int = 1) -> list[str]:
        """The first ``count`` matches of ``pattern`` (a regex, one group), within 30 s."""
        async with asyncio.timeout(30):
            while len(found := re.findall(pattern, await self.text(), re.MULTILINE)) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        return found[:count]


async def _redelivered(port: int, client_id: str) -> int:
    """Messages the broker still holds for this session (unacknowledged or queued)."""
    count = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False) as c:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                async for _ in c.messages:
                    count += 1
    return count


async def test_three_workers_one_killed_every_reading_once(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = f"shared_{uuid.uuid4().hex[:8]}"
    async with MosquittoServer(tmp_path / "broker") as broker:
        observed: list[tuple[str, bytes]] = []
        observer_ready = asyncio.Event()
        observer = asyncio.create_task(
            observe(broker.port, wire.READINGS_FILTER, "shared-observer", observed, observer_ready)
        )
        async with asyncio.timeout(10):
            await observer_ready.wait()

        config = tmp_path / "ingest.toml"
        config.write_text(
            "stats_interval_s = 1\n"
            f'[mqtt]\nport = {broker.port}\nclient_id = "{CLIENT_ID}"\nshared_group = "{GROUP}"\n'
            f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{database}"\n'
            f"[batch]\nmax_delay_s = {BATCH_DELAY_S}\n"
            f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n',
            encoding="utf-8",
        )
        log = _Log(tmp_path / "supervisor.log")
        gateways = [_gateway(n, broker.port, tmp_path / "gw") for n in range(GATEWAYS)]
        tasks: list[asyncio.Task[None]] = []
        with log.path.open("wb") as sink:
            supervisor = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "pipelines", "run", "--config", str(config)],
                *["--workers", str(WORKERS)],
                stdout=sink,
                stderr=sink,
            )
        try:
            # Every worker's session is subscribed before any gateway speaks.
            for worker in range(WORKERS):
                await log.wait_for(rf"ingest connected to .* as ({CLIENT_ID}-{worker})$")

            tasks = [asyncio.create_task(gw.run()) for gw in gateways]
            await asyncio.sleep(RUN_S / 2)
            async with aiomqtt.Client("127.0.0.1", broker.port) as bad:
                for n in range(BAD_MESSAGES):
                    topic = wire.readings_topic(SITE, BAD_GATEWAY)
                    await bad.publish(topic, f"not json {n}".encode(), qos=1)

            (victim,) = await log.wait_for(r"worker 1 started: pid (\d+)$")
            # A worker that has taken messages: what it held unacknowledged
            # must come back through its restarted session.
            async with asyncio.timeout(5):
                await log.wait_for(r"\[worker 1\]: ingest: messages=([1-9]\d*) ")
            killed_at = len(await log.text())
            os.kill(int(victim), signal.SIGKILL)
            _, restarted = await log.wait_for(r"worker 1 started: pid (\d+)$", count=2)
            assert restarted != victim
            await log.wait_for(rf"ingest connected to .* as ({CLIENT_ID}-1)$", count=2)
            await asyncio.sleep(RUN_S / 2)
            for gw in gateways:
                gw.stop()
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)

            published = sum(gw.stats.published for gw in gateways)
            expected = _observed_times(observed)
            async with asyncio.timeout(30):
                while sum(len(t) for t in expected.values()) < published:
                    await asyncio.sleep(0.05)
                    expected = _observed_times(observed)
                while await _stored_count(influxdb.url, database) < published:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            # The gateways' last status messages, acknowledged only once written too.
            await asyncio.sleep(3 * BATCH_DELAY_S)
        finally:
            for gw in gateways:
                gw.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            if supervisor.returncode is None:
                supervisor.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                returncode = await supervisor.wait()
            observer.cancel()
            await asyncio.gather(observer, return_exceptions=True)
        assert returncode == 0
        # Everything was acknowledged once stored: no session holds anything.
        leftovers = await asyncio.gather(
            *(_redelivered(broker.port, f"{CLIENT_ID}-{n}") for n in range(WORKERS))
        )
        assert leftovers == [0] * WORKERS

    text = await log.text()
    # Offered ~3,800 (20 polls per second per device for 8 s); fewer on a loaded machine.
    assert published >= 1_000, "a run, not a handful of readings"
    stored = await _stored_times(influxdb.url, database)
    assert (
        set(stored)
        == set(expected)
        == {(f"gw-{g}", f"hydro-{d}") for g in range(GATEWAYS) for d in range(DEVICES)}
    )
    for key, times in stored.items():
        assert len(times) == len(set(times)), f"{key}: a reading stored twice"
        assert len(expected[key]) == len(set(expected[key])), f"{key}: delivered twice"
        assert set(times) == set(expected[key]), f"{key}: stored is not what was delivered"
    assert sum(len(t) for t in stored.values()) == published

    # The kill and the restart, in the supervisor's words.
    assert re.search(rf"worker 1 \(pid {victim}\) died: killed by SIGKILL; restarting", text)
    # The work was spread: every worker took messages, before and after the kill.
    for worker in range(WORKERS):
        taken = re.findall(rf"\[worker {worker}\]: ingest: messages=(\d+) ", text)
        assert max(map(int, taken)) > 0, f"worker {worker} took no message"
    before_kill = re.findall(r"\[worker 1\]: ingest: messages=(\d+) ", text[:killed_at])
    assert max(map(int, before_kill)) > 0
    # Each stopped cleanly, saying that it does not count gateways' gaps.
    stops = re.findall(r"\[worker (\d)\]: ingest stopped: messages=(\d+) .*$", text, re.MULTILINE)
    assert sorted(w for w, _ in stops) == [str(n) for n in range(WORKERS)]
    assert all(int(m) > 0 for _, m in stops), stops
    assert "missing_messages not counted" in text
    stopped = re.findall(r"supervisor: worker (\d) \(pid \d+\) stopped: exit code 0$", text, re.M)
    assert sorted(stopped) == [str(n) for n in range(WORKERS)]

    # All workers dead-lettered into one SQLite file, side by side.
    async with DeadLetterStore(tmp_path / "dead.sqlite3") as store:
        letters = await store.list(limit=10_000)
    assert {letter.reason for letter in letters} == {"bad_json"}
    assert {letter.payload for letter in letters} == {
        f"not json {n}".encode() for n in range(BAD_MESSAGES)
    }


async def test_a_dying_worker_is_restarted_with_backoff_and_a_stuck_one_killed_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ecotel.ingest.supervisor")
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    deaf = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]
    supervisor = Supervisor(
        2,
        lambda n: crash if n == 1 else deaf,
        backoff_min_s=0.1,
        backoff_max_s=0.4,
        stop_timeout_s=0.5,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    running = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(60):
        while supervisor.restarts[1] < 5:  # noqa: ASYNC110 (a counter, no event to wait on)
            await asyncio.sleep(0.01)
    # Backoff, not a busy loop: the waits before the fifth death are 0.1 + 0.2 + 0.4 + 0.4 s
    # however slow the machine (a busy loop takes only a process start each, ~0.05 s).
    assert loop.time() - started >= 1.1
    deaf_pid = supervisor.pids[0]
    supervisor.stop()
    async with asyncio.timeout(5):
        await running
    assert supervisor.restarts[0] == 0
    assert f"worker 0 (pid {deaf_pid}) still running 0.5 s after SIGTERM; killing it" in caplog.text
    assert f"worker 0 (pid {deaf_pid}) stopped: killed by SIGKILL" in caplog.text


def test_a_shared_worker_counts_repeats_but_never_missing() -> None:
    tracker = SequenceTracker(shared=True, max_remembered=3)
    # Worker 1 of 3 gets every third number; the others are no loss.
    assert [tracker.observe("s", "g", n) for n in (1, 4, 7)] == [Seen.FIRST, Seen.NEW, Seen.NEW]
    assert tracker.observe("s", "g", 4) is Seen.REPEAT
    assert tracker.observe("s", "g", 2) is Seen.NEW, "a number the others got, resent to us"
    assert tracker.missing("s", "g") == 0
    assert tracker.repeats[("s", "g")] == 1
    # Only the last three numbers are remembered.
    assert tracker.observe("s", "g", 1) is Seen.NEW


def test_a_shared_group_subscribes_share_filters_under_a_worker_id() -> None:
    mqtt = MqttSettings(client_id="ingest", shared_group="grp", worker=2)
    assert mqtt.session_id == "ingest-2"
    assert mqtt.subscriptions[0] == f"$share/grp/{wire.READINGS_FILTER}"
    plain = MqttSettings()
    assert plain.subscriptions == plain.topics
    assert plain.session_id == "ecotel-ingest"
    with pytest.raises(ValidationError, match="shared_group instead"):
        MqttSettings(topics=[f"$share/grp/{wire.READINGS_FILTER}"])
    with pytest.raises(ValidationError, match="one topic level"):
        MqttSettings(shared_group="a/b")
