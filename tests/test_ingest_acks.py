"""At-least-once into InfluxDB: kill -9 the ingest with readings received but not yet written.

The ingest holds each PUBACK until the message's readings are in InfluxDB, so
the broker redelivers what the killed process had taken in, and the restarted
ingest stores it; a reading maps to one point, so nothing is stored twice.
"""

import asyncio
import json
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.influx_query import influx_query

MESSAGES, PER_MESSAGE = 200, 20
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _message(seq: int) -> bytes:
    readings = [
        {
            "device": "hydro-1",
            "kind": "hydrology",
            "time": (T0 + timedelta(seconds=seq * PER_MESSAGE + i)).isoformat(),
            "values": {"stage": 1.0 + i / 100, "discharge": 50.0, "water_temperature": 4.0},
        }
        for i in range(PER_MESSAGE)
    ]
    return json.dumps(
        {
            "schema": 1,
            "gateway": "gw-ack",
            "site": "site",
            "seq": seq,
            "sent_at": T0.isoformat(),
            "readings": readings,
        }
    ).encode()


async def _count(url: str, database: str) -> int:
    try:
        series = await influx_query(url, "SELECT count(stage) FROM hydrology", database=database)
    except Exception:
        return 0
    return int(series[0].values[0][1]) if series else 0


async def _resume_session(port: int, client_id: str) -> int:
    count = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False) as c:
        try:
            async with asyncio.timeout(2.0):
                async for _ in c.messages:
                    count += 1
        except TimeoutError:
            pass
    return count


async def test_kill_9_of_the_ingest_loses_no_reading(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = f"acks_{uuid.uuid4().hex[:8]}"
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = tmp_path / "ingest.toml"
        # A long batch delay keeps received readings unwritten when the kill comes.
        config.write_text(
            f'[mqtt]\nport = {broker.port}\nclient_id = "ingest-acks"\n'
            f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{database}"\n'
            f"[batch]\nmax_delay_s = 3.0\n"
            f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n',
            encoding="utf-8",
        )
        command = [sys.executable, "-m", "pipelines", "--config", str(config), "run"]
        first = await asyncio.create_subprocess_exec(*command)
        # Wait for its persistent session, so that the broker queues for it from now on.
        await asyncio.sleep(2.0)
        async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
            for seq in range(MESSAGES):
                await publisher.publish(wire.readings_topic("site", "gw-ack"), _message(seq), qos=1)
        await asyncio.sleep(1.0)  # all delivered to the ingest, none written yet
        assert await _count(influxdb.url, database) == 0, "the batch delay did not hold the write"
        first.send_signal(signal.SIGKILL)
        await first.wait()

        second = await asyncio.create_subprocess_exec(*command)
        try:
            async with asyncio.timeout(60):
                while await _count(influxdb.url, database) < MESSAGES * PER_MESSAGE:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
        finally:
            second.send_signal(signal.SIGTERM)
            await second.wait()
        # Every message was acknowledged once stored: resuming the ingest's
        # session gets nothing redelivered.
        redelivered = await _resume_session(broker.port, "ingest-acks")
        assert redelivered == 0
    series = await influx_query(
        influxdb.url, "SELECT stage FROM hydrology", database=database, epoch="ns"
    )
    times = [row[0] for s in series for row in s.values]
    assert len(times) == len(set(times)) == MESSAGES * PER_MESSAGE
