"""Dashboards and alert rules against the real stack: simulated gateways of every domain plus a scripted
fault scenario (offline gateway, polluted river, icy road in fog, PUE excursion, low battery, old
backlog), each beside a clean counterpart, all published over real Mosquitto through the ingest
(with its derived measurements) into real InfluxDB.

Every panel of the four dashboards, expanded as Grafana expands it, must return data; every alert
rule, evaluated as Grafana would (query -> reduce -> threshold, then its pending period), must
fire for the fault and not for the clean counterpart. T's recorded traces are not used yet: the
scenario is published message by message, as a gateway would send it.
"""

import asyncio
import json
import os
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
from dashboards.alert_eval import Instance, firing, render
from dashboards.alerts import rules_document
from dashboards.boards import all_dashboards
from dashboards.check import check_panels
from dashboards.preview import render_previews
from deploy.servers import InfluxServer, MosquittoServer
from devices import Domain, kinds_in
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.derive_config import DeriveSettings
from pipelines.influx_query import influx_query
from pipelines.service import IngestService

pytestmark = pytest.mark.slow

SIMULATED = {
    Domain.ECOLOGY: ("Tuotuohe", "tuotuohe-gw1"),
    Domain.HIGHWAY: ("G109 K3012", "rsu-k3012"),
    Domain.DATACENTER: ("DC clean", "pue-clean"),
}
INTERVAL_S = 0.25
FAULT, CLEAN = "Wudaoliang", "Madoi"
FAULT_GW, CLEAN_GW = "wudaoliang-gw1", "madoi-gw1"
ICY, DRY = "G0613 K220", "G109 K100"
HOT_DC, COOL_DC = "DC hot", "DC clean"


@dataclass
class Run:
    influx_url: str
    database: str
    started: datetime
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def _gateway(domain: Domain, port: int, state: Path) -> GatewaySettings:
    site, gateway = SIMULATED[domain]
    return GatewaySettings.model_validate(
        {
            "gateway": {
                "id": gateway,
                "site": site,
                "state_dir": state,
                "batch_max_delay_s": 0.1,
                "health_interval_s": 0.5,
            },
            "broker": {"host": "127.0.0.1", "port": port},
            "devices": [
                {
                    "id": f"{kind.kind}-1",
                    "kind": kind.kind,
                    "interval_s": 1.0 if kind.kind == "traffic_detector" else INTERVAL_S,
                    "source": {"type": "simulator", "seed": seed},
                }
                for seed, kind in enumerate(kinds_in(domain))
            ],
        }
    )


class Publisher:
    """Sends what a gateway would: readings, status and health messages, numbered per gateway."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seq: dict[tuple[str, str], int] = {}

    async def readings(self, site: str, gateway: str, readings: list[dict[str, Any]]) -> None:
        for start in range(0, len(readings), 500):
            seq = self.seq.get((site, gateway), 0)
            self.seq[(site, gateway)] = seq + 1
            body = {
                "schema": 1,
                "gateway": gateway,
                "site": site,
                "seq": seq,
                "sent_at": _iso(datetime.now(UTC)),
                "readings": readings[start : start + 500],
            }
            await self.client.publish(wire.readings_topic(site, gateway), json.dumps(body), qos=1)

    async def status(self, site: str, gateway: str, state: str, reason: str, at: datetime) -> None:
        body = {"schema": 1, "gateway": gateway, "site": site, "state": state}
        body |= {"reason": reason, "at": _iso(at)}
        await self.client.publish(wire.status_topic(site, gateway), json.dumps(body), qos=1)

    async def health(self, site: str, gateway: str, at: datetime, **values: Any) -> None:
        body = {"schema": 1, "gateway": gateway, "site": site, "at": _iso(at), "uptime_s": 3600}
        body |= {
            "memory_available_mb": 300,
            "disk_free_mb": 9000,
            "outbox_bytes": 0,
            "load_1m": 0.2,
        }
        body |= {"link_up": True, "reconnects": 0, "dropped_total": 0, **values}
        await self.client.publish(wire.health_topic(site, gateway), json.dumps(body), qos=1)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _reading(
    device: str, kind: str, at: datetime, channel: str | None = None, **values: Any
) -> dict[str, Any]:
    reading: dict[str, Any] = {"device": device, "kind": kind, "time": _iso(at), "values": values}
    if channel is not None:
        reading["channel"] = channel
    return reading


WATER: dict[str, Any] = {
    "water_temperature": 4.0,
    "ph": 7.8,
    "dissolved_oxygen": 7.9,
    "conductivity": 310,
}
ROAD: dict[str, Any] = {"water_film": 0.3, "wind_speed": 3.0}


async def _publish_scenario(pub: Publisher, now: datetime) -> None:
    # An offline gateway: lost 20 min ago (fires), and one lost 5 min ago (not yet 15).
    for site, gw, lost in ((FAULT, FAULT_GW, 20), (CLEAN, CLEAN_GW, 5)):
        await pub.status(site, gw, "online", "connected", now - timedelta(hours=2))
        await pub.status(site, gw, "offline", "connection_lost", now - timedelta(minutes=lost))
    # Backlog: a reading unsent for 1.5 h, and a healthy 30 s.
    await pub.health(
        FAULT,
        FAULT_GW,
        now,
        outbox_readings=5400,
        oldest_unsent_age_s=5400.0,
        device_errors={"wq-1": 3},
        clock_state="unset",
    )
    await pub.health(CLEAN, CLEAN_GW, now, outbox_readings=3, oldest_unsent_age_s=30.0)
    # A polluted river (NH3-N 1.8 mg/L: class V) and a clean one.
    for site, gw, ammonia in ((FAULT, FAULT_GW, 1.8), (CLEAN, CLEAN_GW, 0.1)):
        await pub.readings(
            site,
            gw,
            [
                _reading(
                    "wq-1",
                    "water_quality",
                    now - timedelta(seconds=2),
                    **WATER,
                    turbidity=12.0,
                    ammonia_nitrogen=ammonia,
                )
            ],
        )
    # A battery under 11.5 V for the last 20 min, and a healthy one.
    for site, gw, volts in ((FAULT, FAULT_GW, 11.2), (CLEAN, CLEAN_GW, 12.8)):
        await pub.readings(
            site,
            gw,
            [
                _reading(
                    "power-1",
                    "station_health",
                    now - timedelta(minutes=m),
                    battery_voltage=volts,
                    battery_soc=40.0,
                    solar_charge_power=0.0,
                    enclosure_temperature=-12.0,
                )
                for m in range(20, -1, -1)
            ],
        )
    # An icy road in fog (-3 degC, wet, 150 m), and a dry clear one.
    for site, surface, state, visibility in ((ICY, -3.0, "wet", 150.0), (DRY, 8.0, "dry", 5000.0)):
        await pub.readings(
            site,
            "rsu-1",
            [
                _reading(
                    "rws-1",
                    "road_weather",
                    now - timedelta(seconds=2),
                    **ROAD,
                    surface_temperature=surface,
                    surface_state=state,
                    visibility=visibility,
                    air_temperature=-2.0 if surface < 0 else 10.0,
                    relative_humidity=95.0 if surface < 0 else 40.0,
                )
            ],
        )
    # Three days of energy counters: PUE 1.5 at one data center, 1.15 at the other.
    start = now - timedelta(days=3)
    for site, facility_kw in ((HOT_DC, 1500.0), (COOL_DC, 1150.0)):
        readings = []
        for i in range(3 * 24 * 6 + 1):
            at = start + timedelta(minutes=10 * i)
            hours = i / 6
            for circuit, kw in (
                ("utility", facility_kw),
                ("it_load", 1000.0),
                ("renewable", 400.0),
            ):
                readings.append(
                    _reading(
                        "pue-meter",
                        "energy_meter",
                        at,
                        channel=circuit,
                        energy_kwh=10_000 + kw * hours,
                        active_power_kw=kw,
                    )
                )
        await pub.readings(site, f"{site.split()[1].lower()}-meters", readings)
    # One refused reading, so that rejections by reason have something to show.
    await pub.readings(
        FAULT,
        FAULT_GW,
        [
            _reading(
                "wq-1", "water_quality", now, **{**WATER, "water_temperature": 95.0}, turbidity=1.0
            )
        ],
    )


def _datacenter(site: str) -> dict[str, Any]:
    def meter(circuit: str) -> list[dict[str, Any]]:
        return [{"device": "pue-meter", "circuit": circuit, "max_power_kw": 10_000}]

    return {
        "site": site,
        "facility": meter("utility"),
        "it": meter("it_load"),
        "renewable": meter("renewable"),
    }


@pytest_asyncio.fixture(scope="module")
async def live(
    mosquitto: MosquittoServer, influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    tmp = tmp_path_factory.mktemp("alerts")
    database = f"alerts_{uuid.uuid4().hex[:8]}"
    run = Run(influxdb.url, database, started=datetime.now(UTC))
    ingest = IngestService(
        IngestSettings(
            mqtt=MqttSettings(port=mosquitto.port, client_id=f"ingest-{database}"),
            influx=InfluxSettings(url=influxdb.url, database=database),
            batch=BatchSettings(max_delay_s=0.2),
            dead_letter=DeadLetterSettings(path=tmp / "dead.sqlite3"),
            stats_interval_s=0.5,
            derive=DeriveSettings.model_validate(
                {
                    "delays": {"quarter_hour_s": 0.2, "hour_s": 0.2, "day_s": 0.2},
                    "datacenters": [_datacenter(HOT_DC), _datacenter(COOL_DC)],
                }
            ),
        )
    )
    task = asyncio.create_task(ingest.run())
    await asyncio.wait_for(ingest.connected.wait(), 30)
    gateways = [Gateway(_gateway(d, mosquitto.port, tmp / "gw")) for d in Domain]
    tasks = [asyncio.create_task(gw.run()) for gw in gateways]
    await asyncio.sleep(2.0)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await _publish_scenario(Publisher(client), datetime.now(UTC))
    await asyncio.sleep(2.0)
    for gw in gateways:
        gw.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)

    async def derived() -> None:
        # Done when the daily PUE of both data centers is in, and the ingest is idle.
        while True:
            series = await influx_query(
                influxdb.url,
                'SELECT count("pue") FROM "pue" WHERE "window" = \'1d\' GROUP BY "site"',
                database=database,
            )
            if len(series) == 2:
                break
            await asyncio.sleep(0.2)
        await ingest.wait_idle()
        await asyncio.sleep(1.2)  # two more stats reports after the last write

    await asyncio.wait_for(derived(), 90)
    run.now = datetime.now(UTC)
    yield run
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("uid", sorted(all_dashboards()))
async def test_every_panel_returns_data(live: Run, uid: str) -> None:
    # As an operator opens them: the data center over days (PUE per day), the rest over the run.
    start = live.now - timedelta(days=3) if uid == "ecotel-datacenter" else live.started
    problems = await check_panels(
        live.influx_url,
        live.database,
        start - timedelta(seconds=5),
        live.now + timedelta(seconds=5),
        min_interval_ms=int(INTERVAL_S * 1000),
        uids=[uid],
    )
    assert problems == [], "\n".join(problems)


def _labels(**tags: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(tags.items()))


EXPECTED = {
    "ecotel-gateway-offline": (
        _labels(site=FAULT, gateway=FAULT_GW),
        _labels(site=CLEAN, gateway=CLEAN_GW),
    ),
    "ecotel-backlog-old": (
        _labels(site=FAULT, gateway=FAULT_GW),
        _labels(site=CLEAN, gateway=CLEAN_GW),
    ),
    "ecotel-water-worse-than-iii": (
        _labels(site=FAULT, device="wq-1"),
        _labels(site=CLEAN, device="wq-1"),
    ),
    "ecotel-battery-low": (
        _labels(site=FAULT, device="power-1"),
        _labels(site=CLEAN, device="power-1"),
    ),
    "ecotel-road-icing": (_labels(site=ICY, device="rws-1"), _labels(site=DRY, device="rws-1")),
    "ecotel-low-visibility": (_labels(site=ICY, device="rws-1"), _labels(site=DRY, device="rws-1")),
    "ecotel-pue-above-target": (_labels(site=HOT_DC), _labels(site=COOL_DC)),
}


def _rules() -> dict[str, dict[str, Any]]:
    return {r["uid"]: r for g in rules_document()["groups"] for r in g["rules"]}


@pytest.mark.parametrize("uid", sorted(EXPECTED))
async def test_rule_fires_on_the_fault_and_not_on_the_clean_one(live: Run, uid: str) -> None:
    rule = _rules()[uid]
    fault, clean = EXPECTED[uid]
    active = await firing(rule, live.influx_url, live.database, live.now)
    assert fault in active, f"{uid} did not fire for {fault}: {sorted(active)}"
    assert clean not in active, f"{uid} fired for the clean {clean}"
    summary = render(rule["annotations"]["summary"], active[fault])
    for _, value in fault:
        assert value in summary, summary


async def test_pending_period_holds_back_a_fresh_fault(live: Run) -> None:
    # The gateway lost 5 min ago is offline now: only the 15-minute pending period keeps it quiet.
    rule = _rules()["ecotel-gateway-offline"]
    now_only = {**rule, "for": "0s"}
    active = await firing(now_only, live.influx_url, live.database, live.now)
    assert _labels(site=CLEAN, gateway=CLEAN_GW) in active
    assert isinstance(active[_labels(site=CLEAN, gateway=CLEAN_GW)], Instance)


async def test_previews_draw_real_query_results(live: Run) -> None:
    """Set ECOTEL_PREVIEW_OUT=docs/dashboards to refresh the previews the docs show."""
    previews = await render_previews(live.influx_url, live.database, hours=0.05, now=live.now)
    assert set(previews) == set(all_dashboards())
    for uid, svg in previews.items():
        panels = [p for p in all_dashboards()[uid]["panels"] if p["type"] != "row"]
        assert svg.count("<polyline") >= len(panels) // 2, uid
        assert "not a Grafana screenshot" in svg
    out = os.environ.get("ECOTEL_PREVIEW_OUT")
    if out:
        for uid, svg in previews.items():
            (Path(out) / f"{uid}.svg").write_text(svg, encoding="utf-8")
