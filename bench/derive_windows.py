"""``python -m bench.derive_windows``: what the derived measurements cost: per reading on the
ingest's hot path, and per window recomputed from a real InfluxDB (figures in docs/analytics.md)."""

import argparse
import asyncio
import statistics
import tempfile
import time
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from deploy.servers import InfluxServer, require_binaries
from devices import KindValues, Reading, check_values
from devices.simulators import make_simulator
from pipelines.analytics.energy import Window
from pipelines.config import InfluxSettings, IngestSettings
from pipelines.derive_config import DeriveSettings
from pipelines.derive_points import derived_line
from pipelines.derive_state import WindowKey
from pipelines.derive_windows import DATACENTER, WindowDeriver, keys_for_reading
from pipelines.influx_writer import InfluxWriter
from pipelines.points import Point
from pipelines.stats import IngestStats

SITE = "dc"
CIRCUITS = ("utility", "renewable", "ups_output", "it_load", "cooling")
INTERVAL_S = 10


def _settings(url: str) -> IngestSettings:
    meters = {c: {"device": "m", "circuit": c, "max_power_kw": 5000} for c in CIRCUITS}
    return IngestSettings(
        influx=InfluxSettings(url=url, database="bench_derive"),
        derive=DeriveSettings.model_validate(
            {
                "datacenters": [
                    {
                        "site": SITE,
                        "facility": [meters["utility"]],
                        "it": [meters["ups_output"]],
                        "renewable": [meters["renewable"]],
                        "zones": [
                            {
                                "name": "hall",
                                "it": [meters["it_load"]],
                                "infrastructure": [meters["cooling"]],
                            }
                        ],
                    }
                ]
            }
        ),
    )


def per_reading() -> None:
    settings = _settings("http://127.0.0.1:9").derive
    at = datetime.now(UTC)
    print("per reading, on the ingest's hot path (us, median of 5 runs of 5,000):")
    for kind in ("water_quality", "road_weather", "traffic_detector", "energy_meter", "hydrology"):
        reading = make_simulator(kind, "d", interval_s=10).sample(at)[0]
        values = check_values(kind, reading.channel, reading.values)

        def derive(
            kind: str = kind, reading: Reading = reading, values: KindValues = values
        ) -> None:
            derived_line(
                site=SITE,
                gateway="g",
                device="d",
                channel=reading.channel,
                time=reading.time,
                values=values,
            )
            keys_for_reading(settings, SITE, kind, "m", reading.time)

        runs = timeit.repeat(derive, number=5_000, repeat=5)
        print(f"  {kind:18s} {statistics.median(runs) / 5_000 * 1e6:6.1f}")


async def per_window(url: str) -> None:
    settings = _settings(url)
    day = datetime(2026, 1, 15, tzinfo=UTC) - timedelta(hours=8)  # a local day at UTC+8
    lines = []
    for i in range(86_400 // INTERVAL_S + 200):
        at = day - timedelta(minutes=15) + timedelta(seconds=INTERVAL_S * i)
        ns = int(at.timestamp()) * 1_000_000_000
        for circuit, step in zip(CIRCUITS, (5.0, 2.0, 4.0, 3.8, 0.8), strict=True):
            lines.append(
                f"energy_meter,circuit={circuit},device=m,gateway=g,site={SITE} "
                f"energy_kwh={1000.0 + step * i:.1f} {ns}"
            )
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=120) as http:
        await http.post("/query", data={"q": "CREATE DATABASE bench_derive"})
        for start in range(0, len(lines), 20_000):
            body = "\n".join(lines[start : start + 20_000])
            (
                await http.post("/write", params={"db": "bench_derive"}, content=body)
            ).raise_for_status()
    print(f"per window, from {len(lines):,} counter readings ({INTERVAL_S} s, 5 circuits) (ms):")
    windows = WindowDeriver(settings.derive, settings.influx)

    async def refused(*_: object) -> None:
        raise RuntimeError("refused")

    async with InfluxWriter(settings.influx, settings.batch, IngestStats(), refused) as writer:
        for window in Window:
            key = WindowKey(DATACENTER, SITE, window, day)
            timings: dict[str, list[float]] = {"compute": [], "delete": [], "write": []}
            for _ in range(5):
                t0 = time.perf_counter()
                out = await windows.compute(key)
                t1 = time.perf_counter()
                for measurement, tags, at in out.deletes:
                    await windows.delete(measurement, tags, at)
                t2 = time.perf_counter()
                done = asyncio.Event()
                await writer.put(
                    [Point(x, "bench", "bench", reading=False) for x in out.lines], done.set
                )
                writer.flush_soon()
                await done.wait()
                t3 = time.perf_counter()
                timings["compute"].append(t1 - t0)
                timings["delete"].append(t2 - t1)
                timings["write"].append(t3 - t2)
            figures = ", ".join(
                f"{name} {statistics.median(v) * 1e3:.0f}" for name, v in timings.items()
            )
            print(f"  {window.value:6s} {figures} (deletes: {len(out.deletes)})")


async def _main() -> None:
    per_reading()
    require_binaries()
    with tempfile.TemporaryDirectory() as tmp:
        async with InfluxServer(Path(tmp)) as influx:
            await per_window(influx.url)


def main() -> None:
    argparse.ArgumentParser(prog="python -m bench derive", description=__doc__).parse_args()
    asyncio.run(_main())


if __name__ == "__main__":
    main()
