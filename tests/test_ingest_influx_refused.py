"""Points InfluxDB refuses are dead-lettered one by one; the rest of their message is stored."""

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import load_ingest_config
from pipelines.dead_letter import DeadLetterStore
from pipelines.service import IngestService
from tests.hydrology_load import hydrology_message, stored_stages

GW = "gw-refused"
# InfluxDB's shards of the default policy are weeks from Monday 00:00 UTC (Go's zero time):
# readings a day apart from this Monday fill one shard, then the next.
T0 = datetime(2026, 3, 2, tzinfo=UTC)


async def test_points_influx_refuses_are_dead_lettered_and_their_neighbours_stored(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    # In the first week `stage` is a string: InfluxDB refuses float stages there
    # (400, field type conflict) and takes them in the second.
    async with httpx.AsyncClient(base_url=influxdb.url, trust_env=False) as http:
        conflict = (
            f'hydrology,device=other,gateway=x,site=site stage="high" {int(T0.timestamp()) * 10**9}'
        )
        answer = await http.post("/write", params={"db": influx_db}, content=conflict)
        assert answer.status_code == 204, answer.text
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {mosquitto.port}\nclient_id = "ingest-refused"\n'
        f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n'
        "[batch]\nmax_delay_s = 0.05\n"
        f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n'
        "[derive]\nenabled = false\n",
        encoding="utf-8",
    )
    service = IngestService(load_ingest_config(config))
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(60):
            await service.connected.wait()
            # 14 readings a day apart (seq 0 at T0): 7 in each week.
            payload = json.loads(hydrology_message(GW, 0, 14, T0))
            for i, reading in enumerate(payload["readings"]):
                reading["time"] = (T0 + timedelta(days=i, hours=1)).isoformat()
            outcome = await service.submit(
                f"ecotel/v1/site/{GW}/readings", json.dumps(payload).encode()
            )
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert outcome.stored == 14
    async with DeadLetterStore(tmp_path / "dead.sqlite3") as store:
        letters = await store.list(reason="influx_refused")
    refused_days = sorted(
        (int(str(letter.reading).rsplit(" ", 1)[1]) // 10**9 - int(T0.timestamp())) // 86_400
        for letter in letters
    )
    assert refused_days == list(range(7))
    assert all("field type conflict" in letter.detail for letter in letters)
    assert await stored_stages(influxdb.url, influx_db) == 7
    assert service.stats.written == 7
    assert service.stats.rejected_readings["influx_refused"] == 7
