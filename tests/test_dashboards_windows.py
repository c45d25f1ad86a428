"""The data-center panels over per-window figures draw each figure at its window's start, whatever the site's UTC offset.

The ingest stamps a window's figure (``pue``, ``ref``) at the window's start on the site's local
clock (docs/analytics.md): a day of a UTC+8 site at 16:00Z, an hour of a UTC+5:30 site at :30.
Figures are written to a real InfluxDB as the ingest writes them; each panel's query, expanded as
Grafana expands it, must give back exactly those figures at exactly those times (a ``GROUP BY
time(1d)`` would draw the day at 00:00Z: 16 h early, on the previous local day).
"""

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from dashboards.boards import all_dashboards
from dashboards.domain import dashboard_uid
from dashboards.expand import expand, panel_queries
from deploy.servers import InfluxServer
from devices import Domain
from pipelines.derive_points import Fields
from pipelines.derive_windows import WindowOutput
from pipelines.influx_query import influx_query

EAST = "DC east"  # UTC+8
SOUTH = "DC south"  # UTC+5:30: its hours start at half past
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


# (measurement, site, window, window start in UTC, field value or None for an incomplete window)
FIGURES: list[tuple[str, str, str, datetime, float | None]] = [
    ("pue", EAST, "1d", _utc(25, 16), 1.31),  # 26 Nov, local midnight
    ("pue", EAST, "1d", _utc(26, 16), 1.22),  # 27 Nov
    ("pue", EAST, "1d", _utc(27, 16), None),  # 28 Nov: not over yet
    ("pue", SOUTH, "1d", _utc(26, 18, 30), 1.4),  # 27 Nov
    ("pue", EAST, "1h", _utc(28, 1), 1.27),  # 09:00 local
    ("pue", SOUTH, "1h", _utc(28, 3, 30), 1.45),  # 09:00 local
    ("pue", SOUTH, "1h", _utc(28, 4, 30), 1.5),  # 10:00 local
    ("pue", SOUTH, "15min", _utc(28, 4, 45), 1.9),  # 10:15 local
    ("ref", SOUTH, "1h", _utc(28, 3, 30), 0.25),
    ("ref", SOUTH, "1d", _utc(26, 18, 30), 0.5),
]
# Panel title: (measurement, window, scale of the drawn value).
PANELS = {
    "PUE per day": ("pue", "1d", 1.0),
    "PUE per hour": ("pue", "1h", 1.0),
    "Clean-energy share per hour (REF)": ("ref", "1h", 100.0),
}


def _lines() -> list[str]:
    """The figures as the ingest's derive stage formats them."""
    out = WindowOutput()
    for measurement, site, window, at, value in FIGURES:
        # An incomplete window is written without its ratio, with complete = 0.
        fields: Fields = (
            {"complete": 0.0} if value is None else {measurement: value, "complete": 1.0}
        )
        out.add(
            measurement, {"site": site, "window": window}, at, fields, complete=value is not None
        )
    return out.lines


def _expected(measurement: str, window: str, scale: float) -> set[tuple[str, str, float]]:
    return {
        (site, at.strftime("%Y-%m-%dT%H:%M:%SZ"), round(value * scale, 6))
        for m, site, w, at, value in FIGURES
        if m == measurement and w == window and value is not None
    }


@pytest.mark.parametrize("title", sorted(PANELS))
async def test_a_windowed_panel_draws_each_figure_at_its_window_start(
    influxdb: InfluxServer, influx_db: str, title: str
) -> None:
    async with httpx.AsyncClient(base_url=influxdb.url, trust_env=False) as http:
        response = await http.post("/write", params={"db": influx_db}, content="\n".join(_lines()))
        assert response.status_code == 204, response.text
    dashboard = all_dashboards()[dashboard_uid(Domain.DATACENTER)]
    (query,) = [q for t, _, q in panel_queries(dashboard) if t == title]
    text = expand(query, start=NOW - timedelta(days=7), end=NOW, variables={"site": [EAST, SOUTH]})
    series = await influx_query(influxdb.url, text, database=influx_db)
    drawn = {
        (s.tags["site"], row[0], round(row[1], 6))
        for s in series
        for row in s.values
        if row[1] is not None
    }
    assert drawn == _expected(*PANELS[title]), text
    # A window without its ratio is a gap, not a point with no value.
    assert all(row[1] is not None for s in series for row in s.values), text
