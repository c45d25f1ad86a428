"""Alert rules against what operators meet in the field, evaluated as Grafana would (alert_eval) on a real InfluxDB.

A device that stops answering while its gateway stays online, a lone reading the ingest
flagged as a spike, a gateway lost for over a month. Points are written as the ingest writes
them (pipelines/line_protocol.py's format), then each rule runs over its relative time range, reduce,
threshold and pending period.
"""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dashboards import names
from dashboards.alert_eval import firing, render
from dashboards.alerts import rules_document
from deploy.servers import InfluxServer
from devices.highway import RoadWeather
from pipelines.line_protocol import timestamp_ns, values_line

AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SITE, GATEWAY = "Zhiduo", "zhiduo-gw1"


def _rules() -> dict[str, dict[str, Any]]:
    return {r["uid"]: r for g in rules_document()["groups"] for r in g["rules"]}


def _labels(**tags: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(tags.items()))


async def _write(influxdb: InfluxServer, database: str, lines: list[str]) -> None:
    async with httpx.AsyncClient(base_url=influxdb.url, trust_env=False) as http:
        response = await http.post("/write", params={"db": database}, content="\n".join(lines))
        assert response.status_code == 204, response.text


def _health(at: datetime, errors: Mapping[str, int]) -> list[str]:
    """A health report's device errors as pipelines/line_protocol.py writes them (its
    signatures are changing under another engineer; the points' shape is not)."""
    ns = timestamp_ns(at)
    return [
        f"{names.DEVICE_ERRORS},device={device},gateway={GATEWAY},site={SITE} "
        f"errors={float(count)!r} {ns}"
        for device, count in sorted(errors.items())
    ]


async def test_a_device_that_stops_answering_fires_while_its_gateway_stays_online(
    influxdb: InfluxServer, influx_db: str
) -> None:
    # Health every 60 s for an hour. wq-1 answers until 30 min ago, then every read fails (6 per
    # minute at 10 s polls); hydro-1 failed twice long ago; aws-1 failed 40 times before the
    # gateway restarted 20 min ago (its count starts again at 0, then one lone failure).
    lines: list[str] = []
    for m in range(60, -1, -1):
        at = AT - timedelta(minutes=m)
        restarted = m < 20
        errors = {"wq-1": 6 * max(0, 30 - m) if not restarted else 6 * (20 - m), "hydro-1": 2}
        errors["aws-1"] = (1 if m < 10 else 0) if restarted else 40
        lines += _health(at, errors)
    await _write(influxdb, influx_db, lines)
    rule = _rules()["ecotel-device-failing"]
    assert rule["noDataState"] == "OK"  # an offline gateway is the offline rule's business
    active = await firing(rule, influxdb.url, influx_db, AT)
    failing = _labels(site=SITE, gateway=GATEWAY, device="wq-1")
    assert set(active) == {failing}, sorted(active)
    summary = render(rule["annotations"]["summary"], active[failing])
    for name in ("wq-1", SITE, GATEWAY):
        assert name in summary, summary
    # Failing for 10 minutes is not yet 15.
    assert await firing(rule, influxdb.url, influx_db, AT - timedelta(minutes=20)) == {}


def _road(at: datetime, visibility: float, quality: str | None = None) -> str:
    values: dict[str, object] = dict.fromkeys(RoadWeather.model_fields)
    values |= {"visibility": visibility, "surface_temperature": 4.0, "air_temperature": 6.0}
    return values_line(
        "G109 K100", "rsu-1", RoadWeather, "rws-1", None, at, values, quality=quality
    )


async def test_a_lone_spike_flagged_by_the_ingest_does_not_page_but_fog_does(
    influxdb: InfluxServer, influx_db: str
) -> None:
    # Road weather every 60 s at 15 km; at 11:40 one reading of 30 m, flagged spike:visibility
    # by the ingest, a poll missed after it, and the next one 5 s late (poll drift, the link):
    # the spike stays the last reading for 2 min 5 s.
    spike = AT - timedelta(minutes=20)
    late = spike + timedelta(minutes=2, seconds=5)
    lines = [
        _road(AT - timedelta(minutes=m), 15_000.0)
        for m in range(30, 10, -1)
        if not spike <= AT - timedelta(minutes=m) <= late
    ]
    lines.append(_road(spike, 30.0, quality="spike:visibility"))
    lines.append(_road(late, 15_000.0))
    # Then real fog from 11:50: the first reading flagged (a jump), the rest not (a step).
    lines.append(_road(AT - timedelta(minutes=10), 150.0, quality="spike:visibility"))
    lines += [_road(AT - timedelta(minutes=m), 120.0 + m) for m in range(9, -1, -1)]
    await _write(influxdb, influx_db, lines)
    rule = _rules()["ecotel-low-visibility"]
    station = _labels(site="G109 K100", device="rws-1")
    for seconds in (0, 30, 60, 90, 120, 124, 150, 180):
        at = spike + timedelta(seconds=seconds)
        assert await firing(rule, influxdb.url, influx_db, at) == {}, f"paged at {at}"
    assert station in await firing(rule, influxdb.url, influx_db, AT)


def test_every_critical_rule_on_a_per_reading_figure_waits_past_a_lone_reading() -> None:
    # The offline rule has its own 15 min; the rules on readings (and figures derived per
    # reading) must hold for more than one evaluation, or one flagged spike pages someone.
    for uid, rule in _rules().items():
        if rule["labels"]["severity"] == "critical":
            assert rule["for"] not in ("0s", "0m"), uid


def _status(at: datetime, state: str, reason: str) -> str:
    online = 1.0 if state == "online" else 0.0
    return (
        f"{names.STATUS},gateway={GATEWAY},site={SITE} "
        f'online={online!r},state="{state}",reason="{reason}" {timestamp_ns(at)}'
    )


async def test_a_gateway_lost_for_a_month_stays_offline(
    influxdb: InfluxServer, influx_db: str
) -> None:
    lost = AT - timedelta(days=31)
    lines = [
        _status(AT - timedelta(days=90), "online", "connected"),
        _status(lost, "offline", "connection_lost"),
    ]
    await _write(influxdb, influx_db, lines)
    rule = _rules()["ecotel-gateway-offline"]
    for at in (AT, AT + timedelta(days=300)):
        active = await firing(rule, influxdb.url, influx_db, at)
        assert _labels(site=SITE, gateway=GATEWAY) in active, at


def test_every_rule_is_run_on_data_somewhere() -> None:
    # On recorded fault/clean traces (test_alerts_live.EXPECTED) or here, on hand-written points.
    from tests.test_alerts_live import EXPECTED

    here = {"ecotel-device-failing", "ecotel-low-visibility", "ecotel-gateway-offline"}
    assert set(_rules()) <= set(EXPECTED) | here, set(_rules()) - set(EXPECTED) - here
