"""The ingest against an InfluxDB with authentication on: writes, the quality history read at
start, window recomputation and ``ecotel-ingest derive`` all send the configured credentials."""

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from deploy.servers import InfluxServer, MosquittoServer
from pipelines.analytics.energy import Window
from pipelines.config import load_ingest_config
from pipelines.influx_query import influx_query
from pipelines.influx_writer import InfluxError
from pipelines.quality import QualityChecker
from pipelines.quality_history import load_quality_history
from pipelines.service import IngestService

USER, PASSWORD = "ecotel", "s3cret-'pass"
DATABASE = "secured"
SITE, GW = "G30-k12", "g30-gw1"
# A past quarter hour of the highway's time zone, so its window is complete when recomputed.
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def secured(tmp_path: Path) -> AsyncIterator[InfluxServer]:
    async with InfluxServer(tmp_path / "influx", auth_enabled=True) as server:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
            # Until an admin exists, influxd takes this one statement without credentials.
            created = await http.post(
                "/query",
                data={
                    "q": f"CREATE USER {USER} WITH PASSWORD 's3cret-\\'pass' WITH ALL PRIVILEGES"
                },
            )
            assert created.status_code == 200
            assert "error" not in created.text, created.text
        yield server


def _config(tmp_path: Path, broker: MosquittoServer, influx: InfluxServer) -> Path:
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {broker.port}\nclient_id = "ingest-auth"\n'
        f'[influx]\nurl = "{influx.url}"\ndatabase = "{DATABASE}"\n'
        f"username = {json.dumps(USER)}\npassword = {json.dumps(PASSWORD)}\n"
        "[batch]\nmax_delay_s = 0.1\n"
        f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n'
        "[derive.delays]\nquarter_hour_s = 0\nhour_s = 0\n",
        encoding="utf-8",
    )
    return config


def _message() -> bytes:
    def at(minute: int) -> str:
        return (T0 + timedelta(minutes=minute)).isoformat()

    lanes = [
        {
            "device": "radar-1",
            "kind": "traffic_detector",
            "channel": lane,
            "time": at(minute),
            "values": {"interval_s": 60.0, "volume": 20.0, "mean_speed": 90.0, "occupancy": 8.0},
        }
        for lane in ("1", "2")
        for minute in (1, 2)
    ]
    sonde = {
        "device": "sonde-1",
        "kind": "water_quality",
        "time": at(3),
        "values": {
            "water_temperature": 6.0,
            "ph": 7.5,
            "dissolved_oxygen": 8.0,
            "conductivity": 300.0,
            "turbidity": 5.0,
        },
    }
    return json.dumps(
        {
            "schema": 1,
            "gateway": GW,
            "site": SITE,
            "seq": 1,
            "sent_at": at(4),
            "readings": [*lanes, sonde],
        }
    ).encode()


async def _rows(influx: InfluxServer, query: str) -> list[list[object]]:
    series = await influx_query(influx.url, query, database=DATABASE, auth=(USER, PASSWORD))
    return [row for s in series for row in s.values]


async def test_every_influx_call_of_the_ingest_sends_the_credentials(
    secured: InfluxServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    # Auth is really on: a request without credentials is refused.
    with pytest.raises(InfluxError) as refused:
        await influx_query(secured.url, "SHOW DATABASES")
    assert refused.value.status == 401
    config = _config(tmp_path, mosquitto, secured)
    settings = load_ingest_config(config)
    service = IngestService(settings)
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(60):
            await service.connected.wait()
            outcome = await service.submit(f"ecotel/v1/{SITE}/{GW}/readings", _message())
            assert outcome.refused is None
            assert outcome.stored == 5
            # The recomputer reads the lanes back and writes the site's flow per window.
            query = (
                f"SELECT vehicles FROM traffic_flow_site WHERE \"window\" = '{Window.QUARTER_HOUR}'"
            )
            for _ in range(300):
                if flow := await _rows(secured, query):
                    break
                await asyncio.sleep(0.2)
        assert [row[1] for row in flow] == [80.0]
        assert service.derive.failures == 0
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    # What a restarted ingest reads back to go on judging stuck values and spikes.
    checker = QualityChecker(settings.validation.quality)
    assert await load_quality_history(checker, settings.influx, 86_400) == 3
    # The operator's command: per-reading points of a past range deleted and rewritten.
    await _rows(secured, "DELETE FROM water_quality_class")
    derive = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipelines",
        "--config",
        str(config),
        "derive",
        "--from",
        T0.isoformat(),
        "--to",
        (T0 + timedelta(hours=1)).isoformat(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await derive.communicate()
    assert derive.returncode == 0, (out + err).decode()
    assert await _rows(secured, 'SELECT "class", device FROM water_quality_class') == [
        [(T0 + timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ"), 1.0, "sonde-1"]
    ]
