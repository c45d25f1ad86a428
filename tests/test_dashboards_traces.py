"""Every panel of the four dashboards shows data after recorded traces are replayed through the real stack.

The shipped domain traces (tests/traces/, one real gateway per domain), T's out-of-range fault
trace (so rejections have a reason to show) and a three-day data-center backlog
(tests/traces/dashboards/, for PUE per hour and per day) are replayed, re-stamped to end now,
into Mosquitto -> the ingest with its derive stage -> InfluxDB. Each panel's InfluxQL is then
expanded as Grafana expands it ($timeFilter, $__interval with the datasource's 10 s minimum,
template variables set to the replayed sites, gateways and devices) and run; one that returns
nothing fails the test.
"""

import asyncio
import json
import sqlite3
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from dashboards.boards import all_dashboards
from dashboards.check import check_panels, resolve_variables
from dashboards.domain import dashboard_uid
from dashboards.fleet import UID as FLEET_UID
from deploy.servers import InfluxServer, MosquittoServer
from deploy.traces.file_format import TraceRecord
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
from tests.trace_fixtures import TRACES, TraceStack, readings_of
from tests.traces.dashboards.meter_map import DATACENTER as LONG_DC_MAP

pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
LONG_DC = TRACES / "dashboards" / "datacenter_3d.trace.gz"
REPLAYED = [
    *(TRACES / f"{domain}.trace.gz" for domain in ("ecology", "highway", "datacenter")),
    TRACES / "out_of_range.trace.gz",
    LONG_DC,
]
MIN_INTERVAL_MS = 10_000  # the provisioned datasource's timeInterval
# What an operator opens: the dashboards' own last hour; the data center over the last week.
RANGES = {dashboard_uid(Domain.DATACENTER): timedelta(days=7)}
DEFAULT_RANGE = timedelta(hours=1)


@dataclass
class Replayed:
    stack: TraceStack
    now: datetime


def _derive(tmp: Path) -> DeriveSettings:
    """The sample ingest's meter map (Gonghe DC1), plus the long trace's data center with REF."""
    sample = tomllib.loads((REPO / "deploy/ingest/ingest.toml").read_text(encoding="utf-8"))
    return DeriveSettings.model_validate(
        {
            "state_path": tmp / "derive.sqlite3",
            "delays": {"quarter_hour_s": 0.2, "hour_s": 0.2, "day_s": 0.2},
            "datacenters": [*sample["derive"]["datacenters"], LONG_DC_MAP],
        }
    )


def _marked(state: Path) -> int:
    if not state.exists():
        return 1
    with sqlite3.connect(state) as db:
        return int(db.execute("SELECT count(*) FROM dirty").fetchone()[0])


async def _derived(state: Path) -> None:
    """No window waits for recomputation, three looks in a row."""
    quiet = 0
    while quiet < 3:
        quiet = 0 if await asyncio.to_thread(_marked, state) else quiet + 1
        await asyncio.sleep(0.3)


async def _stats_in_two_buckets(stack: TraceStack) -> None:
    """The ingest rate is a derivative over $__interval buckets: it needs two of them."""
    query = (
        f'SELECT count("written") FROM "ingest_stats" WHERE time > now() - 1h '
        f"GROUP BY time({MIN_INTERVAL_MS // 1000}s) fill(none)"
    )
    while True:
        series = await influx_query(stack.influx_url, query, database=stack.database)
        if sum(len(s.values) for s in series) >= 2:
            return
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module")
async def replayed(
    influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Replayed]:
    tmp = tmp_path_factory.mktemp("dashboards_traces")
    database = f"dash_{uuid.uuid4().hex[:8]}"
    derive = _derive(tmp)
    async with MosquittoServer(tmp / "mosquitto") as broker:
        ingest = IngestService(
            IngestSettings(
                mqtt=MqttSettings(port=broker.port, client_id=f"ingest-{database}"),
                influx=InfluxSettings(url=influxdb.url, database=database),
                batch=BatchSettings(max_delay_s=0.1),
                dead_letter=DeadLetterSettings(path=tmp / "dead.sqlite3"),
                stats_interval_s=0.5,
                derive=derive,
            )
        )
        task = asyncio.create_task(ingest.run())
        try:
            await asyncio.wait_for(ingest.connected.wait(), 30)
            stack = TraceStack(broker, influxdb.url, database, tmp / "dead.sqlite3", ingest)
            # One trace at a time: each re-stamped so that it ends now, whenever it was recorded.
            for path in REPLAYED:
                await stack.replay(path, rewrite=Rewrite(restamp=True))
            assert derive.state_path is not None
            async with asyncio.timeout(60):
                await _derived(derive.state_path)
                await ingest.wait_idle()
                await _stats_in_two_buckets(stack)
            yield Replayed(stack, datetime.now(UTC))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _expected_variables(uid: str, records: list[TraceRecord]) -> dict[str, set[str]]:
    """The sites, gateways and devices the replayed traces hold for this dashboard."""
    if uid == FLEET_UID:
        bodies = [
            json.loads(r.payload) for r in records if r.topic.endswith(("/status", "/health"))
        ]
        return {"site": {b["site"] for b in bodies}, "gateway": {b["gateway"] for b in bodies}}
    domain = next(d for d in Domain if dashboard_uid(d) == uid)
    kinds = {k.kind for k in kinds_in(domain)}
    mine = [(s, g, r) for s, g, r in readings_of(records) if r["kind"] in kinds]
    return {
        "site": {s for s, _, _ in mine},
        "gateway": {g for _, g, _ in mine},
        "device": {r["device"] for _, _, r in mine},
    }


@pytest.mark.parametrize("uid", sorted(all_dashboards()))
async def test_every_panel_shows_the_replayed_traces(replayed: Replayed, uid: str) -> None:
    stack, now = replayed.stack, replayed.now
    start = now - RANGES.get(uid, DEFAULT_RANGE)
    expected = _expected_variables(uid, stack.replayed)
    # The picker, filled by the variables' own queries, offers exactly what was replayed ...
    offered = await resolve_variables(
        all_dashboards()[uid], stack.influx_url, stack.database, start, now
    )
    assert {k: set(v) for k, v in offered.items()} == expected
    # ... and with those chosen, every panel has something to draw.
    problems = await check_panels(
        stack.influx_url,
        stack.database,
        start,
        now,
        min_interval_ms=MIN_INTERVAL_MS,
        uids=[uid],
        variables={k: sorted(v) for k, v in expected.items()},
    )
    # The replayed traces hold no reading the ingest flags: then, and only then, the flagged
    # readings panel is rightly empty (tests/test_dashboards_operators.py draws flags).
    flagged = await influx_query(
        stack.influx_url, 'SELECT count("quality") FROM /.*/', database=stack.database
    )
    if not flagged:
        problems = [p for p in problems if " / Flagged readings " not in p]
    assert problems == [], "\n".join(problems)


async def test_pue_panels_draw_from_the_long_trace_only(replayed: Replayed) -> None:
    # Seconds of counters (Gonghe DC1) make no complete window: PUE per day is the long trace's.
    stack, now = replayed.stack, replayed.now
    for site, shows in (("Gonghe DC1", False), ("Gonghe DC2", True)):
        problems = await check_panels(
            stack.influx_url,
            stack.database,
            now - timedelta(days=7),
            now,
            min_interval_ms=MIN_INTERVAL_MS,
            uids=[dashboard_uid(Domain.DATACENTER)],
            variables={"site": [site]},
        )
        empty_pue = [p for p in problems if "/ PUE per day" in p]
        assert bool(empty_pue) != shows, problems
