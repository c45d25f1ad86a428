"""Windowed figures recomputed from a real InfluxDB: hand-worked PUE, pPUE, REF and WUE; a counter
rollover, a meter replacement and a missing interval; a late reading that blanks a stored figure;
the ``derive`` command and its configuration errors."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from deploy.servers import InfluxServer
from devices import KINDS
from pipelines.analytics.energy import Window
from pipelines.config import InfluxSettings, IngestSettings
from pipelines.derive_config import DeriveSettings
from pipelines.derive_range import rewrite_window
from pipelines.derive_state import WindowKey
from pipelines.derive_windows import (
    DATACENTER,
    TRAFFIC,
    WindowDeriver,
    keys_for_reading,
    window_kinds,
)
from pipelines.influx_query import influx_query
from pipelines.influx_writer import InfluxWriter
from pipelines.stats import IngestStats

SITE = "Gonghe DC1"
T0 = datetime(2026, 1, 15, 2, 0, tzinfo=UTC)  # 10:00 at UTC+8
STEP = timedelta(minutes=5)

DERIVE: dict[str, Any] = {
    "datacenters": [
        {
            "site": SITE,
            "facility": [{"device": "m1", "circuit": "utility", "max_power_kw": 1000}],
            "it": [
                {
                    "device": "m1",
                    "circuit": "ups_output",
                    "max_power_kw": 800,
                    "counter_max_kwh": 1000,
                }
            ],
            "renewable": [{"device": "m1", "circuit": "renewable", "max_power_kw": 1000}],
            "water": [
                {
                    "measurement": "water_meter",
                    "device": "wm-1",
                    "field": "volume_m3",
                    "litres_per_unit": 1000,
                    "max_flow_l_per_h": 100_000,
                }
            ],
            "zones": [
                {
                    "name": "hall-a",
                    "it": [{"device": "m1", "circuit": "it_load", "max_power_kw": 800}],
                    "infrastructure": [{"device": "m1", "circuit": "cooling", "max_power_kw": 500}],
                }
            ],
        }
    ]
}


@pytest.mark.parametrize("derive", [{}, DERIVE], ids=["no datacenter", "datacenter"])
def test_a_kind_outside_window_kinds_has_no_windows(derive: dict[str, Any]) -> None:
    # The ingest asks keys_for_reading only about window_kinds: the two must agree.
    settings = DeriveSettings.model_validate(derive)
    kinds = window_kinds(settings)
    for kind in set(KINDS) | {"water_meter"}:
        for device in ("m1", "wm-1"):
            keys = keys_for_reading(settings, SITE, kind, device, T0)
            assert bool(keys) <= (kind in kinds), kind
    assert ("water_meter" in kinds) == bool(derive)


def _ns(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 1_000


def _counter(circuit: str, kwh: float, at: datetime) -> str:
    return (
        f"energy_meter,circuit={circuit},device=m1,gateway=gw,site=Gonghe\\ DC1 "
        f"energy_kwh={kwh!r},active_power_kw=1.0 {_ns(at)}"
    )


def _counters(skip_utility: frozenset[int] = frozenset(), reset_at: int | None = None) -> list[str]:
    """Readings every 5 min from 09:50 to 11:20 local (i = -2..16).

    Per 5 min: utility 12.5 kWh, UPS output 10 (its counter wraps at 1000 near 10:20),
    renewable 5, IT load 9, cooling 2.25, water 0.0216 m3 (21.6 L).
    """
    lines = []
    for i in range(-2, 17):
        at = T0 + i * STEP
        utility = 5_000 + 12.5 * i
        if reset_at is not None and i >= reset_at:
            utility = 0.5 + 12.5 * (i - reset_at)  # a new meter, starting near 0
        if i not in skip_utility:
            lines.append(_counter("utility", utility, at))
        lines.append(_counter("ups_output", (950 + 10.0 * i) % 1000, at))
        lines.append(_counter("renewable", 300 + 5.0 * i, at))
        lines.append(_counter("it_load", 700 + 9.0 * i, at))
        lines.append(_counter("cooling", 100 + 2.25 * i, at))
        lines.append(
            f"water_meter,device=wm-1,gateway=gw,site=Gonghe\\ DC1 volume_m3={10 + 0.0216 * i!r} "
            f"{_ns(at)}"
        )
    return lines


@pytest_asyncio.fixture
async def deriver(
    influxdb: InfluxServer, influx_db: str
) -> AsyncIterator[tuple[WindowDeriver, InfluxWriter]]:
    settings = IngestSettings(
        influx=InfluxSettings(url=influxdb.url, database=influx_db, create_database=False),
        derive=DeriveSettings.model_validate(DERIVE),
    )
    writer = InfluxWriter(settings.influx, settings.batch, IngestStats(), _refused)
    async with writer:
        yield WindowDeriver(settings.derive, settings.influx), writer


async def _refused(points: object, error: Exception) -> None:
    raise AssertionError(f"InfluxDB refused derived points: {error}")


async def _write(url: str, db: str, lines: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
        response = await http.post("/write", params={"db": db}, content="\n".join(lines))
        assert response.status_code == 204, response.text


async def _figures(
    url: str, db: str, measurement: str, window: str = "15min"
) -> dict[datetime, dict[str, Any]]:
    series = await influx_query(
        url,
        f'SELECT * FROM "{measurement}" WHERE "window" = \'{window}\'',
        database=db,
    )
    found = {}
    for s in series:
        for row in s.rows():
            at = datetime.fromisoformat(row.pop("time").replace("Z", "+00:00"))
            found[at] = {k: v for k, v in row.items() if v is not None}
    return found


async def _derive_quarters(deriver: WindowDeriver, writer: InfluxWriter) -> None:
    for q in range(4):
        key = WindowKey(DATACENTER, SITE, Window.QUARTER_HOUR, T0 + q * 3 * STEP)
        await rewrite_window(deriver, writer, key)
    await rewrite_window(deriver, writer, WindowKey(DATACENTER, SITE, Window.HOUR, T0))


async def test_pue_ppue_ref_and_wue_of_complete_windows_across_a_rollover(
    deriver: tuple[WindowDeriver, InfluxWriter], influxdb: InfluxServer, influx_db: str
) -> None:
    windows, writer = deriver
    await _write(influxdb.url, influx_db, _counters())
    await _derive_quarters(windows, writer)
    pue = await _figures(influxdb.url, influx_db, "pue")
    assert sorted(pue) == [T0 + q * 3 * STEP for q in range(4)]
    for figures in pue.values():
        # 37.5 kWh facility / 30 kWh at the UPS output, also across its wrap at 10:25.
        assert figures["pue"] == pytest.approx(1.25)
        assert figures["facility_kwh"] == pytest.approx(37.5)
        assert figures["it_kwh"] == pytest.approx(30.0)
        assert figures["category"] == 1.0
        assert figures["complete"] == 1.0
        assert figures["issues"] == ""
    hour = await _figures(influxdb.url, influx_db, "pue", "1h")
    assert hour[T0]["pue"] == pytest.approx(1.25)
    assert hour[T0]["facility_kwh"] == pytest.approx(150.0)
    ppue = await _figures(influxdb.url, influx_db, "ppue")
    assert ppue[T0]["ppue"] == pytest.approx(1.25)  # (27 + 6.75) / 27
    ref = await _figures(influxdb.url, influx_db, "ref")
    assert ref[T0]["ref"] == pytest.approx(0.4)  # 15 / 37.5
    wue = await _figures(influxdb.url, influx_db, "wue")
    assert wue[T0]["water_l"] == pytest.approx(194.4 / 3)
    assert wue[T0]["wue"] == pytest.approx(2.16)  # 64.8 L / 30 kWh


async def test_a_replaced_meter_and_a_missing_interval_leave_windows_incomplete(
    deriver: tuple[WindowDeriver, InfluxWriter], influxdb: InfluxServer, influx_db: str
) -> None:
    windows, writer = deriver
    # Utility meter replaced at 10:35 (i = 7); readings at 10:50..11:00 (i = 10..12) missing:
    # a 20-min interval 10:45-11:05 across the 11:00 edge.
    await _write(
        influxdb.url, influx_db, _counters(skip_utility=frozenset({10, 11, 12}), reset_at=7)
    )
    await _derive_quarters(windows, writer)
    pue = await _figures(influxdb.url, influx_db, "pue")
    assert pue[T0]["pue"] == pytest.approx(1.25)
    replaced = pue[T0 + 6 * STEP]
    assert "pue" not in replaced
    assert "facility_kwh" not in replaced
    assert replaced["complete"] == 0.0
    assert replaced["issues"] == "m1:utility:incomplete_interval"
    assert replaced["it_kwh"] == pytest.approx(30.0)
    gap = pue[T0 + 9 * STEP]
    assert "pue" not in gap
    assert gap["complete"] == 0.0
    assert gap["issues"] == "m1:utility:long_interval_across_boundary"
    hour = await _figures(influxdb.url, influx_db, "pue", "1h")
    assert "pue" not in hour[T0]
    assert hour[T0]["complete"] == 0.0


async def test_a_late_reading_that_reveals_a_reset_blanks_the_stored_figure(
    deriver: tuple[WindowDeriver, InfluxWriter], influxdb: InfluxServer, influx_db: str
) -> None:
    windows, writer = deriver
    await _write(influxdb.url, influx_db, _counters())
    await _derive_quarters(windows, writer)
    assert (await _figures(influxdb.url, influx_db, "pue"))[T0]["pue"] == pytest.approx(1.25)
    # A backlog arrives: the utility meter read 0.3 kWh at 10:07 (it had been swapped and back).
    await _write(influxdb.url, influx_db, [_counter("utility", 0.3, T0 + timedelta(minutes=7))])
    await rewrite_window(windows, writer, WindowKey(DATACENTER, SITE, Window.QUARTER_HOUR, T0))
    figures = (await _figures(influxdb.url, influx_db, "pue"))[T0]
    assert "pue" not in figures, "the earlier number must not survive beside complete=0"
    assert figures["complete"] == 0.0


async def test_site_flow_of_a_window(
    deriver: tuple[WindowDeriver, InfluxWriter], influxdb: InfluxServer, influx_db: str
) -> None:
    windows, writer = deriver
    lines = []
    for lane, volume, occupancy in (("1", 100.0, 10.0), ("2", 50.0, 22.0)):
        for i in range(3):
            lines.append(
                f"traffic_detector,device=radar,gateway=gw,lane={lane},site=G109 "
                f"interval_s=300.0,volume={volume},mean_speed=80.0,occupancy={occupancy} "
                f"{_ns(T0 + timedelta(minutes=5 * i + 1))}"
            )
    await _write(influxdb.url, influx_db, lines)
    await rewrite_window(windows, writer, WindowKey(TRAFFIC, "G109", Window.QUARTER_HOUR, T0))
    figures = (await _figures(influxdb.url, influx_db, "traffic_flow_site"))[T0]
    assert figures["flow_vph"] == pytest.approx(1_800)
    assert figures["lanes"] == 2.0
    assert figures["mean_occupancy"] == pytest.approx(16.0)
    assert figures["congestion_level"] == 1.0
    assert figures["complete"] == 1.0


def _config(tmp_path: Path, url: str, db: str, derive: dict[str, Any]) -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(
        f'[influx]\nurl = "{url}"\ndatabase = "{db}"\n\n[derive]\n'
        f"datacenters = {_toml(derive['datacenters'])}\n",
        encoding="utf-8",
    )
    return path


def _toml(value: Any) -> str:
    # Inline TOML for lists of tables: JSON's syntax with '=' for ':' and bare keys.
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )


async def test_derive_command_recomputes_a_past_range(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    await _write(influxdb.url, influx_db, _counters())
    await _write(
        influxdb.url,
        influx_db,
        [
            "road_weather,device=rws,gateway=gw,site=G109 surface_temperature=0.0,"
            'surface_state="wet",water_film=0.2,visibility=150.0,air_temperature=2.0,'
            f"relative_humidity=60.0,wind_speed=3.0 {_ns(T0 + STEP)}"
        ],
    )
    config = _config(tmp_path, influxdb.url, influx_db, DERIVE)
    hour = ["--from", "2026-01-15T10:00:00+08:00", "--to", "2026-01-15T11:00:00+08:00"]
    done = _cli("--config", str(config), "derive", *hour)
    assert done.returncode == 0, done.stderr
    # The day window holds only this hour: written with complete=0, and counted so.
    assert "derived 1 per-reading points and 6 windows (1 incomplete)" in done.stdout
    assert done.stderr.splitlines()[-1] == (
        "derive: readings 1/1 six-hour chunks (1 points); windows 6/6 (Gonghe DC1 6/6), "
        "1 incomplete"
    )
    pue = await _figures(influxdb.url, influx_db, "pue")
    assert [round(f["pue"], 9) for _, f in sorted(pue.items())] == [1.25] * 4
    road = await influx_query(
        influxdb.url, "SELECT icing_risk, speed_limit_kmh FROM road_safety", database=influx_db
    )
    assert road[0].values[0][1:] == [1.0, 60.0]
    # A site named as no reading is: said, not a silent "0 points".
    wrong = _cli("--config", str(config), "derive", *hour, "--site", "gonghe dc1")
    assert wrong.returncode == 0, wrong.stderr
    assert "derived 0 per-reading points and 0 windows" in wrong.stdout
    assert "nothing of 'gonghe dc1' in that range" in wrong.stderr


async def test_derive_stops_at_now_rather_than_write_windows_that_have_not_begun(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, influxdb.url, influx_db, DERIVE)
    now = datetime.now(UTC)
    done = _cli(
        "--config",
        str(config),
        "derive",
        "--from",
        (now - timedelta(hours=1)).isoformat(),
        "--to",
        (now + timedelta(hours=3)).isoformat(),
    )
    assert done.returncode == 0, done.stderr
    assert "is in the future; recomputing up to now" in done.stderr
    assert await _figures(influxdb.url, influx_db, "pue")  # the past hour's windows
    future = await influx_query(
        influxdb.url, "SELECT * FROM pue WHERE time > now()", database=influx_db
    )
    assert future == []


def test_a_bad_meter_map_stops_the_command_naming_the_key(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(DERIVE))
    bad["datacenters"][0]["it"][0]["circuit"] = "cooling"
    config = _config(tmp_path, "http://127.0.0.1:9", "x", bad)
    done = _cli(
        "--config",
        str(config),
        "derive",
        "--from",
        "2026-01-15T00:00:00Z",
        "--to",
        "2026-01-16T00:00:00Z",
    )
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "derive.datacenters.0.it" in done.stderr
    assert "does not measure IT energy" in done.stderr


def test_derive_gives_up_on_an_unreachable_influxdb_naming_the_setting(
    tmp_path: Path, free_port: int
) -> None:
    url = f"http://127.0.0.1:{free_port}"
    config = _config(tmp_path, url, "x", DERIVE)
    done = _cli(
        "--config",
        str(config),
        "derive",
        "--from",
        "2026-01-15T00:00:00Z",
        "--to",
        "2026-01-16T00:00:00Z",
        "--wait",
        "1",
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"InfluxDB at {url} (influx.url, from {config}): did not answer within 1 s" in (
        done.stderr
    )


@pytest.mark.slow
async def test_derive_names_influxdb_when_it_goes_away_mid_run(tmp_path: Path) -> None:
    async with InfluxServer(tmp_path / "influx") as server:
        await influx_query(server.url, 'CREATE DATABASE "ecotel"')
        await _write(server.url, "ecotel", _counters())
        config = _config(tmp_path, server.url, "ecotel", DERIVE)
        # A month, as the docs' example: minutes of work, so it is mid-run when InfluxDB goes.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipelines",
            "--config",
            str(config),
            "derive",
            "--from",
            "2026-01-01T00:00:00+08:00",
            "--to",
            "2026-02-01T00:00:00+08:00",
            "--wait",
            "3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 120)
        assert first.startswith(b"derive: readings "), first
        await server.stop()
        out, rest = await asyncio.wait_for(proc.communicate(), 120)
    err = (first + rest).decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert f"InfluxDB at {server.url} (influx.url, from {config}): " in err
    assert "run the same command again once it is back" in err
    assert "derived " not in out.decode()


async def test_site_flow_weights_occupancy_by_interval_when_a_lane_mixes_intervals(
    deriver: tuple[WindowDeriver, InfluxWriter], influxdb: InfluxServer, influx_db: str
) -> None:
    # Lane 1 switched from 5-min to 1-min counts inside the window: its occupancy is
    # weighted by each count's interval (the subquery), lane 2's by its one interval.
    windows, writer = deriver
    counts = [("1", 300.0, 10.0, 10.0, 1), ("1", 60.0, 10.0, 40.0, 7)]
    counts += [("2", 300.0, 50.0, 22.0, 1 + 5 * i) for i in range(3)]
    lines = [
        f"traffic_detector,device=radar,gateway=gw,lane={lane},site=G109 "
        f"interval_s={interval},volume={volume},mean_speed=80.0,occupancy={occupancy} "
        f"{_ns(T0 + timedelta(minutes=minute))}"
        for lane, interval, volume, occupancy, minute in counts
    ]
    await _write(influxdb.url, influx_db, lines)
    await rewrite_window(windows, writer, WindowKey(TRAFFIC, "G109", Window.QUARTER_HOUR, T0))
    figures = (await _figures(influxdb.url, influx_db, "traffic_flow_site"))[T0]
    # (300 * 10 + 60 * 40 + 3 * 300 * 22) / (360 + 900); the shortest interval times the
    # sum would give 18.1.
    assert figures["mean_occupancy"] == pytest.approx(20.0)
    assert figures["flow_vph"] == pytest.approx(20 * 3600 / 360 + 150 * 3600 / 900)
    assert figures["lanes"] == 2.0
