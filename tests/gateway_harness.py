"""A gateway test bench: its own Mosquitto, the session InfluxDB, an in-process ingest and an MQTT observer."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest_asyncio

from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.influx_query import influx_query
from pipelines.service import IngestService

GATEWAY, SITE = "sf-gw", "沱沱河 站"
HYDRO_INTERVAL_S = 0.1


def gateway_settings(port: int, state_dir: Path, **gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "id": GATEWAY,
            "site": SITE,
            "state_dir": str(state_dir),
            "batch_max_delay_s": 0.1,
            "commit_interval_s": 0.05,
            **gateway,
        },
        "broker": {"host": "127.0.0.1", "port": port, "reconnect_max_s": 0.5},
        "devices": [
            {
                "id": "hydro-1",
                "kind": "hydrology",
                "interval_s": HYDRO_INTERVAL_S,
                "source": {"type": "simulator", "seed": 7},
            }
        ],
    }


@dataclass
class Harness:
    broker: MosquittoServer
    influx_url: str
    database: str
    ingest: IngestService
    observed: list[dict[str, Any]] = field(default_factory=list)

    async def settle(self, expected_readings: int) -> None:
        async with asyncio.timeout(60):
            while self.ingest.stats.received < expected_readings:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await self.ingest.wait_idle()

    async def stored_times(self) -> list[int]:
        series = await influx_query(
            self.influx_url, "SELECT stage FROM hydrology", database=self.database, epoch="ns"
        )
        return [row[0] for s in series for row in s.values]

    def observed_seqs(self) -> list[int]:
        return [m["seq"] for m in self.observed]

    def observed_times(self) -> set[str]:
        return {r["time"] for m in self.observed for r in m["readings"]}


async def _observe(port: int, sink: list[dict[str, Any]], subscribed: asyncio.Event) -> None:
    # A persistent session, so an observer that loses its broker misses nothing.
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="sf-observer", clean_session=False
            ) as client:
                await client.subscribe(f"ecotel/v1/+/{GATEWAY}/readings", qos=1)
                subscribed.set()
                async for message in client.messages:
                    sink.append(json.loads(bytes(message.payload)))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


@pytest_asyncio.fixture
async def harness(influxdb: InfluxServer, tmp_path: Path) -> AsyncIterator[Harness]:
    """A broker of its own (tests stop it), the session InfluxDB, an ingest and an observer."""
    database = f"sf_{uuid.uuid4().hex[:8]}"
    async with MosquittoServer(tmp_path / "broker") as broker:
        ingest = IngestService(
            IngestSettings(
                mqtt=MqttSettings(port=broker.port, client_id=f"ingest-{database}"),
                influx=InfluxSettings(url=influxdb.url, database=database),
                batch=BatchSettings(max_delay_s=0.1),
                dead_letter=DeadLetterSettings(path=tmp_path / "dead.sqlite3"),
            )
        )
        h = Harness(broker, influxdb.url, database, ingest)
        subscribed = asyncio.Event()
        tasks = [
            asyncio.create_task(ingest.run()),
            asyncio.create_task(_observe(broker.port, h.observed, subscribed)),
        ]
        async with asyncio.timeout(30):
            await ingest.connected.wait()
            # Subscribed before any gateway speaks (a fixed pause was a race on a busy machine).
            await subscribed.wait()
        yield h
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
