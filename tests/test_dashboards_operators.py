"""Panels as an operator reads them, each expanded as Grafana expands it and run on a real InfluxDB.

Gateways online for days seen over a 2-minute range, a gateway lost for a month, the time of a
gateway's last status, readings the ingest flagged, energy across a meter replacement and a gap
(through the ingest's own window deriver), and where thresholds turn red.
"""

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dashboards import limits, names
from dashboards.alerts import SPECS
from dashboards.boards import all_dashboards
from dashboards.domain import dashboard_uid
from dashboards.expand import expand, panel_targets
from dashboards.fleet import UID as FLEET_UID
from deploy.servers import InfluxServer
from devices import Domain, kinds_in
from devices.datacenter import EnergyMeter
from devices.ecology import WaterQuality
from devices.highway import RoadWeather
from pipelines.analytics.energy import Window
from pipelines.config import InfluxSettings
from pipelines.derive_config import DeriveSettings
from pipelines.derive_state import WindowKey
from pipelines.derive_windows import DATACENTER, WindowDeriver
from pipelines.influx_query import Series, influx_query
from pipelines.line_protocol import timestamp_ns, values_line

AT = datetime(2026, 11, 28, 12, 0, 17, tzinfo=UTC)  # not on a bucket boundary
SITE = "Zhiduo"


async def _write(influxdb: InfluxServer, database: str, lines: Sequence[str]) -> None:
    async with httpx.AsyncClient(base_url=influxdb.url, trust_env=False) as http:
        for start in range(0, len(lines), 5_000):
            chunk = "\n".join(lines[start : start + 5_000])
            response = await http.post("/write", params={"db": database}, content=chunk)
            assert response.status_code == 204, response.text


def _panel(uid: str, title: str) -> dict[str, Any]:
    found = [p for p in all_dashboards()[uid]["panels"] if p.get("title") == title]
    assert len(found) == 1, f"{uid} has {len(found)} panels titled {title!r}"
    panel: dict[str, Any] = found[0]
    return panel


async def _run(
    influxdb: InfluxServer,
    database: str,
    uid: str,
    title: str,
    start: datetime,
    end: datetime,
    variables: Mapping[str, Sequence[str]],
) -> list[Series]:
    """Every target of one panel, expanded with the datasource's 10 s min interval (or the
    panel's own), as Grafana sends them."""
    targets = [t for t in panel_targets(all_dashboards()[uid]) if t.title == title]
    assert targets, f"{uid} has no panel {title!r}"
    found: list[Series] = []
    for target in targets:
        text = expand(
            target.query,
            start=start,
            end=end,
            variables=variables,
            min_interval_ms=target.min_interval_ms or 10_000,
        )
        found += await influx_query(influxdb.url, text, database=database)
    return found


def _status(site: str, gateway: str, at: datetime, state: str, reason: str) -> str:
    """A status point as pipelines/line_protocol.py writes it."""
    online = 1.0 if state == "online" else 0.0
    return (
        f"{names.STATUS},gateway={gateway},site={site} "
        f'online={online!r},state="{state}",reason="{reason}" {timestamp_ns(at)}'
    )


def _health(site: str, gateway: str, at: datetime) -> str:
    """A health point (some of its fields) as pipelines/line_protocol.py writes it."""
    return (
        f"{names.HEALTH},gateway={gateway},site={site} "
        f"uptime_s=100.0,outbox_readings=0.0,link_up=1.0,clock_ok=1.0 {timestamp_ns(at)}"
    )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_online_over_time_shows_a_gateway_online_for_days_in_a_short_range(
    influxdb: InfluxServer, influx_db: str
) -> None:
    # Both connected three days ago (status on change only), health every 60 s since; the
    # second gateway lost its link 10 min ago.
    lines = [_status(SITE, gw, AT - timedelta(days=3), "online", "connected") for gw in ("a", "b")]
    lines.append(_status(SITE, "b", AT - timedelta(minutes=10), "offline", "connection_lost"))
    for m in range(3 * 24 * 60, -1, -1):
        at = AT - timedelta(minutes=m, seconds=23)
        lines.append(_health(SITE, "a", at))
        if m > 10:
            lines.append(_health(SITE, "b", at))
    await _write(influxdb, influx_db, lines)
    chosen = {"site": [SITE], "gateway": ["a", "b"]}

    def states(series: list[Series], gateway: str) -> list[tuple[datetime, float]]:
        rows = [r for s in series if s.tags["gateway"] == gateway for r in s.values]
        return [(_parse(r[0]), r[1]) for r in rows]

    series = await _run(
        influxdb, influx_db, FLEET_UID, "Online over time", AT - timedelta(minutes=2), AT, chosen
    )
    online = states(series, "a")
    assert online, "a gateway online for days has no row over a 2-minute range"
    assert {v for _, v in online} == {1}, online
    # Drawn from the range's start (a point at or before it) to its end (the last minute).
    assert online[0][0] <= AT - timedelta(minutes=2), online
    assert online[-1][0] >= AT - timedelta(minutes=1), online

    series = await _run(
        influxdb, influx_db, FLEET_UID, "Online over time", AT - timedelta(minutes=30), AT, chosen
    )
    lost = states(series, "b")
    assert [v for t, v in lost if t <= AT - timedelta(minutes=12)] == [1] * len(
        [t for t, _ in lost if t <= AT - timedelta(minutes=12)]
    )
    assert {v for t, v in lost if t >= AT - timedelta(minutes=6)} == {0}, lost


async def test_gateways_now_shows_each_status_at_its_own_time_and_a_month_lost_one(
    influxdb: InfluxServer, influx_db: str
) -> None:
    # "now" panels read up to now(): real times. One gateway online since 5 days ago, one lost
    # 31 days ago (a month and a day: beyond a 30-day lookback).
    now = datetime.now(UTC).replace(microsecond=0)
    since, lost = now - timedelta(days=5), now - timedelta(days=31)
    await _write(
        influxdb,
        influx_db,
        [
            _status(SITE, "a", since, "online", "connected"),
            _status(SITE, "c", now - timedelta(days=60), "online", "connected"),
            _status(SITE, "c", lost, "offline", "connection_lost"),
        ],
    )
    chosen = {"site": [SITE], "gateway": ["a", "c"]}
    start = now - timedelta(hours=1)
    rows = await _run(
        influxdb, influx_db, FLEET_UID, "Gateways now (links: the site's data)", start, now, chosen
    )
    table = {s.tags["gateway"]: dict(zip(s.columns, s.values[-1], strict=True)) for s in rows}
    assert set(table) == {"a", "c"}, table
    assert _parse(table["a"]["time"]) == since, table["a"]
    assert (table["a"]["online"], table["a"]["reason"]) == (1, "connected")
    assert _parse(table["c"]["time"]) == lost, table["c"]
    assert (table["c"]["online"], table["c"]["reason"]) == (0, "connection_lost")
    for title, expected in (("Gateways online now", 1), ("Gateways offline now", 1)):
        (stat,) = await _run(influxdb, influx_db, FLEET_UID, title, start, now, chosen)
        assert stat.values[-1][1] == expected, (title, stat.values)


def _road(at: datetime, visibility: float, quality: str | None = None) -> str:
    values: dict[str, object] = dict.fromkeys(RoadWeather.model_fields)
    values |= {"visibility": visibility, "surface_temperature": 4.0}
    return values_line(SITE, "rsu-1", RoadWeather, "rws-1", None, at, values, quality=quality)


def _water(at: datetime, ph: float, quality: str | None = None) -> str:
    values: dict[str, object] = dict.fromkeys(WaterQuality.model_fields)
    values |= {"ph": ph, "water_temperature": 4.0}
    return values_line(SITE, "gw-1", WaterQuality, "wq-1", None, at, values, quality=quality)


async def test_flagged_readings_are_shown_per_site_kind_and_flag(
    influxdb: InfluxServer, influx_db: str
) -> None:
    lines = [_road(AT - timedelta(minutes=m), 15_000.0) for m in range(1, 30)]
    lines.append(_road(AT - timedelta(minutes=20, seconds=30), 30.0, "spike:visibility"))
    lines += [_water(AT - timedelta(minutes=m), 7.5, "stuck:ph") for m in range(1, 4)]
    lines.append(_water(AT - timedelta(minutes=5), 7.5, "spike:turbidity,stuck:ph"))
    lines += [_water(AT - timedelta(minutes=m), 7.5) for m in range(6, 30)]
    await _write(influxdb, influx_db, lines)
    title = "Flagged readings (quality: spike, stuck)"
    chosen = {"site": [SITE], "gateway": ["rsu-1", "gw-1"]}
    counts: dict[tuple[str, str], float] = {}
    for target in panel_targets(all_dashboards()[FLEET_UID]):
        if target.title != title:
            continue
        text = expand(target.query, start=AT - timedelta(hours=1), end=AT, variables=chosen)
        for s in await influx_query(influxdb.url, text, database=influx_db):
            assert s.tags["site"] == SITE
            counts[(target.ref, s.name)] = sum(r[1] for r in s.values if r[1] is not None)
    # A: spikes, B: stuck gauges, per kind: the road's one spike, the sonde's one and four.
    assert counts == {
        ("A", "road_weather"): 1,
        ("A", "water_quality"): 1,
        ("B", "water_quality"): 4,
    }, counts


def test_thresholds_are_drawn_and_turn_red_only_beyond_the_normal_range() -> None:
    def colour(steps: list[dict[str, Any]], value: float) -> str:
        # Grafana: the last step whose value is at or under the value (the first has none).
        found = steps[0]["color"]
        for step in steps[1:]:
            if value >= step["value"]:
                found = step["color"]
        return str(found)

    boards = all_dashboards()
    checked: set[str] = set()
    for domain in Domain:
        for kind in kinds_in(domain):
            for q in kind.quantities():
                if q.normal is None or q.role.value != "gauge":
                    continue
                panels = [
                    p
                    for p in boards[dashboard_uid(domain)]["panels"]
                    if p["type"] == "timeseries"
                    and f"(field {q.name} of {kind.kind})" in p.get("description", "")
                ]
                for panel in panels:
                    checked.add(panel["title"])
                    defaults = panel["fieldConfig"]["defaults"]
                    steps = defaults["thresholds"]["steps"]
                    low, high = q.normal
                    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", panel["title"]
                    for inside in (low, high, (low + high) / 2):
                        assert colour(steps, inside) == "green", (panel["title"], inside)
                    for outside in (math.nextafter(low, -math.inf), high * 1.0001 + 0.001):
                        assert colour(steps, outside) == "red", (panel["title"], outside)
    expected = {
        "pH (pH)",
        "Inlet temperature (degC)",
        "Visibility (m)",
        "Battery state of charge (%)",
    }
    assert expected <= checked, checked
    # Where a panel and an alert share a limit, they agree (the alerts use ">").
    shared = {
        ("ecotel-datacenter", "PUE per day"): "ecotel-pue-above-target",
        ("ecotel-datacenter", "PUE per hour"): "ecotel-pue-above-target",
        (FLEET_UID, "Oldest unsent reading (age)"): "ecotel-backlog-old",
    }
    specs = {s.uid: s for s in SPECS}
    for (uid, title), rule in shared.items():
        panel = _panel(uid, title)
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
        limit = specs[rule].threshold
        assert specs[rule].comparison == "gt"
        assert colour(steps, limit) != "red", (title, limit)
        assert colour(steps, math.nextafter(limit, math.inf)) == "red", (title, limit)
    assert specs["ecotel-pue-above-target"].threshold == limits.PUE_TARGET


DC = "DC Golmud"
RATING_KW = 5_000.0


def _meter(at: datetime, circuit: str, kwh: float) -> str:
    values: dict[str, object] = dict.fromkeys(EnergyMeter.model_fields)
    values |= {"energy_kwh": kwh, "active_power_kw": 1.0}
    return values_line(DC, "golmud-meters", EnergyMeter, "pue-meter", circuit, at, values)


async def test_energy_per_interval_leaves_out_a_meter_replacement_and_a_gap(
    influxdb: InfluxServer, influx_db: str
) -> None:
    # Facility 1500 kW and IT 1000 kW, read every 20 s for 4 h: the utility meter is replaced
    # after an hour by one reading 246,000 kWh higher, and no reading arrives for 2 h from 13:30.
    start = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)  # 12:00 in the site's UTC+8
    lines: list[str] = []
    for i in range(4 * 180 + 1):
        at = start + timedelta(seconds=20 * i)
        hours = i / 180
        if timedelta(hours=1.5) < at - start < timedelta(hours=3.5):
            continue
        utility = 10_000 + 1_500 * hours + (246_000 if hours >= 1 else 0)
        lines += [_meter(at, "utility", utility), _meter(at, "it_load", 20_000 + 1_000 * hours)]
    await _write(influxdb, influx_db, lines)
    settings = DeriveSettings.model_validate(
        {
            "datacenters": [
                {
                    "site": DC,
                    "facility": [
                        {"device": "pue-meter", "circuit": "utility", "max_power_kw": RATING_KW}
                    ],
                    "it": [
                        {"device": "pue-meter", "circuit": "it_load", "max_power_kw": RATING_KW}
                    ],
                }
            ]
        }
    )
    deriver = WindowDeriver(settings, InfluxSettings(url=influxdb.url, database=influx_db))
    derived: list[str] = []
    for q in range(16):
        key = WindowKey(DATACENTER, DC, Window.QUARTER_HOUR, start + timedelta(minutes=15 * q))
        derived += (await deriver.compute(key)).lines
    await _write(influxdb, influx_db, derived)

    board = dashboard_uid(Domain.DATACENTER)
    per_interval = [
        p["title"]
        for p in all_dashboards()[board]["panels"]
        if p.get("fieldConfig", {}).get("defaults", {}).get("unit") == "kwatth"
        and " per " in p["title"]
    ]
    assert per_interval, "no energy-per-interval panel"
    for title in per_interval:
        series = await _run(
            influxdb,
            influx_db,
            board,
            title,
            start - timedelta(minutes=5),
            start + timedelta(hours=4, minutes=5),
            {"site": [DC], "gateway": ["golmud-meters"], "device": ["pue-meter"]},
        )
        drawn = [(r[0], v) for s in series for r in s.values for v in r[1:] if v is not None]
        assert drawn, title
        for at, kwh in drawn:
            # No interval shown may hold more than the rating for a quarter hour.
            assert kwh <= RATING_KW / 4, (title, at, kwh)
        # The quarter hours of steady use are there: 375 kWh facility, 250 kWh IT.
        assert {round(v) for _, v in drawn} == {375, 250}, (title, drawn)
