"""``derive`` over a range while the ingest keeps writing: a per-reading point the ingest writes
during the recomputation is never deleted by it. Against a real InfluxDB."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest

import pipelines.derive_range as derive_range
from deploy.servers import InfluxServer
from devices import check_values
from devices.simulators import make_simulator
from pipelines.config import InfluxSettings, IngestSettings
from pipelines.derive_points import WATER_CLASS, derived_line
from pipelines.derive_range import recompute_range
from pipelines.derive_windows import WindowDeriver
from pipelines.influx_query import influx_query
from pipelines.influx_writer import InfluxWriter
from pipelines.line_protocol import to_line
from pipelines.stats import IngestStats

SITE, GATEWAY = "Tuotuohe", "gw-live"
START = datetime(2026, 7, 1, tzinfo=UTC)


def _reading_and_derived(device: str, at: datetime) -> list[str]:
    """What the ingest writes for one water-quality reading: its point and its class."""
    (reading,) = make_simulator("water_quality", device, seed=3).sample(at)
    values = check_values(reading.kind, reading.channel, reading.values)
    derived = derived_line(
        site=SITE, gateway=GATEWAY, device=device, channel=None, time=reading.time, values=values
    )
    assert derived is not None
    return [to_line(SITE, GATEWAY, reading, values), derived]


async def _write(url: str, db: str, lines: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
        response = await http.post("/write", params={"db": db}, content="\n".join(lines))
        assert response.status_code == 204, response.text


async def test_a_point_the_ingest_derives_during_a_range_recomputation_stays(
    influxdb: InfluxServer, influx_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write(influxdb.url, influx_db, _reading_and_derived("wq-old", START))
    live_at = START + timedelta(minutes=30)
    read = derive_range._reading_lines

    async def read_then_the_ingest_writes(*args: object) -> list[str]:
        lines: list[str] = await read(*args)  # type: ignore[arg-type]
        if args[2] == "water_quality":
            # The running ingest stores a reading and its class just after this read.
            await _write(influxdb.url, influx_db, _reading_and_derived("wq-live", live_at))
        return lines

    monkeypatch.setattr(derive_range, "_reading_lines", read_then_the_ingest_writes)
    settings = IngestSettings(
        influx=InfluxSettings(url=influxdb.url, database=influx_db, create_database=False)
    )

    async def refused(points: object, error: Exception) -> None:
        raise AssertionError(f"InfluxDB refused: {error}")

    async with InfluxWriter(settings.influx, settings.batch, IngestStats(), refused) as writer:
        report = await recompute_range(
            settings.derive,
            WindowDeriver(settings.derive, settings.influx),
            writer,
            START,
            START + timedelta(hours=1),
        )
    assert report.readings == 1  # the old reading, read before the live one came
    series = await influx_query(
        influxdb.url,
        f'SELECT "class" FROM "{WATER_CLASS}" GROUP BY "device"',
        database=influx_db,
    )
    # Both classes: the recomputed one, and the live one, not deleted after the fact.
    assert sorted(s.tags["device"] for s in series) == ["wq-live", "wq-old"]
