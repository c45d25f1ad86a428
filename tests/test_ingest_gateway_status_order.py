"""A gateway's latest status point is its latest status, whatever its clock says and however late
the ingest takes its last will; a health report from an unset clock lands where panels look."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import for_worker, load_ingest_config
from pipelines.influx_query import Series, influx_query
from pipelines.service import IngestService
from tests.ingest_harness import running_ingest

SITE = f"Zadoi-{uuid.uuid4().hex[:8]}"


def _status(gateway: str, state: str, reason: str, at: datetime | None) -> bytes:
    status: dict[str, object] = {"schema": 1, "gateway": gateway, "site": SITE, "state": state}
    status["reason"] = reason
    if at is not None:
        status["at"] = at.isoformat()
    return json.dumps(status).encode()


def _health(gateway: str, at: datetime, clock_state: str) -> bytes:
    return wire.GatewayHealth(
        gateway=gateway,
        site=SITE,
        at=at,
        uptime_s=60.0,
        load_1m=0.2,
        memory_available_mb=300.0,
        disk_free_mb=900.0,
        outbox_readings=0,
        outbox_bytes=0,
        oldest_unsent_age_s=None,  # an empty outbox has no oldest reading
        link_up=True,
        reconnects=0,
        dropped_total=0,
        clock_state=clock_state,
    ).encode()


@contextlib.asynccontextmanager
async def _ingest(
    tmp_path: Path,
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    *,
    group: str | None = None,
    worker: int | None = None,
) -> AsyncIterator[IngestService]:
    config = tmp_path / f"ingest-{worker}.toml"
    # Only this test's site: the session broker holds other tests' retained statuses.
    config.write_text(
        f'[mqtt]\nport = {broker.port}\nclient_id = "ingest-{database}"\n'
        f'topics = ["ecotel/v1/{SITE}/+/status", "ecotel/v1/{SITE}/+/health"]\n'
        + (f'shared_group = "{group}"\n' if group else "")
        + f'[influx]\nurl = "{influx.url}"\ndatabase = "{database}"\n'
        f"[batch]\nmax_delay_s = 0.05\nretry_max_s = 0.5\n"
        f'[dead_letter]\npath = "{tmp_path / f"dead-{worker}.sqlite3"}"\n'
        f'[spool]\npath = "{tmp_path / f"spool-{worker}.sqlite3"}"\n'
        "[derive]\nenabled = false\n",
        encoding="utf-8",
    )
    settings = load_ingest_config(config)
    async with running_ingest(
        settings if worker is None else for_worker(settings, worker)
    ) as service:
        yield service


async def _publish(port: int, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def _settled(service: IngestService, statuses: int, *, idle: bool = True) -> None:
    async with asyncio.timeout(30):
        while service.stats.status_updates < statuses:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if idle:
            await service.wait_idle()


async def _last_states(url: str, database: str) -> dict[str, str]:
    series = await influx_query(
        url, 'SELECT last("state") FROM gateway_status GROUP BY "gateway"', database=database
    )
    return {s.tags["gateway"]: s.values[0][1] for s in series}


async def _health_points(url: str, database: str) -> list[Series]:
    return await influx_query(
        url,
        'SELECT "oldest_unsent_age_s" FROM gateway_health GROUP BY "gateway"',
        database=database,
        epoch="s",
    )


@pytest.mark.slow
async def test_the_latest_status_wins_whatever_the_gateways_clock(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    now = datetime.now(UTC)
    topic = wire.status_topic
    async with _ingest(tmp_path, mosquitto, influxdb, influx_db) as service:
        await _publish(
            mosquitto.port,
            # A clock 5 s behind: its online, after the broker's will, is stamped before it.
            (topic(SITE, "behind"), _status("behind", "online", "connected", now - timedelta(1))),
            (topic(SITE, "behind"), _status("behind", "offline", "connection_lost", None)),
            (
                topic(SITE, "behind"),
                _status("behind", "online", "connected", now - timedelta(seconds=5)),
            ),
            # An unset clock, and one restored from a save of last year.
            (topic(SITE, "unset"), _status("unset", "offline", "connection_lost", None)),
            (
                topic(SITE, "unset"),
                _status("unset", "online", "connected", datetime(1970, 1, 1, 0, 0, 42, tzinfo=UTC)),
            ),
            (topic(SITE, "restored"), _status("restored", "offline", "connection_lost", None)),
            (
                topic(SITE, "restored"),
                _status("restored", "online", "connected", now - timedelta(days=300)),
            ),
            # A clock that is right, and a gateway that really went away: unchanged.
            (
                topic(SITE, "right"),
                _status("right", "online", "connected", now - timedelta(minutes=3)),
            ),
            (
                topic(SITE, "right"),
                _status("right", "offline", "shutdown", now - timedelta(minutes=1)),
            ),
            (
                topic(SITE, "gone"),
                _status("gone", "online", "connected", now - timedelta(minutes=30)),
            ),
            (topic(SITE, "gone"), _status("gone", "offline", "connection_lost", None)),
        )
        await _settled(service, 11)
    assert await _last_states(influxdb.url, influx_db) == {
        "behind": "online",
        "unset": "online",
        "restored": "online",
        "right": "offline",
        "gone": "offline",
    }
    right = await influx_query(
        influxdb.url,
        "SELECT \"state\" FROM gateway_status WHERE gateway = 'right'",
        database=influx_db,
        epoch="s",
    )
    # A sane clock's own times are kept (a redelivered status overwrites itself).
    assert [row[0] for row in right[0].values] == [
        int((now - timedelta(minutes=m)).timestamp()) for m in (3, 1)
    ]


@pytest.mark.slow
async def test_a_will_taken_late_by_a_restarted_ingest_does_not_outlast_the_online_after_it(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    now = datetime.now(UTC)
    topic = wire.status_topic(SITE, "yushu")
    async with _ingest(tmp_path, mosquitto, influxdb, influx_db) as service:
        # The will arrives late (stamped on arrival); the online was stamped by the gateway
        # before the ingest took the will.
        await _publish(
            mosquitto.port, (topic, _status("yushu", "offline", "connection_lost", None))
        )
        await _settled(service, 1)
    # A new ingest process: what it knows of the last status is what InfluxDB holds.
    async with _ingest(tmp_path, mosquitto, influxdb, influx_db) as service:
        await _publish(
            mosquitto.port,
            (topic, _status("yushu", "online", "connected", now - timedelta(seconds=10))),
        )
        await _settled(service, 1)
    assert await _last_states(influxdb.url, influx_db) == {"yushu": "online"}


async def test_a_health_report_of_an_unset_clock_is_stamped_on_arrival(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    topic = wire.health_topic
    async with _ingest(tmp_path, mosquitto, influxdb, influx_db) as service:
        await _publish(
            mosquitto.port,
            (
                topic(SITE, "unset"),
                _health("unset", datetime(1970, 1, 1, 0, 1, tzinfo=UTC), "unset"),
            ),
            (topic(SITE, "synced"), _health("synced", datetime(2026, 11, 1, tzinfo=UTC), "ok")),
        )
        async with asyncio.timeout(30):
            while len(series := await _health_points(influxdb.url, influx_db)) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert service.stats.rejected_messages.total() == 0
    stored = {s.tags["gateway"]: s.values for s in series}
    [(unset_at, unset_age)] = stored["unset"]
    assert abs(unset_at - datetime.now(UTC).timestamp()) < 120, "not where panels look"
    # A trusted clock's time is kept; an empty outbox's oldest age is 0, not left out.
    assert stored["synced"] == [[int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()), 0.0]]
    assert unset_age == 0.0


@pytest.mark.slow
async def test_influxdb_away_at_the_first_status_keeps_the_ingest_and_the_order(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    now = datetime.now(UTC)
    topic = wire.status_topic(SITE, "away")
    async with (
        InfluxServer(tmp_path / "influx") as influx,
        _ingest(tmp_path, mosquitto, influx, "away") as service,
    ):
        await influx.stop()
        await _publish(
            mosquitto.port,
            (topic, _status("away", "offline", "connection_lost", None)),
            (topic, _status("away", "online", "connected", now - timedelta(seconds=5))),
        )
        await _settled(service, 2, idle=False)  # InfluxDB away: spooled
        await influx.start()
        async with asyncio.timeout(60):
            while await _states(influx.url, "away") != ["offline", "online"]:  # noqa: ASYNC110
                await asyncio.sleep(0.2)


async def _states(url: str, database: str) -> list[str]:
    try:
        series = await influx_query(url, 'SELECT "state" FROM gateway_status', database=database)
    except Exception:
        return []
    return [row[1] for s in series for row in s.values]


@pytest.mark.slow
async def test_a_retained_status_taken_again_at_each_start_adds_no_point(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    now = datetime.now(UTC)
    topic = wire.status_topic(SITE, "retained")
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        will = _status("retained", "offline", "connection_lost", None)
        await client.publish(topic, will, qos=1, retain=True)
        async with _ingest(tmp_path, mosquitto, influxdb, influx_db) as service:
            await _settled(service, 1)
            # A clock 5 s behind: this online is stamped after the will, once.
            online = _status("retained", "online", "connected", now - timedelta(seconds=5))
            await client.publish(topic, online, qos=1, retain=True)
            await _settled(service, 2)
    for _ in range(2):  # every start takes the retained online again
        async with _ingest(tmp_path, mosquitto, influxdb, influx_db) as service:
            await _settled(service, 1)
    assert await _states(influxdb.url, influx_db) == ["offline", "online"]
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.publish(topic, b"", qos=1, retain=True)  # the session broker's retained


@pytest.mark.slow
async def test_a_groups_statuses_are_stamped_in_order_by_worker_0(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    now = datetime.now(UTC)
    topic = wire.status_topic(SITE, "grouped")
    group = f"g{uuid.uuid4().hex[:6]}"
    async with (
        _ingest(tmp_path, mosquitto, influxdb, influx_db, group=group, worker=0) as first,
        _ingest(tmp_path, mosquitto, influxdb, influx_db, group=group, worker=1) as second,
    ):
        for payload in (
            _status("grouped", "online", "connected", now - timedelta(days=1)),
            _status("grouped", "offline", "connection_lost", None),
            _status("grouped", "online", "connected", now - timedelta(seconds=5)),
        ):
            await _publish(mosquitto.port, (topic, payload))
            await asyncio.sleep(0.3)
        await _settled(first, 3)
        assert second.stats.status_updates == 0
    assert await _last_states(influxdb.url, influx_db) == {"grouped": "online"}
