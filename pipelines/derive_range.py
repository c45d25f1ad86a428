"""Recompute derived measurements from what InfluxDB holds: one window, or a past time range
(after a rule is fixed or a meter map corrected); the code the stream uses."""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from devices import KINDS
from pipelines.analytics.energy import windows_between
from pipelines.derive_config import DeriveSettings
from pipelines.derive_points import SOURCE_KINDS, derived_line
from pipelines.derive_state import WindowKey
from pipelines.derive_windows import (
    DATACENTER,
    DATACENTER_WINDOWS,
    TRAFFIC,
    TRAFFIC_WINDOWS,
    WindowDeriver,
    WindowOutput,
    ident,
    quote,
    rfc3339,
)
from pipelines.influx_query import query_influx
from pipelines.influx_writer import InfluxWriter
from pipelines.line_protocol import moment_ns
from pipelines.points import Point

log = logging.getLogger("ecotel.ingest.derive")

DERIVE_TOPIC = "ecotel/derive"
"""The topic recorded with recomputed points (for counting and dead-lettering)."""

_CHUNK = timedelta(hours=6)
"""Raw readings are read back this much at a time, to bound memory."""


async def write_and_wait(writer: InfluxWriter, lines: list[str]) -> None:
    """Put lines through the ingest's writer; return once they are written or refused."""
    if not lines:
        return
    finished = asyncio.get_running_loop().create_future()

    def done() -> None:
        if not finished.done():
            finished.set_result(None)

    await writer.put(
        [Point(line, line.split(",", 1)[0], DERIVE_TOPIC, reading=False) for line in lines], done
    )
    # Someone waits for these: do not hold them for the batch timer.
    writer.flush_soon()
    await finished


async def rewrite_window(
    windows: WindowDeriver, writer: InfluxWriter, key: WindowKey
) -> WindowOutput:
    """Compute one window from InfluxDB and write it, deleting a stale figure first."""
    out = await windows.compute(key)
    for measurement, tags, at in out.deletes:
        await windows.delete(measurement, tags, at)
    await write_and_wait(writer, out.lines)
    return out


@dataclass
class RangeReport:
    """What a range recomputation wrote, updated as it goes (so that it can be shown)."""

    readings: int = 0
    windows: int = 0
    incomplete: int = 0
    """Windows written without a ratio (a meter missing, replaced or beyond max_split)."""
    chunks_done: int = 0
    chunks_total: int = 0
    windows_total: int = 0
    site_done: Counter[str] = field(default_factory=Counter)
    site_total: Counter[str] = field(default_factory=Counter)


async def recompute_range(
    settings: DeriveSettings,
    windows: WindowDeriver,
    writer: InfluxWriter,
    start: datetime,
    end: datetime,
    sites: set[str] | None = None,
    report: RangeReport | None = None,
) -> RangeReport:
    """Rewrite every derived point of [start, end) (of ``sites`` only, if given).

    ``report``, if given, is filled in as the work proceeds.
    """
    report = report if report is not None else RangeReport()
    keys = await _range_keys(settings, windows, start, end, sites)
    report.windows_total = len(keys)
    report.site_total.update(key.site for key in keys)
    report.chunks_total = -(-(end - start) // _CHUNK)
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(end, chunk_start + _CHUNK)
        for kind, measurement in SOURCE_KINDS.items():
            # Delete first, so that a field a fixed rule no longer writes does not linger; and
            # before reading the raw readings, so that a point the running ingest derives
            # meanwhile is either kept (written after the delete) or rewritten here (its
            # reading, written in the same request, is read after the delete).
            targets: list[str | None] = list(sites) if sites is not None else [None]
            for site in targets:
                where = f"time >= {rfc3339(chunk_start)} AND time < {rfc3339(chunk_end)}"
                if site is not None:
                    where += f' AND "site" = {quote(site)}'
                await query_influx(
                    windows.influx, f"DELETE FROM {ident(measurement)} WHERE {where}"
                )
            lines = await _reading_lines(settings, windows, kind, chunk_start, chunk_end, sites)
            await write_and_wait(writer, lines)
            report.readings += len(lines)
        report.chunks_done += 1
        chunk_start = chunk_end
    for key in keys:
        out = await rewrite_window(windows, writer, key)
        report.windows += 1
        report.site_done[key.site] += 1
        if out.deletes:
            report.incomplete += 1
    return report


async def _range_keys(
    settings: DeriveSettings,
    windows: WindowDeriver,
    start: datetime,
    end: datetime,
    sites: set[str] | None,
) -> list[WindowKey]:
    """Every window overlapping [start, end) of the data-center and traffic sites."""
    keys: list[WindowKey] = []
    for dc in settings.datacenters:
        if sites is None or dc.site in sites:
            for window in DATACENTER_WINDOWS:
                for w_start, _ in windows_between(start, end, window, dc.tz):
                    keys.append(WindowKey(DATACENTER, dc.site, window, w_start))
    for site in await _traffic_sites(windows):
        if sites is None or site in sites:
            for window in TRAFFIC_WINDOWS:
                for w_start, _ in windows_between(start, end, window, settings.highway_tz):
                    keys.append(WindowKey(TRAFFIC, site, window, w_start))
    return keys


async def _traffic_sites(windows: WindowDeriver) -> list[str]:
    series = await query_influx(
        windows.influx, 'SHOW TAG VALUES FROM "traffic_detector" WITH KEY = "site"'
    )
    return sorted({str(row[1]) for s in series for row in s.values})


async def _reading_lines(
    settings: DeriveSettings,
    windows: WindowDeriver,
    kind: str,
    start: datetime,
    end: datetime,
    sites: set[str] | None,
) -> list[str]:
    model = KINDS[kind]
    names = {q.name for q in model.quantities()}
    spec = model.channel
    where = f"time >= {rfc3339(start)} AND time < {rfc3339(end)}"
    if sites is not None:
        where += " AND (" + " OR ".join(f'"site" = {quote(s)}' for s in sorted(sites)) + ")"
    lines = []
    for series in await query_influx(
        windows.influx, f"SELECT * FROM {ident(kind)} WHERE {where} GROUP BY *", epoch="ns"
    ):
        tags = series.tags
        for row in series.rows():
            values = {k: v for k, v in row.items() if k in names and v is not None}
            # Stored readings passed the ingest's checks (maybe a site's own ranges): not re-judged.
            checked = model.model_construct(**values)
            moment = moment_ns(int(row["time"]))
            line = derived_line(
                site=tags["site"],
                gateway=tags["gateway"],
                device=tags["device"],
                channel=tags.get(spec.tag) if spec is not None else None,
                time=moment,
                values=checked,
                thresholds=settings.congestion,
            )
            if line is not None:
                lines.append(line)
    return lines
