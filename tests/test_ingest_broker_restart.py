"""A broker that restarts after a while: the ingest's waits between attempts stay within
``mqtt.reconnect_max_s``, so it is back soon after the broker and takes the queue it kept."""

import asyncio
import re
import sys
import uuid
from pathlib import Path

import pytest

from deploy.servers import InfluxServer, MosquittoServer
from tests.hydrology_load import stored_stages
from tests.test_ingest_acks import PER_MESSAGE
from tests.test_ingest_spool import _publish, _until, spooling_ingest

RECONNECT_MAX_S = 2.0


@pytest.mark.slow
async def test_the_ingest_keeps_trying_often_while_the_broker_is_away(tmp_path: Path) -> None:
    database = f"restart_{uuid.uuid4().hex[:8]}"
    log = tmp_path / "ingest.log"
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        InfluxServer(tmp_path / "influx") as influx,
    ):
        command = await spooling_ingest(tmp_path, broker, influx, "ingest-restart", database)
        config = tmp_path / "ingest.toml"
        text = config.read_text(encoding="utf-8")
        config.write_text(
            text.replace("[mqtt]\n", f"[mqtt]\nreconnect_max_s = {RECONNECT_MAX_S}\n"),
            encoding="utf-8",
        )
        with log.open("wb") as out:
            ingest = await asyncio.create_subprocess_exec(*command, stderr=out)
        try:
            await _publish(broker.port, range(5))

            async def first_written() -> bool:
                return await stored_stages(influx.url, database) == 5 * PER_MESSAGE

            await _until(first_written, "the first readings in InfluxDB")
            await broker.stop()
            # Long enough for the old doubling (0.5, 1, 2, 4, 8 s...) to pass the ceiling.
            await asyncio.sleep(4 * RECONNECT_MAX_S + 1)
            await broker.start()
            await _publish(broker.port, range(5, 10))

            async def all_written() -> bool:
                return await stored_stages(influx.url, database) == 10 * PER_MESSAGE

            await _until(all_written, "the readings published after the broker's return")
        finally:
            ingest.terminate()
            async with asyncio.timeout(30):
                await ingest.wait()
    said = log.read_text(encoding="utf-8", errors="replace")
    waits = [float(w) for w in re.findall(r"reconnecting in ([0-9.]+) s", said)]
    assert len(waits) >= 4, said[-2_000:]
    assert max(waits) <= RECONNECT_MAX_S, waits
    assert waits[-1] == RECONNECT_MAX_S, waits
    print(f"waits while the broker was away: {waits}", file=sys.stderr)
