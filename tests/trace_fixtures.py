"""Trace tests in a few lines: a fresh broker and ingest on the session InfluxDB, replay a trace, assert.

async def test_x(trace_stack):
    await trace_stack.replay(TRACES / "ecology.trace.gz")
    assert await trace_stack.points() == expected_points(trace_stack.replayed)
    assert [d.reason for d in await trace_stack.dead_letters()] == ["bad_json"]
"""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from paho.mqtt.client import topic_matches_sub

from collector import wire
from collector.config import BrokerSettings
from deploy.servers import MosquittoServer
from deploy.traces.file_format import TraceRecord, load_trace
from deploy.traces.replay import ReplayOptions, ReplayProgress, replay
from devices import KINDS
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.dead_letter import DeadLetter, DeadLetterStore
from pipelines.influx_query import influx_query
from pipelines.service import IngestService

TRACES = Path(__file__).parent / "traces"

Point = tuple[str, tuple[tuple[str, str], ...], int, tuple[tuple[str, Any], ...]]


@dataclass
class TraceStack:
    """A fresh Mosquitto, an ingest writing to a fresh database, and what was replayed into it."""

    broker: MosquittoServer
    influx_url: str
    database: str
    dead_letter_path: Path
    ingest: IngestService
    replayed: list[TraceRecord] = field(default_factory=list)
    """Every message as it went out: topic and payload after any rewrite, each loop's own."""

    @property
    def broker_settings(self) -> BrokerSettings:
        return BrokerSettings(host=self.broker.host, port=self.broker.port)

    async def replay(
        self, *paths: Path, settle: bool = True, truncated_ok: bool = False, **options: Any
    ) -> ReplayProgress:
        """Publish the traces (as fast as possible unless ``speed=`` says otherwise), then settle.

        A trace whose last member is cut fails the test unless ``truncated_ok``: its lost tail
        would otherwise go unnoticed.
        """
        records, stats = await asyncio.to_thread(load_trace, paths)
        if stats.truncated and not truncated_ok:
            pytest.fail(f"truncated trace (its last member is cut): {stats.truncated}")
        options.setdefault("speed", None)
        sent: list[TraceRecord] = []
        progress = await replay(self.broker_settings, records, ReplayOptions(**options), sent=sent)
        self.replayed.extend(sent)
        if settle:
            await self.settle()
        return progress

    async def settle(self, timeout_s: float = 60) -> None:
        """Wait until the ingest has taken every replayed message it subscribes to and is idle."""
        topics = self.ingest.settings.mqtt.topics
        expected = sum(
            1 for r in self.replayed if any(topic_matches_sub(t, r.topic) for t in topics)
        )
        async with asyncio.timeout(timeout_s):
            while self.ingest.stats.messages < expected:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await self.ingest.wait_idle()

    async def points(self, *kinds: str, quality: bool = False) -> set[Point]:
        """What InfluxDB holds for these kinds (all catalog kinds if none): one tuple per point.

        The ingest's own ``quality`` flag field (stuck, spike) is left out unless asked for:
        it is not in the trace, it is the ingest's judgement of it. InfluxDB keeps one point per
        series and time, so a reading written twice with the same time shows once here; one
        written twice with different times shows as two points (compare with expected_points).
        """
        stored: set[Point] = set()
        for kind in kinds or tuple(KINDS):
            for series in await influx_query(
                self.influx_url,
                f'SELECT * FROM "{kind}" GROUP BY *',
                database=self.database,
                epoch="ns",
            ):
                for row in series.rows():
                    time_ns = row.pop("time")
                    values = tuple(
                        sorted(
                            (k, v)
                            for k, v in row.items()
                            if v is not None and (quality or k != "quality")
                        )
                    )
                    stored.add((kind, tuple(sorted(series.tags.items())), time_ns, values))
        return stored

    async def count(self, measurement: str) -> int:
        series = await influx_query(
            self.influx_url, f'SELECT * FROM "{measurement}"', database=self.database
        )
        return sum(len(s.values) for s in series)

    async def dead_letters(self) -> list[DeadLetter]:
        async with DeadLetterStore(self.dead_letter_path) as store:
            return await store.list(limit=100_000)


@contextlib.asynccontextmanager
async def open_trace_stack(influx_url: str, database: str, tmp: Path) -> AsyncIterator[TraceStack]:
    """A broker of its own (retained messages stay in it), an ingest writing to ``database``."""
    async with MosquittoServer(tmp / "mosquitto") as broker:
        ingest = IngestService(
            IngestSettings(
                mqtt=MqttSettings(port=broker.port, client_id=f"ingest-{uuid.uuid4().hex[:8]}"),
                influx=InfluxSettings(url=influx_url, database=database),
                batch=BatchSettings(max_delay_s=0.1),
                dead_letter=DeadLetterSettings(path=tmp / "dead-letters.sqlite3"),
            )
        )
        task = asyncio.create_task(ingest.run())
        try:
            await asyncio.wait_for(ingest.connected.wait(), 30)
            yield TraceStack(broker, influx_url, database, tmp / "dead-letters.sqlite3", ingest)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest_asyncio.fixture
async def trace_stack(influxdb, influx_db: str, tmp_path: Path) -> AsyncIterator[TraceStack]:
    """Start the stack: a fresh broker, the ingest, a fresh database on the session InfluxDB."""
    async with open_trace_stack(influxdb.url, influx_db, tmp_path) as stack:
        yield stack


def _ns(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


def reading_point(site: str, gateway: str, reading: dict[str, Any]) -> Point:
    """The InfluxDB point a valid reading becomes (docs/wire-contract.md, derived from the JSON)."""
    spec = KINDS[reading["kind"]].channel
    tags = {"site": site, "gateway": gateway, "device": reading["device"]}
    if spec is not None:
        tags[spec.tag] = reading["channel"]
    values = tuple(
        sorted(
            (k, v if isinstance(v, str) else float(v))
            for k, v in reading["values"].items()
            if v is not None
        )
    )
    return (reading["kind"], tuple(sorted(tags.items())), _ns(reading["time"]), values)


def readings_of(records: list[TraceRecord]) -> list[tuple[str, str, dict[str, Any]]]:
    """(site, gateway, reading) of every reading in the decodable messages on a readings topic
    the ingest subscribes to (``ecotel/v1/+/+/readings``; not ``ecotel/v2/...``)."""
    out = []
    for rec in records:
        if not topic_matches_sub(wire.READINGS_FILTER, rec.topic):
            continue
        try:
            body = json.loads(rec.payload)
        except (UnicodeDecodeError, ValueError):
            continue
        for reading in body.get("readings", []):
            out.append((body["site"], body["gateway"], reading))
    return out


def expected_points(records: list[TraceRecord]) -> set[Point]:
    """Every reading of the trace as a point: right for traces whose readings are all valid."""
    return {reading_point(site, gw, r) for site, gw, r in readings_of(records)}


@pytest.fixture
def traces_dir() -> Path:
    return TRACES
