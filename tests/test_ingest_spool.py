"""InfluxDB down: the ingest spools to disk, acknowledges, survives kill -9, and catches up when InfluxDB returns."""

import asyncio
import json
import signal
import sqlite3
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiomqtt

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.line_protocol import timestamp_ns
from tests.hydrology_load import hydrology_message, stored_stages
from tests.test_ingest_acks import PER_MESSAGE, T0, _resume_session

TOPIC = wire.readings_topic("site", "gw-ack")


def _spooled_points(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT total(count) FROM batches").fetchone()[0])


def _spooled_readings(path: Path, first_seq: int) -> int:
    """Hydrology readings of messages ``first_seq`` on in the spool. Not its total: it may also
    hold the ingest's stats points, and the first batch, visible to a query but answered 500
    because InfluxDB was being stopped before its response (it is written again: harmless)."""
    if not path.exists():
        return 0
    since = timestamp_ns(T0 + timedelta(seconds=first_seq * PER_MESSAGE))
    with sqlite3.connect(path) as db:
        bodies = [row[0] for row in db.execute("SELECT points FROM batches")]
    return len(
        {
            line
            for body in bodies
            for line, kind, _, _ in json.loads(body)
            if kind == "hydrology" and int(line.rsplit(" ", 1)[1]) >= since
        }
    )


async def _publish(port: int, seqs: range) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="spool-publisher") as client:
        for seq in seqs:
            await client.publish(TOPIC, hydrology_message("gw-ack", seq, PER_MESSAGE, T0), qos=1)


async def _until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(60):
            while not await predicate():  # noqa: ASYNC110  (polling another process)
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def spooling_ingest(
    tmp_path: Path, broker: MosquittoServer, influx: InfluxServer, client_id: str, database: str
) -> list[str]:
    """The command of an ingest that spools to ``tmp_path``/spool.sqlite3 and retries fast,
    its persistent session created before anything is published."""
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {broker.port}\nclient_id = "{client_id}"\n'
        f'[influx]\nurl = "{influx.url}"\ndatabase = "{database}"\ntimeout_s = 2.0\n'
        "[batch]\nmax_delay_s = 0.1\nretry_max_s = 1.0\n"
        f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n'
        f'[spool]\npath = "{tmp_path / "spool.sqlite3"}"\n',
        encoding="utf-8",
    )
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=client_id, clean_session=False
    ) as session:
        await session.subscribe(wire.READINGS_FILTER, qos=1)
    return [sys.executable, "-m", "pipelines", "run", "--config", str(config)]


async def test_influxdb_outage_is_spooled_and_survives_a_kill_9(tmp_path: Path) -> None:
    database = f"spool_{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool.sqlite3"
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        InfluxServer(tmp_path / "influx") as influx,
    ):
        command = await spooling_ingest(tmp_path, broker, influx, "ingest-spool", database)
        ingest = await asyncio.create_subprocess_exec(*command)
        try:
            await _publish(broker.port, range(50))

            async def first_written() -> bool:
                return await stored_stages(influx.url, database) == 50 * PER_MESSAGE

            await _until(first_written, "the first 1,000 readings in InfluxDB")

            await influx.stop()
            await _publish(broker.port, range(50, 150))

            async def all_spooled() -> bool:
                return await asyncio.to_thread(_spooled_readings, spool, 50) == 100 * PER_MESSAGE

            await _until(all_spooled, "2,000 readings in the spool")
            ingest.send_signal(signal.SIGKILL)
            await ingest.wait()
            # The broker owes the killed ingest nothing: the spool had taken it all.
            assert await _resume_session(broker.port, "ingest-spool") == 0

            await influx.start()
            ingest = await asyncio.create_subprocess_exec(*command)

            async def all_written() -> bool:
                return await stored_stages(influx.url, database) == 150 * PER_MESSAGE

            await _until(all_written, "all 3,000 readings in InfluxDB")

            async def spool_empty() -> bool:
                return await asyncio.to_thread(_spooled_points, spool) == 0

            await _until(spool_empty, "the spool to drain")
        finally:
            if ingest.returncode is None:
                ingest.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    await ingest.wait()
        assert ingest.returncode == 0
        # Polled, as stored_stages reads a failed query as 0: CI once saw 0 here with all
        # 3,000 in the database (found in it afterwards), a query that failed once.
        await _until(all_written, "all 3,000 readings in InfluxDB after the stop")
