"""Derived measurements through the real stack: a backlog of three domains' readings published out
of order to Mosquitto, the ingest (``ecotel-ingest run``) killed with SIGKILL mid-run and restarted,
then everything derived in InfluxDB checked against a recomputation written plainly here from the
raw readings in the same InfluxDB (not by calling the ingest's rule code)."""

import asyncio
import itertools
import json
import math
import os
import random
import signal
import sqlite3
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from collector import wire
from collector.config import BrokerSettings
from deploy.servers import InfluxServer, MosquittoServer
from deploy.traces.file_format import load_trace
from deploy.traces.replay import ReplayOptions, replay
from devices.simulators import make_simulator
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.derive_config import DeriveSettings
from pipelines.influx_query import influx_query
from pipelines.service import IngestService
from tests.trace_fixtures import TraceStack, readings_of
from tests.traces.dashboards.meter_map import DATACENTER as LONG_DC_MAP
from tests.traces.dashboards.meter_map import SITE as LONG_DC_SITE

pytestmark = pytest.mark.slow

TRACES = Path(__file__).parent / "traces"
LONG_DC = TRACES / "dashboards" / "datacenter_3d.trace.gz"

STEP = timedelta(minutes=1)
STEPS = 75  # 09:55 .. 11:09 local: two full hours' quarters, one hour complete
DC_SITE, DC_GW = "共和 数据中心", "pue-1"
HW_SITE, HW_GW = "G109 K3012", "rsu-1"
ECO_SITE, ECO_GW = "沱沱河", "eco-1"
CIRCUITS = ["utility", "renewable", "ups_output", "it_load", "cooling"]
REPLACED_AT = 40  # the utility meter is swapped at step 40: its quarter has no PUE


def _start() -> datetime:
    # Three hours back, on the hour, minus 5 min: windows before and after are edges.
    back = datetime.now(UTC) - timedelta(hours=3)
    return back.replace(minute=0, second=0, microsecond=0) - 5 * STEP


def _messages(start: datetime) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """Per step, the (topic, envelope) each gateway publishes; sampled in time order."""
    meters = make_simulator(
        "energy_meter", "meters-1", seed=21, interval_s=60, options={"circuits": CIRCUITS}
    )
    radar = make_simulator("traffic_detector", "radar-1", seed=11, interval_s=60)
    rws = make_simulator("road_weather", "rws-1", seed=12, interval_s=60)
    sonde = make_simulator("water_quality", "wq-1", seed=1, interval_s=60)
    steps: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    swap_offset = 0.0
    for i in range(STEPS):
        at = start + i * STEP
        energy = [r.model_dump(mode="json", exclude_none=True) for r in meters.sample(at)]
        for reading in energy:
            if reading["channel"] == "utility" and i >= REPLACED_AT:
                # A new meter starts near 0: its counter is the old one's minus what it had.
                if i == REPLACED_AT:
                    swap_offset = reading["values"]["energy_kwh"] - 0.4
                reading["values"]["energy_kwh"] = round(
                    reading["values"]["energy_kwh"] - swap_offset, 1
                )
        highway = [r.model_dump(mode="json", exclude_none=True) for r in radar.sample(at)]
        highway += [r.model_dump(mode="json", exclude_none=True) for r in rws.sample(at)]
        water = [r.model_dump(mode="json", exclude_none=True) for r in sonde.sample(at)]
        steps[i] = [
            (wire.readings_topic(site, gw), {"site": site, "gateway": gw, "readings": readings})
            for site, gw, readings in (
                (DC_SITE, DC_GW, energy),
                (HW_SITE, HW_GW, highway),
                (ECO_SITE, ECO_GW, water),
            )
        ]
    return steps


class Publisher:
    """Numbers each gateway's messages in publish order, as a gateway draining its outbox does."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seq: dict[str, int] = defaultdict(int)
        self.readings = 0

    async def publish(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        for topic, body in messages:
            self.seq[topic] += 1
            envelope = {
                "schema": 1,
                "seq": self.seq[topic],
                "sent_at": datetime.now(UTC).isoformat(),
                **body,
            }
            await self.client.publish(topic, json.dumps(envelope, ensure_ascii=False), qos=1)
            self.readings += len(body["readings"])


def _config(
    path: Path, broker: int, url: str, database: str, state: Path, site: str = DC_SITE
) -> None:
    meter = '{{ device = "meters-1", circuit = "{}", max_power_kw = 5000 }}'
    path.write_text(
        f'[mqtt]\nport = {broker}\nclient_id = "ingest-{database}"\n'
        f'[influx]\nurl = "{url}"\ndatabase = "{database}"\n'
        "[batch]\nmax_delay_s = 0.2\n"
        f'[dead_letter]\npath = "{state / "dead.sqlite3"}"\n'
        "[validation.quality]\nenabled = false\n"
        "[derive.delays]\nquarter_hour_s = 0.2\nhour_s = 0.2\nday_s = 0.2\n"
        "[[derive.datacenters]]\n"
        f'site = "{site}"\n'
        f"facility = [{meter.format('utility')}]\n"
        f"it = [{meter.format('ups_output')}]\n"
        + (f"renewable = [{meter.format('renewable')}]\n" if site == DC_SITE else "")
        + "[[derive.datacenters.zones]]\n"
        'name = "hall-a"\n'
        f"it = [{meter.format('it_load')}]\n"
        f"infrastructure = [{meter.format('cooling')}]\n",
        encoding="utf-8",
    )


class Ingest:
    """``ecotel-ingest run`` as a child process; ``connected`` once its session is subscribed."""

    def __init__(self, config: Path, **env: str) -> None:
        self.config = config
        self.env = {**os.environ, **env}
        self.process: asyncio.subprocess.Process | None = None
        self.log: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipelines",
            "--config",
            str(self.config),
            "run",
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        connected = asyncio.Event()
        asyncio.get_running_loop().create_task(self._read(connected))
        async with asyncio.timeout(30):
            await connected.wait()

    async def _read(self, connected: asyncio.Event) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            if "ingest connected" in line:
                connected.set()

    async def stop(self, sig: int) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        await self.process.wait()


async def _count(url: str, database: str, measurement: str, field: str) -> int:
    series = await influx_query(
        url, f'SELECT count("{field}") FROM "{measurement}"', database=database
    )
    return int(series[0].values[0][1]) if series else 0


async def _raw_total(url: str, database: str) -> int:
    total = 0
    for kind, field in (
        ("energy_meter", "energy_kwh"),
        ("traffic_detector", "volume"),
        ("road_weather", "visibility"),
        ("water_quality", "ph"),
    ):
        total += await _count(url, database, kind, field)
    return total


def _dirty_windows(path: Path) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        return {
            (family, window) for family, window in db.execute("SELECT family, window FROM dirty")
        }


async def _settled(state: Path) -> None:
    """Nothing waits for recomputation, three looks in a row (marks follow raw writes by ms)."""
    quiet = 0
    while quiet < 3:
        quiet = 0 if _dirty_windows(state) else quiet + 1
        await asyncio.sleep(0.5)


# ---- the independent recomputation ------------------------------------------------------


async def _rows(url: str, database: str, measurement: str) -> list[dict[str, Any]]:
    out = []
    for series in await influx_query(
        url, f'SELECT * FROM "{measurement}" GROUP BY *', database=database, epoch="ns"
    ):
        for row in series.rows():
            out.append({**series.tags, **{k: v for k, v in row.items() if v is not None}})
    return out


def _water_class(row: dict[str, Any]) -> tuple[int, list[str], list[str]]:
    """GB 3838-2002, straight from the table: class 1..5, 6 = worse than V."""
    classes: dict[str, int] = {}
    classes["ph"] = 1 if 6 <= row["ph"] <= 9 else 6
    do = row["dissolved_oxygen"]
    classes["dissolved_oxygen"] = next(
        (c for c, least in zip(range(1, 6), (7.5, 6, 5, 3, 2), strict=True) if do >= least), 6
    )
    for name, limits in (
        ("permanganate_index", (2, 4, 6, 10, 15)),
        ("ammonia_nitrogen", (0.15, 0.5, 1.0, 1.5, 2.0)),
        ("total_phosphorus", (0.02, 0.1, 0.2, 0.3, 0.4)),
    ):
        if name in row:
            classes[name] = next(
                (c for c, most in zip(range(1, 6), limits, strict=True) if row[name] <= most), 6
            )
    worst = max(classes.values())
    order = ["ph", "dissolved_oxygen", "permanganate_index", "ammonia_nitrogen", "total_phosphorus"]
    return (
        worst,
        [p for p in order if classes.get(p) == worst],
        [p for p in order if p not in classes],
    )


def _road(row: dict[str, Any]) -> dict[str, float]:
    t, rh, surface = row["air_temperature"], row["relative_humidity"], row["surface_temperature"]
    expected: dict[str, float] = {}
    dew = None
    if rh > 0:
        g = math.log(rh / 100) + 17.625 * t / (243.04 + t)
        dew = 243.04 * g / (17.625 - g)
        expected["dew_point"] = dew
    icy = row["surface_state"] in ("ice", "snow", "frost")
    risk = (surface <= 0 and row["surface_state"] in ("wet", "moist", "slush")) or (
        dew is not None and surface <= dew
    )
    expected["icing_level"] = 2.0 if icy else 1.0 if risk else 0.0
    visibility = row["visibility"]
    tier, limit = next(
        (
            (tier, limit)
            for below, tier, limit in ((50, 3, 20), (100, 2, 40), (200, 1, 60))
            if visibility < below
        ),
        (0, None),
    )
    expected["visibility_tier"] = float(tier)
    if limit is not None:
        expected["speed_limit_kmh"] = float(limit)
    return expected


def _energy(readings: list[tuple[int, float]], start_ns: int, end_ns: int) -> float | None:
    """A counter's energy over [start, end): linear between readings; None if the counter
    fell anywhere around the window or a reading is missing at either edge."""
    inside = [(t, v) for t, v in readings if start_ns - 900e9 <= t <= end_ns + 900e9]
    before = [p for p in inside if p[0] <= start_ns]
    after = [p for p in inside if p[0] >= end_ns]
    if not before or not after:
        return None
    span = [p for p in inside if before[-1][0] <= p[0] <= after[0][0]]
    if any(b[1] < a[1] for a, b in itertools.pairwise(span)):
        return None

    def at(moment: int) -> float:
        for (t0, v0), (t1, v1) in itertools.pairwise(span):
            if t0 <= moment <= t1:
                return v0 + (v1 - v0) * (moment - t0) / (t1 - t0)
        raise AssertionError("not covered")

    return at(end_ns) - at(start_ns)


# ---- the test ---------------------------------------------------------------------------


async def test_derived_measurements_match_an_independent_recomputation_after_backlog_and_kill(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = f"derive_{uuid.uuid4().hex[:8]}"
    start = _start()
    steps = _messages(start)
    order = list(range(STEPS))
    first, second, late = order[20:45], order[45:STEPS], order[:20]
    random.Random(7).shuffle(first)
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = tmp_path / "ingest.toml"
        _config(config, broker.port, influxdb.url, database, tmp_path)
        state = tmp_path / "derive.sqlite3"
        # The first run recomputes nothing (hour-long delays): its marks must survive the kill.
        hold = {
            f"ECOTEL_INGEST_DERIVE__DELAYS__{k}": "3600"
            for k in ("QUARTER_HOUR_S", "HOUR_S", "DAY_S")
        }
        ingest = Ingest(config, **hold)
        await ingest.start()
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            publisher = Publisher(client)
            try:
                # Steps 20..44, shuffled; then 45..74 in order, killed while they stream in.
                await publisher.publish([m for i in first for m in steps[i]])
                async with asyncio.timeout(60):
                    while ("datacenter", "15min") not in _dirty_windows(state):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                send_second = asyncio.create_task(
                    publisher.publish([m for i in second for m in steps[i]])
                )
                await asyncio.sleep(0.3)
                await ingest.stop(signal.SIGKILL)
                await send_second
                assert _dirty_windows(state), "windows marked before the kill are on disk"
                # While the ingest is down, the station drains its backlog: steps 0..19, late.
                await publisher.publish([m for i in late for m in steps[i]])
                ingest = Ingest(config)
                await ingest.start()
                async with asyncio.timeout(90):
                    while await _raw_total(influxdb.url, database) < publisher.readings:  # noqa: ASYNC110
                        await asyncio.sleep(0.3)
                    await _settled(state)
            finally:
                await ingest.stop(signal.SIGTERM)
    assert await _raw_total(influxdb.url, database) == publisher.readings
    await _check_per_reading(influxdb.url, database)
    pue = await _check_pue(influxdb.url, database)
    first_quarter = start + 5 * STEP
    quarters = [_ns(first_quarter + q * timedelta(minutes=15)) for q in range(5)]
    # Quarters 0, 1 and 3 are whole; 2 holds the meter swap, 4 outlasts the data.
    assert [pue[("15min", q)]["complete"] for q in quarters] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert pue[("15min", quarters[2])]["issues"] == "meters-1:utility:incomplete_interval"
    assert "pue" not in pue[("1h", quarters[0])], "the hour spans the swap"
    assert await _check_site_flow(influxdb.url, database) >= 6


async def _check_per_reading(url: str, database: str) -> None:
    def key(row: dict[str, Any], *tags: str) -> tuple[Any, ...]:
        return (row["time"], row["site"], row["gateway"], row["device"], *(row[t] for t in tags))

    water = {key(r): r for r in await _rows(url, database, "water_quality")}
    classes = {key(r): r for r in await _rows(url, database, "water_quality_class")}
    assert classes.keys() == water.keys(), "one class per sample, no more, no less"
    for k, row in water.items():
        worst, deciding, missing = _water_class(row)
        got = classes[k]
        assert (got["class"], got["decided_by"], got["missing"]) == (
            float(worst),
            ",".join(deciding),
            ",".join(missing),
        ), row
        assert got["partial"] == (1.0 if missing else 0.0)

    weather = {key(r): r for r in await _rows(url, database, "road_weather")}
    safety = {key(r): r for r in await _rows(url, database, "road_safety")}
    assert safety.keys() == weather.keys()
    for k, row in weather.items():
        for field, value in _road(row).items():
            assert safety[k][field] == pytest.approx(value, abs=1e-9), (field, row)
        assert ("speed_limit_kmh" in safety[k]) == ("speed_limit_kmh" in _road(row))

    lanes = {key(r, "lane"): r for r in await _rows(url, database, "traffic_detector")}
    flows = {key(r, "lane"): r for r in await _rows(url, database, "traffic_flow")}
    assert flows.keys() == lanes.keys()
    for k, row in lanes.items():
        assert flows[k]["flow_vph"] == pytest.approx(row["volume"] * 3600 / row["interval_s"])


def _roles(datacenter: dict[str, Any]) -> dict[str, list[str]]:
    """The circuits of each role of a ``[[derive.datacenters]]`` entry (one zone, one meter)."""
    (zone,) = datacenter["zones"]
    return {
        "facility": [m["circuit"] for m in datacenter["facility"]],
        "it": [m["circuit"] for m in datacenter["it"]],
        "renewable": [m["circuit"] for m in datacenter.get("renewable", [])],
        "zone_it": [m["circuit"] for m in zone["it"]],
        "zone_other": [m["circuit"] for m in zone["infrastructure"]],
    }


def _sum(parts: list[float | None]) -> float | None:
    """A role's energy: the sum of its circuits', None if it has none or one is unknown."""
    known = [p for p in parts if p is not None]
    return sum(known) if parts and len(known) == len(parts) else None


# The meter map _config writes (renewable only for DC_SITE).
CONFIGURED = {
    "facility": ["utility"],
    "it": ["ups_output"],
    "renewable": ["renewable"],
    "zone_it": ["it_load"],
    "zone_other": ["cooling"],
}


async def _check_pue(
    url: str, database: str, roles: dict[str, list[str]] = CONFIGURED
) -> dict[tuple[str, int], dict[str, Any]]:
    """Every stored pue (and ref, ppue) window against the plain recomputation; returns pue.

    ``roles``: the circuits summed for facility, IT, renewable, and the zone's IT and the rest.
    """
    counters: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in sorted(await _rows(url, database, "energy_meter"), key=lambda r: r["time"]):
        counters[row["circuit"]].append((row["time"], row["energy_kwh"]))
    pue = {(r["window"], r["time"]): r for r in await _rows(url, database, "pue")}
    ppue = {(r["window"], r["time"]): r for r in await _rows(url, database, "ppue")}
    ref = {(r["window"], r["time"]): r for r in await _rows(url, database, "ref")}
    # Every window a reading falls in was computed (windows on the UTC+8 clock).
    for t, _ in counters["utility"]:
        for window, size in (("15min", 900), ("1h", 3_600), ("1d", 86_400)):
            start_s = (t // 10**9 + 8 * 3_600) // size * size - 8 * 3_600
            assert (window, start_s * 10**9) in pue, (window, start_s)
    for (window, at), got in pue.items():
        length = {"15min": 900e9, "1h": 3600e9, "1d": 86400e9}[window]
        energy = {c: _energy(counters[c], at, int(at + length)) for c in counters}
        totals = {role: _sum([energy.get(c) for c in roles[role]]) for role in roles}
        facility, it = totals["facility"], totals["it"]
        assert got["category"] == 1.0
        if facility is None or it is None:
            assert "pue" not in got, (window, at, got)
            assert got["complete"] == 0.0
            continue
        assert got["complete"] == 1.0
        assert got["pue"] == pytest.approx(facility / it, rel=1e-9)
        assert got["facility_kwh"] == pytest.approx(facility, rel=1e-9)
        renewable = totals["renewable"]
        if renewable is not None:
            assert ref[(window, at)]["ref"] == pytest.approx(renewable / facility, rel=1e-9)
        zone_it, zone_other = totals["zone_it"], totals["zone_other"]
        if zone_it is not None and zone_other is not None:
            assert ppue[(window, at)]["ppue"] == pytest.approx(
                (zone_it + zone_other) / zone_it, rel=1e-9
            )
        else:
            assert "ppue" not in ppue[(window, at)]
    return pue


async def _check_site_flow(url: str, database: str) -> int:
    """Every stored per-site flow window against the plain recomputation; returns how many."""
    traffic = await _rows(url, database, "traffic_detector")
    windows = await _rows(url, database, "traffic_flow_site")
    for got in windows:
        length = 900e9 if got["window"] == "15min" else 3600e9
        inside = [
            r
            for r in traffic
            if r["site"] == got["site"] and got["time"] <= r["time"] < got["time"] + length
        ]
        per_lane: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in inside:
            per_lane[(r["device"], r["lane"])].append(r)
        flow = sum(
            sum(r["volume"] for r in rows) * 3600 / sum(r["interval_s"] for r in rows)
            for rows in per_lane.values()
        )
        assert got["flow_vph"] == pytest.approx(flow, rel=1e-9)
        assert got["vehicles"] == sum(r["volume"] for r in inside)
        assert got["lanes"] == len(per_lane)
        # Complete: each lane's counts cover the window to within half a counting interval.
        whole = all(
            sum(r["interval_s"] for r in rows)
            >= length / 1e9 - min(r["interval_s"] for r in rows) / 2
            for rows in per_lane.values()
        )
        assert got["complete"] == (1.0 if whole else 0.0)
    return len(windows)


def _ns(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 1_000


async def test_recorded_traces_of_the_three_domains_derive_what_a_plain_recomputation_says(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = f"derive_{uuid.uuid4().hex[:8]}"
    paths = [TRACES / f"{domain}.trace.gz" for domain in ("datacenter", "highway", "ecology")]
    records, _ = load_trace(paths)
    derived_kinds = {"energy_meter", "traffic_detector", "road_weather", "water_quality"}
    expected = sum(
        1
        for r in records
        if r.topic.endswith("/readings")
        for reading in json.loads(r.payload)["readings"]
        if reading["kind"] in derived_kinds
    )
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = tmp_path / "ingest.toml"
        _config(config, broker.port, influxdb.url, database, tmp_path, site="Gonghe DC1")
        ingest = Ingest(config)
        await ingest.start()
        try:
            await replay(
                BrokerSettings(host=broker.host, port=broker.port),
                records,
                ReplayOptions(speed=None),
            )
            async with asyncio.timeout(60):
                while await _raw_total(influxdb.url, database) < expected:  # noqa: ASYNC110
                    await asyncio.sleep(0.3)
                await _settled(tmp_path / "derive.sqlite3")
        finally:
            await ingest.stop(signal.SIGTERM)
    assert await _raw_total(influxdb.url, database) == expected
    await _check_per_reading(influxdb.url, database)
    pue = await _check_pue(influxdb.url, database)
    # Seconds of readings: every window is incomplete, and says so without a number.
    assert {w for w, _ in pue} == {"15min", "1h", "1d"}
    assert all(figures["complete"] == 0.0 for figures in pue.values())
    assert await _check_site_flow(influxdb.url, database) == 2


async def test_a_recorded_three_day_datacenter_backlog_derives_what_a_plain_recomputation_says(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    """Three days of counters every 10 min (Gonghe DC2, recorded through a real broker): whole
    quarters, hours and days, so PUE, pPUE and REF are compared number by number."""
    derive = DeriveSettings.model_validate(
        {
            "state_path": tmp_path / "derive.sqlite3",
            "delays": {"quarter_hour_s": 0.2, "hour_s": 0.2, "day_s": 0.2},
            "datacenters": [LONG_DC_MAP],
        }
    )
    async with MosquittoServer(tmp_path / "broker") as broker:
        ingest = IngestService(
            IngestSettings(
                mqtt=MqttSettings(port=broker.port, client_id=f"ingest-{influx_db}"),
                influx=InfluxSettings(url=influxdb.url, database=influx_db),
                batch=BatchSettings(max_delay_s=0.1),
                dead_letter=DeadLetterSettings(path=tmp_path / "dead.sqlite3"),
                derive=derive,
            )
        )
        running = asyncio.create_task(ingest.run())
        try:
            await asyncio.wait_for(ingest.connected.wait(), 30)
            stack = TraceStack(broker, influxdb.url, influx_db, tmp_path / "dead.sqlite3", ingest)
            await stack.replay(LONG_DC)
            async with asyncio.timeout(120):
                await _settled(tmp_path / "derive.sqlite3")
                await ingest.wait_idle()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    expected = sum(1 for _, _, r in readings_of(stack.replayed) if r["kind"] == "energy_meter")
    assert await _count(influxdb.url, influx_db, "energy_meter", "energy_kwh") == expected
    pue = await _check_pue(influxdb.url, influx_db, _roles(LONG_DC_MAP))
    assert {r["site"] for r in pue.values()} == {LONG_DC_SITE}
    complete = {
        window: sum(1 for (w, _), f in pue.items() if w == window and f["complete"] == 1.0)
        for window in ("15min", "1h", "1d")
    }
    # Three days at 10 min: all but the edge windows are whole (two local days at least).
    assert complete["15min"] >= 280, complete
    assert complete["1h"] >= 70, complete
    assert complete["1d"] >= 2, complete
    # Every meter answered throughout: each complete PUE window has its pPUE and REF too.
    for measurement, field in (("ref", "ref"), ("ppue", "ppue")):
        rows = await _rows(influxdb.url, influx_db, measurement)
        assert sum(1 for r in rows if field in r) == sum(complete.values()), measurement
