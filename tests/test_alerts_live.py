"""Dashboards and alert rules against the real stack: simulated gateways of every domain plus a recorded
fault trace (offline gateway, polluted river, icy road in fog, PUE excursion, low battery, old
backlog) and a recorded clean trace of the same at other sites, all published over real Mosquitto through the ingest
(with its derived measurements) into real InfluxDB.

Every panel of the four dashboards, expanded as Grafana expands it, must return data; every alert
rule, evaluated as Grafana would (query -> reduce -> threshold, then its pending period), must
fire for the fault and not for the clean counterpart. The faults and their clean counterparts
are recorded traces (tests/traces/alerts/, made by its make_traces.py), replayed re-stamped.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from collector.config import BrokerSettings, GatewaySettings
from collector.gateway import Gateway
from dashboards.alert_eval import Instance, firing, render
from dashboards.alerts import rules_document
from dashboards.boards import all_dashboards
from dashboards.check import check_panels
from dashboards.preview import render_previews
from deploy.servers import InfluxServer, MosquittoServer
from deploy.traces.file_format import load_trace
from deploy.traces.replay import ReplayOptions, replay
from deploy.traces.rewrite import Rewrite
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
from tests.traces.alerts.make_traces import (
    CLEAN,
    CLEAN_GW,
    CLEAN_TRACE,
    COOL_DC,
    DRY,
    FAULT,
    FAULT_GW,
    FAULT_TRACE,
    HOT_DC,
    ICY,
)

pytestmark = pytest.mark.slow

SIMULATED = {
    Domain.ECOLOGY: ("Tuotuohe", "tuotuohe-gw1"),
    Domain.HIGHWAY: ("G109 K3012", "rsu-k3012"),
    Domain.DATACENTER: ("DC clean", "pue-clean"),
}
INTERVAL_S = 0.25


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
    # The recorded fault and clean traces, re-stamped so that each ends now.
    for path in (FAULT_TRACE, CLEAN_TRACE):
        records, _ = await asyncio.to_thread(load_trace, [path])
        options = ReplayOptions(speed=None, rewrite=Rewrite(restamp=True))
        await replay(BrokerSettings(port=mosquitto.port), records, options)
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
