"""A spool whose disk is full holds back instead of wedging the ingest; a writer that fails
stops the ingest (non-zero exit) instead of leaving it ready-looking and idle."""

import asyncio
import signal
import sqlite3
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import BatchSettings, InfluxSettings
from pipelines.influx_query import influx_query
from pipelines.influx_writer import InfluxError, InfluxWriter, Point, WriterFailed
from pipelines.line_protocol import timestamp_ns
from pipelines.stats import IngestStats
from tests.hydrology_load import stored_stages
from tests.test_ingest_acks import PER_MESSAGE, T0
from tests.test_ingest_spool import _publish, _spooled_points, _until, spooling_ingest

# Pages of 4 KiB: the schema and a batch or two of 100 points, then "disk full".
_MAX_PAGES = 16
_FULL_DISK_RUN = (
    "import sys; from pipelines.spool import Spool; "
    f"Spool.max_pages = {_MAX_PAGES}; "
    "from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _small_batches(config: Path) -> None:
    """A few batches fit the limited spool before it is full, so both paths are taken."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[batch]\n", "[batch]\nmax_points = 100\n"), encoding="utf-8")


def _log(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


async def _stop(ingest: asyncio.subprocess.Process) -> None:
    if ingest.returncode is None:
        ingest.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await ingest.wait()


async def _in_log(path: Path, text: str) -> None:
    async def found() -> bool:
        return text in await asyncio.to_thread(_log, path)

    await _until(found, f"{text!r} in the ingest's log")


@pytest.mark.slow
async def test_full_spool_disk_holds_back_and_everything_is_written_once(tmp_path: Path) -> None:
    database = f"full_{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool.sqlite3"
    log = tmp_path / "ingest.log"
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        InfluxServer(tmp_path / "influx") as influx,
    ):
        command = await spooling_ingest(tmp_path, broker, influx, "ingest-full", database)
        await asyncio.to_thread(_small_batches, Path(command[-1]))
        # The real CLI, in its own process, with the spool's file limited (a full disk).
        command = [sys.executable, "-c", _FULL_DISK_RUN, *command[3:]]
        with log.open("w", encoding="utf-8") as stderr:
            ingest = await asyncio.create_subprocess_exec(*command, stderr=stderr)
        try:
            await _publish(broker.port, range(20))

            async def first_written() -> bool:
                return await stored_stages(influx.url, database) == 20 * PER_MESSAGE

            await _until(first_written, "the first 400 readings in InfluxDB")

            await influx.stop()
            await _publish(broker.port, range(20, 120))
            await _in_log(log, "database or disk is full")
            text = await asyncio.to_thread(_log, log)
            full = next(line for line in text.splitlines() if "database or disk is full" in line)
            assert "cannot spool" in full
            assert str(spool) in full
            assert await asyncio.to_thread(_spooled_points, spool) > 0
            assert "task failed" not in text

            async def retrying() -> bool:
                text = await asyncio.to_thread(_log, log)
                return text.split("database or disk is full", 1)[1].count("retrying in") >= 3

            # Alive and holding its batch: it keeps trying InfluxDB while the spool is full.
            await _until(retrying, "the writer to retry while the spool is full")
            await influx.start()

            async def all_written() -> bool:
                return await stored_stages(influx.url, database) == 120 * PER_MESSAGE

            await _until(all_written, "all 2,400 readings in InfluxDB")

            async def spool_empty() -> bool:
                return await asyncio.to_thread(_spooled_points, spool) == 0

            await _until(spool_empty, "the spool to drain")
            # Still writing after all that: one more message goes straight through.
            await _publish(broker.port, range(120, 121))

            async def one_more() -> bool:
                return await stored_stages(influx.url, database) == 121 * PER_MESSAGE

            await _until(one_more, "a message published after the drain in InfluxDB")
        finally:
            await _stop(ingest)
        assert ingest.returncode == 0, _log(log)
        text = _log(log)
        assert "spool drained" in text
        assert "task failed" not in text
        # Exactly once: a point written twice would overwrite itself, one lost would be missing.
        assert await stored_stages(influx.url, database) == 121 * PER_MESSAGE


@pytest.mark.slow
async def test_spool_that_takes_no_delete_is_still_written_and_emptied_later(
    tmp_path: Path,
) -> None:
    database = f"undel_{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool.sqlite3"
    log = tmp_path / "ingest.log"
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        InfluxServer(tmp_path / "influx") as influx,
    ):
        command = await spooling_ingest(tmp_path, broker, influx, "ingest-undel", database)
        await asyncio.to_thread(_small_batches, Path(command[-1]))
        with log.open("w", encoding="utf-8") as stderr:
            ingest = await asyncio.create_subprocess_exec(*command, stderr=stderr)
        locker: sqlite3.Connection | None = None
        try:
            await _publish(broker.port, range(1))

            async def first_written() -> bool:
                return await stored_stages(influx.url, database) == PER_MESSAGE

            await _until(first_written, "the first 20 readings in InfluxDB")
            await influx.stop()
            await _publish(broker.port, range(1, 11))

            async def all_spooled() -> bool:
                return await asyncio.to_thread(_spooled_points, spool) >= 10 * PER_MESSAGE

            await _until(all_spooled, "200 readings in the spool")
            # Another process holds the spool past its busy wait: no delete goes through.
            locker = sqlite3.connect(spool, timeout=0, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")
            await influx.start()

            async def all_written() -> bool:
                return await stored_stages(influx.url, database) == 11 * PER_MESSAGE

            # Every batch is written although the first one could not be deleted.
            await _until(all_written, "all 220 readings in InfluxDB")
            assert await asyncio.to_thread(_spooled_points, spool) >= 10 * PER_MESSAGE
            await _in_log(log, "cannot remove a written batch")
            locker.close()
            locker = None

            async def spool_empty() -> bool:
                return await asyncio.to_thread(_spooled_points, spool) == 0

            await _until(spool_empty, "the spool to be emptied once it takes deletes")
        finally:
            if locker is not None:
                locker.close()
            await _stop(ingest)
        assert ingest.returncode == 0, _log(log)
        text = _log(log)
        assert str(spool) in text
        assert "database is locked" in text
        assert "spool drained" in text
        assert await stored_stages(influx.url, database) == 11 * PER_MESSAGE


async def _database_exists(url: str, database: str) -> bool:
    series = await influx_query(url, "SHOW DATABASES")
    return any(row[0] == database for s in series for row in s.values)


def _dead_letters(path: Path, reason: str) -> int:
    with sqlite3.connect(path) as db:
        return int(
            db.execute("SELECT count(*) FROM dead_letters WHERE reason = ?", (reason,)).fetchone()[
                0
            ]
        )


@pytest.mark.slow
async def test_a_failing_writer_stops_the_ingest_and_a_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    database = f"fail_{uuid.uuid4().hex[:8]}"
    dead = tmp_path / "dead.sqlite3"
    log = tmp_path / "ingest.log"
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        InfluxServer(tmp_path / "influx") as influx,
    ):
        command = await spooling_ingest(tmp_path, broker, influx, "ingest-fail", database)
        with log.open("w", encoding="utf-8") as stderr:
            ingest = await asyncio.create_subprocess_exec(*command, stderr=stderr)
        locker: sqlite3.Connection | None = None
        try:

            async def created() -> bool:
                return await _database_exists(influx.url, database)

            await _until(created, "the ingest to create its database")
            # InfluxDB will refuse every stage of the message: a string field came first.
            first = timestamp_ns(T0 + timedelta(seconds=5 * PER_MESSAGE))
            async with httpx.AsyncClient(base_url=influx.url) as http:
                answer = await http.post(
                    "/write",
                    params={"db": database},
                    content=f'hydrology,device=other stage="text" {first}'.encode(),
                )
            assert answer.status_code == 204, answer.text
            # Another process holds the dead-letter store past its busy wait.
            locker = sqlite3.connect(dead, timeout=0, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")
            await _publish(broker.port, range(5, 6))
            async with asyncio.timeout(60):
                await ingest.wait()
        finally:
            if locker is not None:
                locker.close()
            await _stop(ingest)
        text = _log(log)
        assert ingest.returncode == 1, text
        assert "the influx-writer task failed" in text
        assert "Traceback" in text
        assert "database is locked" in text

        # Restarted (as a supervisor would): the unacknowledged message comes back.
        log = tmp_path / "restarted.log"
        with log.open("w", encoding="utf-8") as stderr:
            ingest = await asyncio.create_subprocess_exec(*command, stderr=stderr)
        try:

            async def kept() -> bool:
                return await asyncio.to_thread(_dead_letters, dead, "influx_refused") >= (
                    PER_MESSAGE
                )

            await _until(kept, "the refused readings in the dead-letter store")
        finally:
            await _stop(ingest)
        assert ingest.returncode == 0, _log(log)
        assert _dead_letters(dead, "influx_refused") == PER_MESSAGE


async def test_a_failed_writer_is_not_ready_and_watch_raises(
    influx_db: str, influxdb: InfluxServer
) -> None:
    """What the service builds on: /readyz asks reachable(), run() awaits watch()."""

    async def store_gone(points: list[Point], error: InfluxError) -> None:
        raise sqlite3.OperationalError("database is locked")

    influx = InfluxSettings(url=influxdb.url, database=influx_db)
    async with InfluxWriter(
        influx, BatchSettings(max_delay_s=0.05), IngestStats(), store_gone
    ) as writer:
        watching = asyncio.create_task(writer.watch())
        assert await writer.reachable() is None
        assert await writer.write_lines(['conflict value="text" 1']) is None
        await writer.put([Point("conflict value=1.0 2", "test", "t")])
        with pytest.raises(WriterFailed, match=r"influx-writer failed.*database is locked"):
            async with asyncio.timeout(30):
                await watching
        problem = await writer.reachable()
        assert problem is not None
        assert problem.startswith("not writing: influx-writer failed")
