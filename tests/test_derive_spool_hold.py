"""Traffic readings spooled while InfluxDB is down: the ingest holds the shared derive file, so no
worker computes their window without them, and recomputes it once they are written."""

import asyncio
import json
import signal
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.analytics.energy import Window
from pipelines.derive_state import DirtyWindows
from pipelines.influx_query import influx_query
from pipelines.influx_writer import InfluxError
from tests.test_ingest_spool import _until, spooling_ingest

SITE, GATEWAY = "G109 K3012", "rsu-1"
LANES = ("L1", "L2", "L3", "L4")
# A quarter hour well in the past (highway windows follow UTC+8: whole hours match).
T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
NOW = dict.fromkeys(Window, timedelta(0))


def _message(seq: int) -> bytes:
    readings = [
        {
            "device": "radar-1",
            "kind": "traffic_detector",
            "channel": lane,
            "time": (T0 + timedelta(minutes=seq)).isoformat(),
            "values": {"interval_s": 60.0, "volume": 20.0, "mean_speed": 80.0, "occupancy": 10.0},
        }
        for lane in LANES
    ]
    body = {
        "schema": 1,
        "gateway": GATEWAY,
        "site": SITE,
        "seq": seq,
        "sent_at": T0.isoformat(),
        "readings": readings,
    }
    return json.dumps(body).encode()


def _holders(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT holder FROM holds")]


@pytest.mark.slow
async def test_spooled_readings_hold_their_windows_until_written(tmp_path: Path) -> None:
    database = f"hold_{uuid.uuid4().hex[:8]}"
    derive_file = tmp_path / "derive.sqlite3"
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        InfluxServer(tmp_path / "influx") as influx,
    ):
        command = await spooling_ingest(tmp_path, broker, influx, "ingest-hold", database)
        ingest = await asyncio.create_subprocess_exec(*command)
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port) as gateway:
                await gateway.publish(wire.readings_topic(SITE, GATEWAY), _message(0), qos=1)

                async def first_stored() -> bool:
                    try:
                        series = await influx_query(
                            influx.url,
                            "SELECT count(volume) FROM traffic_detector",
                            database=database,
                        )
                    except InfluxError:  # the ingest has not created the database yet
                        return False
                    return bool(series) and series[0].values[0][1] == len(LANES)

                await _until(first_stored, "the first message in InfluxDB")
                await influx.stop()
                for seq in range(1, 5):
                    await gateway.publish(wire.readings_topic(SITE, GATEWAY), _message(seq), qos=1)

            async def held() -> bool:
                return await asyncio.to_thread(_holders, derive_file) == ["ingest-hold"]

            await _until(held, "the ingest's hold on the derive file")
            # Another worker of the group, on the same file: nothing may be claimed now.
            async with DirtyWindows(derive_file) as other:
                assert await other.due(NOW), "the spooled readings' windows are marked"
                assert await other.claim(NOW) is None

            await influx.start()

            async def recomputed() -> bool:
                try:
                    series = await influx_query(
                        influx.url,
                        f"SELECT flow_vph, vehicles, lanes FROM traffic_flow_site "
                        f"WHERE \"window\" = '15min' AND time = '{T0.isoformat()}'",
                        database=database,
                    )
                except InfluxError:  # InfluxDB still starting
                    return False
                return bool(series) and series[0].values[0][1:] == [4 * 1200.0, 400.0, 4.0]

            # Every lane's 5 counts of 20 vehicles a minute: 1,200 vehicles/h per lane.
            await _until(recomputed, "the window recomputed with every spooled reading")
            assert await asyncio.to_thread(_holders, derive_file) == []
        finally:
            ingest.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await ingest.wait()
        assert ingest.returncode == 0
