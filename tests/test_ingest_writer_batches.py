"""The ingest's writer closes a batch when it is full, when its first point has waited
``max_delay_s``, or when the stream pauses for ``max_quiet_s``; on a real InfluxDB."""

import asyncio

from deploy.servers import InfluxServer
from pipelines.config import BatchSettings, InfluxSettings
from pipelines.influx_writer import InfluxWriter
from pipelines.points import Chunk, Point
from pipelines.stats import IngestStats


async def _refused(points: list[Point], error: Exception) -> None:
    raise AssertionError(f"InfluxDB refused points: {error}")


def _chunk(i: int) -> Chunk:
    line = f"hydrology,device=d,gateway=g,site=s stage={i}.5 {1_790_000_000 + i}000000000"
    return Chunk.of([line], ["hydrology"], "ecotel/v1/s/g/readings")


async def _written_batches(
    influxdb: InfluxServer, database: str, batch: BatchSettings, gap_s: float
) -> int:
    """Put three points ``gap_s`` apart, then pause; return the write batches once all are done."""
    stats = IngestStats()
    settings = InfluxSettings(url=influxdb.url, database=database, create_database=False)
    async with InfluxWriter(settings, batch, stats, _refused) as writer:
        done = asyncio.Event()
        for i in range(3):
            await writer.put_chunks([_chunk(i)], done.set if i == 2 else lambda: None)
            await asyncio.sleep(gap_s)
        # Far below max_delay_s (60 s): only the pause can have closed the batch.
        async with asyncio.timeout(30):
            await done.wait()
    assert stats.written == 3
    return stats.write_batches


async def test_a_pause_in_the_stream_writes_the_batch_without_waiting_for_its_delay(
    influxdb: InfluxServer, influx_db: str
) -> None:
    batch = BatchSettings(max_delay_s=60, max_quiet_s=1.0)
    # Points closer together than max_quiet_s share one write.
    assert await _written_batches(influxdb, influx_db, batch, gap_s=0.02) == 1


async def test_points_further_apart_than_the_quiet_limit_are_written_apart(
    influxdb: InfluxServer, influx_db: str
) -> None:
    batch = BatchSettings(max_delay_s=60, max_quiet_s=0.02)
    assert await _written_batches(influxdb, influx_db, batch, gap_s=0.3) == 3
