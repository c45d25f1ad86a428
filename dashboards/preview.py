"""An SVG preview of a generated dashboard: its panel layout and titles, with sparklines of real query results.

A preview drawn from the dashboard model, not a Grafana screenshot (no Grafana runs here).
"""

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import httpx

from dashboards.boards import all_dashboards
from dashboards.check import resolve_variables
from dashboards.expand import expand
from pipelines.influx_query import influx_query
from pipelines.influx_writer import InfluxError

CELL_W = 40
CELL_H = 26
WIDTH = 24 * CELL_W
COLORS = ("#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#b877d9", "#f2495c")

Series = list[tuple[float, float]]


def _sparkline(series: Sequence[Series], x: float, y: float, w: float, h: float) -> str:
    points = [p for s in series for p in s]
    if not points:
        return (
            f'<text x="{x + w / 2}" y="{y + h / 2}" fill="#888" font-size="12" '
            'text-anchor="middle">no data</text>'
        )
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = min(p[1] for p in points), max(p[1] for p in points)
    span_t, span_v = (t1 - t0) or 1.0, (v1 - v0) or 1.0
    parts = []
    for i, s in enumerate(series[: len(COLORS)]):
        coords = " ".join(
            f"{x + (t - t0) / span_t * w:.1f},{y + h - (v - v0) / span_v * h:.1f}" for t, v in s
        )
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{COLORS[i]}" stroke-width="1.5"/>'
        )
    parts.append(
        f'<text x="{x}" y="{y + h + 12}" fill="#aaa" font-size="10">{v0:.4g} .. {v1:.4g}</text>'
    )
    return "".join(parts)


def render_svg(dashboard: Mapping[str, Any], data: Mapping[int, Sequence[Series]]) -> str:
    """The dashboard's grid as SVG; ``data`` maps a panel id to its series (time, value)."""
    panels = dashboard.get("panels", [])
    bottom = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1)
    height = bottom * CELL_H + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif">',
        f'<rect width="{WIDTH}" height="{height}" fill="#111217"/>',
        f'<text x="8" y="22" fill="#ddd" font-size="16">{escape(dashboard["title"])}</text>',
        '<text x="8" y="40" fill="#888" font-size="11">Preview drawn from the dashboard model '
        "and real InfluxDB query results: not a Grafana screenshot.</text>",
    ]
    for panel in panels:
        g = panel["gridPos"]
        x, y = g["x"] * CELL_W + 2, g["y"] * CELL_H + 50
        w, h = g["w"] * CELL_W - 4, g["h"] * CELL_H - 4
        title = escape(str(panel.get("title", "")))
        if panel["type"] == "row":
            out.append(f'<text x="{x + 4}" y="{y + 18}" fill="#ddd" font-size="14">{title}</text>')
            continue
        out.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#181b1f" stroke="#2c3235"/>'
        )
        out.append(f'<text x="{x + 6}" y="{y + 16}" fill="#ccc" font-size="12">{title}</text>')
        out.append(
            f'<text x="{x + w - 6}" y="{y + 16}" fill="#666" font-size="10" '
            f'text-anchor="end">{escape(panel["type"])}</text>'
        )
        out.append(_sparkline(data.get(panel["id"], []), x + 8, y + 26, w - 16, h - 46))
    out.append("</svg>")
    return "\n".join(out)


async def panel_series(
    dashboard: Mapping[str, Any], influx_url: str, database: str, start: datetime, end: datetime
) -> dict[int, list[Series]]:
    """Each panel's first InfluxDB query, expanded as Grafana would, as (epoch s, value) series."""
    variables = await resolve_variables(dashboard, influx_url, database, start, end)
    found: dict[int, list[Series]] = {}
    for panel in dashboard.get("panels", []):
        targets = [
            t
            for t in panel.get("targets") or []
            if (t.get("datasource") or {}).get("type") == "influxdb"
        ]
        if not targets:
            continue
        text = expand(targets[0]["query"], start=start, end=end, variables=variables)
        try:
            result = await influx_query(influx_url, text, database=database, epoch="s")
        except Exception:
            continue
        series = []
        for s in result:
            rows = [(float(r[0]), float(r[1])) for r in s.values if isinstance(r[1], int | float)]
            if len(rows) == 1:
                rows = [(rows[0][0] - 1, rows[0][1]), rows[0]]
            series.append(rows)
        found[panel["id"]] = series
    return found


LONG_RANGE_HOURS = {"ecotel-datacenter": 72.0}
"""Dashboards drawn over days: PUE per day needs them."""


class PreviewError(Exception):
    """InfluxDB is unreachable, or refuses, or has not the database."""


async def _check_database(influx_url: str, database: str) -> None:
    # Asked first, so that a wrong URL or name is one message, not a failed panel query
    # (SHOW MEASUREMENTS would answer an empty list for a missing database).
    try:
        await influx_query(influx_url, "SHOW RETENTION POLICIES", database=database)
    except InfluxError as exc:
        if "database not found" in exc.body:
            raise PreviewError(
                f"InfluxDB at {influx_url} (--influx-url) has no database {database!r} (--database)"
            ) from None
        raise PreviewError(f"InfluxDB at {influx_url} (--influx-url): {exc}") from None
    except httpx.HTTPError as exc:
        raise PreviewError(f"InfluxDB at {influx_url} (--influx-url): {exc}") from None


async def render_previews(
    influx_url: str, database: str, *, hours: float = 1.0, now: datetime | None = None
) -> dict[str, str]:
    """uid -> SVG preview of each dashboard over the last ``hours`` (the data center over days).

    Raises ``PreviewError`` when InfluxDB cannot be read or has not ``database``.
    """
    await _check_database(influx_url, database)
    end = now or datetime.now(UTC)
    previews = {}
    for uid, board in all_dashboards().items():
        start = end - timedelta(hours=max(hours, LONG_RANGE_HOURS.get(uid, 0.0)))
        try:
            data = await panel_series(board, influx_url, database, start, end)
        except (httpx.HTTPError, InfluxError) as exc:
            raise PreviewError(
                f"dashboard {uid}: InfluxDB at {influx_url}, database {database!r}: {exc}"
            ) from None
        previews[uid] = render_svg(board, data)
    return previews


def write_previews(
    out_dir: Path, influx_url: str, database: str, *, hours: float = 1.0
) -> list[Path]:
    """One ``<uid>.svg`` per dashboard in ``out_dir``."""
    previews = asyncio.run(render_previews(influx_url, database, hours=hours))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, svg in previews.items():
        path = out_dir / f"{uid}.svg"
        path.write_text(svg, encoding="utf-8")
        written.append(path)
    return written
