"""The whole path on real servers: simulated gateways of all three domains -> Mosquitto -> ingest -> InfluxDB.

An independent MQTT observer records every message the broker delivered; the
tests then check that InfluxDB holds exactly those readings (tags, fields,
timestamps, once each), that malformed input sits in the dead-letter store
with its reason, and that every dashboard panel's query returns data.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from collector import wire
from collector.config import GatewaySettings
from collector.gateway import Gateway
from dashboards.check import check_panels
from devices import KINDS, Domain, kinds_in
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.dead_letter import DeadLetterStore
from pipelines.influx_query import influx_query
from pipelines.service import IngestService

SITES = {
    Domain.ECOLOGY: ("沱沱河 水文站", "tuotuohe gw,1"),
    Domain.HIGHWAY: ("G109 K3012", "rsu=k3012"),
    Domain.DATACENTER: ("共和 数据中心", "pue-1"),
}
INTERVAL_S = 0.25
RUN_S = 3.0

# Malformed input a misbehaving gateway sends, and the reason the ingest must give.
BAD_SITE, BAD_GW = "沱沱河 水文站", "misbehaving gw"


def _bad_inputs() -> list[tuple[str, bytes, str]]:
    topic = wire.readings_topic(BAD_SITE, BAD_GW)

    def message(reading: dict[str, Any], **envelope: Any) -> bytes:
        body = {
            "schema": 1,
            "gateway": BAD_GW,
            "site": BAD_SITE,
            "seq": 10**9,
            "sent_at": "2026-11-22T10:00:00Z",
            "readings": [reading],
            **envelope,
        }
        return json.dumps(body, ensure_ascii=False).encode()

    hydro: dict[str, Any] = {
        "device": "hydro-9",
        "kind": "hydrology",
        "time": "2026-11-22T10:00:00Z",
        "values": {"stage": 2.0, "discharge": 50.0, "water_temperature": 3.0},
    }
    return [
        (topic, b'{"schema": 1, "readings": [', "bad_json"),
        (topic, b"\x80\x81 not utf-8", "not_utf8"),
        (
            topic,
            message({**hydro, "values": {**hydro["values"], "water_temperature": 95.0}}),
            "invalid_values",
        ),
        (
            topic,
            message({**hydro, "values": {**hydro["values"], "stage": "2.0 m"}}),
            "invalid_values",
        ),
        (topic, message({**hydro, "kind": "toaster"}), "unknown_kind"),
        (topic, message(hydro, gateway="someone else"), "topic_mismatch"),
    ]


@dataclass
class E2ERun:
    influx_url: str
    database: str
    dead_letters: Path
    started: datetime
    ended: datetime
    observed: list[tuple[str, bytes]] = field(default_factory=list)
    ingest: IngestService | None = None
    gateways: list[Gateway] = field(default_factory=list)


def _gateway_settings(domain: Domain, port: int, state_dir: Path) -> GatewaySettings:
    site, gateway = SITES[domain]
    devices = [
        {
            "id": f"{kind.kind} 1",
            "kind": kind.kind,
            # A traffic count covers at least a second (the catalog's interval_s range).
            "interval_s": 1.0 if kind.kind == "traffic_detector" else INTERVAL_S,
            "source": {"type": "simulator", "seed": seed},
        }
        for seed, kind in enumerate(kinds_in(domain))
    ]
    return GatewaySettings.model_validate(
        {
            "gateway": {
                "id": gateway,
                "site": site,
                "state_dir": state_dir,
                "batch_max_delay_s": 0.1,
            },
            "broker": {"host": "127.0.0.1", "port": port},
            "devices": devices,
        }
    )


async def _observe(port: int, sink: list[tuple[str, bytes]], ready: asyncio.Event) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"observer-{uuid.uuid4().hex[:6]}"
    ) as client:
        await client.subscribe("ecotel/v1/#", qos=1)
        ready.set()
        async for message in client.messages:
            sink.append((str(message.topic), bytes(message.payload)))


@pytest_asyncio.fixture(scope="module")
async def e2e_run(
    mosquitto, influxdb, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[E2ERun]:
    tmp = tmp_path_factory.mktemp("e2e")
    database = f"e2e_{uuid.uuid4().hex[:8]}"
    run = E2ERun(
        influxdb.url,
        database,
        tmp / "dead-letters.sqlite3",
        started=datetime.now(UTC),
        ended=datetime.now(UTC),
    )
    ingest = IngestService(
        IngestSettings(
            mqtt=MqttSettings(port=mosquitto.port, client_id=f"ingest-{database}"),
            influx=InfluxSettings(url=influxdb.url, database=database),
            batch=BatchSettings(max_delay_s=0.2),
            dead_letter=DeadLetterSettings(path=run.dead_letters),
        )
    )
    run.ingest = ingest
    observer_ready = asyncio.Event()
    observer = asyncio.create_task(_observe(mosquitto.port, run.observed, observer_ready))
    ingest_task = asyncio.create_task(ingest.run())
    await asyncio.wait_for(asyncio.gather(observer_ready.wait(), ingest.connected.wait()), 30)

    run.gateways = [Gateway(_gateway_settings(d, mosquitto.port, tmp / "gw")) for d in Domain]
    gateway_tasks = [asyncio.create_task(gw.run()) for gw in run.gateways]
    await asyncio.sleep(RUN_S / 2)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as bad:
        for topic, payload, _ in _bad_inputs():
            await bad.publish(topic, payload, qos=1)
    await asyncio.sleep(RUN_S / 2)
    for gw in run.gateways:
        gw.stop()
    await asyncio.wait_for(asyncio.gather(*gateway_tasks), 30)
    run.ended = datetime.now(UTC)

    # Done when the ingest has seen every message the observer saw and written it all.
    async def settled() -> None:
        while ingest.stats.messages < len(run.observed):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await ingest.wait_idle()

    await asyncio.wait_for(settled(), 30)
    yield run
    for task in (observer, ingest_task):
        task.cancel()
    await asyncio.gather(observer, ingest_task, return_exceptions=True)


def _rfc3339_ns(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta // timedelta(microseconds=1)) * 1000


def _expected_points(observed: list[tuple[str, bytes]]) -> set[tuple[Any, ...]]:
    """What InfluxDB must hold, derived from the raw observed JSON (not from the ingest's code)."""
    bad = {payload for _, payload, _ in _bad_inputs()}
    points = set()
    for topic, payload in observed:
        if not topic.endswith("/readings") or payload in bad:
            continue
        body = json.loads(payload)
        for r in body["readings"]:
            spec = KINDS[r["kind"]].channel
            tags = {"site": body["site"], "gateway": body["gateway"], "device": r["device"]}
            if spec is not None:
                tags[spec.tag] = r["channel"]
            fields = tuple(
                sorted(
                    (k, float(v) if not isinstance(v, str) else v)
                    for k, v in r["values"].items()
                    if v is not None
                )
            )
            points.add((r["kind"], tuple(sorted(tags.items())), _rfc3339_ns(r["time"]), fields))
    return points


async def _stored_points(run: E2ERun) -> list[tuple[Any, ...]]:
    stored = []
    for kind in KINDS:
        for series in await influx_query(
            run.influx_url, f'SELECT * FROM "{kind}" GROUP BY *', database=run.database, epoch="ns"
        ):
            for row in series.rows():
                time_ns = row.pop("time")
                fields = tuple(sorted((k, v) for k, v in row.items() if v is not None))
                stored.append((kind, tuple(sorted(series.tags.items())), time_ns, fields))
    return stored


async def test_every_reading_arrives_once_with_its_tags_fields_and_time(e2e_run: E2ERun) -> None:
    expected = _expected_points(e2e_run.observed)
    stored = await _stored_points(e2e_run)
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    assert set(stored) == expected
    kinds_seen = {p[0] for p in expected}
    assert kinds_seen == set(KINDS), "every kind of all three domains took part"
    published = sum(gw.stats.published for gw in e2e_run.gateways)
    assert len(expected) == published, "the broker delivered every reading the gateways published"
    assert e2e_run.ingest is not None
    assert e2e_run.ingest.stats.written == published
    assert e2e_run.ingest.stats.missing_messages == 0, "no gateway message was lost"
    repeats = e2e_run.ingest.sequences.repeats
    assert all(repeats[(site, gw)] == 0 for site, gw in SITES.values()), repeats
    # The misbehaving gateway sent three decodable messages all numbered 10**9.
    assert repeats[(BAD_SITE, BAD_GW)] == 2


async def test_names_with_spaces_commas_and_chinese_survive_as_tags(e2e_run: E2ERun) -> None:
    series = await influx_query(
        e2e_run.influx_url, 'SHOW TAG VALUES WITH KEY = "site"', database=e2e_run.database
    )
    sites = {row[1] for s in series for row in s.values}
    assert {site for site, _ in SITES.values()} <= sites
    series = await influx_query(
        e2e_run.influx_url, 'SHOW TAG VALUES WITH KEY = "gateway"', database=e2e_run.database
    )
    assert "tuotuohe gw,1" in {row[1] for s in series for row in s.values}


async def test_malformed_input_is_dead_lettered_with_its_reason(e2e_run: E2ERun) -> None:
    async with DeadLetterStore(e2e_run.dead_letters) as store:
        letters = await store.list(limit=1000)
    expected = sorted(reason for _, _, reason in _bad_inputs())
    assert sorted(letter.reason for letter in letters) == expected
    by_reason = {letter.reason: letter for letter in letters}
    assert by_reason["not_utf8"].payload == b"\x80\x81 not utf-8"
    assert (
        "water_temperature" in by_reason["invalid_values"].detail
        or "stage" in by_reason["invalid_values"].detail
    )
    assert by_reason["unknown_kind"].reading["kind"] == "toaster"  # type: ignore[index, call-overload]
    assert e2e_run.ingest is not None
    assert e2e_run.ingest.stats.rejected_readings["invalid_values"] == 2
    assert e2e_run.ingest.stats.rejected_messages["bad_json"] == 1


async def test_gateways_report_online_then_offline(e2e_run: E2ERun) -> None:
    series = await influx_query(
        e2e_run.influx_url,
        'SELECT "state", "reason" FROM gateway_status GROUP BY "gateway"',
        database=e2e_run.database,
    )
    states = {s.tags["gateway"]: [(row[1], row[2]) for row in s.values] for s in series}
    for _, gateway in SITES.values():
        assert states[gateway] == [("online", "connected"), ("offline", "shutdown")]


async def test_every_dashboard_panel_returns_data_after_the_run(e2e_run: E2ERun) -> None:
    # Grafana's view of the run: the time range it covered, variables set to All,
    # and a datasource minimum interval matching these gateways' 0.25 s polls
    # (the shipped datasource says 10 s, for 10 s polls).
    problems = await check_panels(
        e2e_run.influx_url,
        e2e_run.database,
        e2e_run.started - timedelta(seconds=5),
        e2e_run.ended + timedelta(seconds=5),
        min_interval_ms=int(INTERVAL_S * 1000),
        # No hour or day completes in this run; tests/test_alerts_live.py feeds days of counters.
        skip_measurements={"pue", "ref"},
    )
    assert problems == [], "\n".join(problems)


def test_dead_letters_can_be_inspected_from_the_command_line(e2e_run: E2ERun) -> None:
    env = {**os.environ, "ECOTEL_INGEST_DEAD_LETTER__PATH": str(e2e_run.dead_letters)}
    ingest = [sys.executable, "-m", "pipelines"]
    counts = subprocess.run(
        [*ingest, "dead-letters", "counts"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^\s+2\s+invalid_values$", counts, re.MULTILINE), counts
    listing = subprocess.run(
        [*ingest, "dead-letters", "list", "--reason", "not_utf8"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    letter_id = int(listing.split()[0])
    shown = json.loads(
        subprocess.run(
            [*ingest, "dead-letters", "show", str(letter_id)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert shown["reason"] == "not_utf8"
    assert shown["payload"] == {"hex": b"\x80\x81 not utf-8".hex()}


async def test_gateways_report_their_health(e2e_run: E2ERun) -> None:
    series = await influx_query(
        e2e_run.influx_url,
        'SELECT last("link_up"), last("disk_free_mb"), last("uptime_s"), last("outbox_readings") '
        'FROM gateway_health GROUP BY "gateway"',
        database=e2e_run.database,
    )
    reports = {s.tags["gateway"]: s.rows()[0] for s in series}
    assert set(reports) == {gateway for _, gateway in SITES.values()}
    for row in reports.values():
        assert row["last"] == 1.0, "published while connected"
        assert row["last_1"] > 0
        assert row["last_2"] >= 0
        assert row["last_3"] >= 0
