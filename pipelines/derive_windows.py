"""Per-window derived points (PUE, pPUE, REF, WUE, per-site traffic flow), recomputed from InfluxDB.

A window's figure is computed from the raw readings InfluxDB holds for it
(and its neighbours, for the counter at the window's edges) and written with
the window's start as timestamp, so recomputing overwrites. A result without
its ratio first deletes the stored point, so that no earlier number survives
beside ``complete=0``.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from pipelines.analytics.energy import (
    CounterReading,
    Issue,
    Window,
    WindowEnergy,
    efficiency_ratio,
    interval_energies,
    total_energy,
    window_bounds,
    window_energy,
)
from pipelines.analytics.road_safety import LaneTotals, site_flow_of_totals
from pipelines.config import InfluxSettings
from pipelines.derive_config import DatacenterSite, DeriveSettings, MeterRef, WaterMeterRef
from pipelines.derive_points import Fields, format_fields
from pipelines.derive_state import WindowKey
from pipelines.influx_query import query_influx
from pipelines.line_protocol import escape_measurement, escape_tag, moment_ns, timestamp_ns

DATACENTER = "datacenter"
TRAFFIC = "traffic"
PUE, PPUE, REF, WUE = "pue", "ppue", "ref", "wue"
SITE_FLOW = "traffic_flow_site"
TRAFFIC_WINDOWS = (Window.QUARTER_HOUR, Window.HOUR)
DATACENTER_WINDOWS = (Window.QUARTER_HOUR, Window.HOUR, Window.DAY)


@dataclass
class WindowOutput:
    """Lines to write, and the points to delete first (measurement, tags, time)."""

    lines: list[str] = field(default_factory=list)
    deletes: list[tuple[str, dict[str, str], datetime]] = field(default_factory=list)

    def add(
        self,
        measurement: str,
        tags: dict[str, str],
        at: datetime,
        fields: Fields,
        *,
        complete: bool,
    ) -> None:
        tag_text = ",".join(f"{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()))
        self.lines.append(
            f"{escape_measurement(measurement)},{tag_text} {format_fields(fields)} "
            f"{timestamp_ns(at)}"
        )
        if not complete:
            self.deletes.append((measurement, tags, at))


def quote(text: str) -> str:
    """An InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(text: str) -> str:
    """An InfluxQL quoted identifier."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rfc3339(moment: datetime) -> str:
    return quote(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _issues_text(issues: tuple[Issue, ...]) -> str:
    seen: dict[str, None] = {}
    for issue in issues:
        seen.setdefault(f"{issue.meter}:{issue.reason.value}", None)
    return ",".join(seen)


class WindowDeriver:
    """Computes the lines of one window from what InfluxDB holds."""

    def __init__(self, settings: DeriveSettings, influx: InfluxSettings) -> None:
        self.settings = settings
        self.influx = influx

    async def _query(self, text: str) -> list[tuple[dict[str, str], list[dict[str, object]]]]:
        series = await query_influx(self.influx, text, epoch="ns")
        return [(s.tags, s.rows()) for s in series]

    async def delete(self, measurement: str, tags: dict[str, str], at: datetime) -> None:
        where = " AND ".join(f"{ident(k)} = {quote(v)}" for k, v in sorted(tags.items()))
        await query_influx(
            self.influx,
            f"DELETE FROM {ident(measurement)} WHERE {where} AND time >= {rfc3339(at)} "
            f"AND time <= {rfc3339(at)}",
        )

    async def compute(self, key: WindowKey) -> WindowOutput:
        if key.family == DATACENTER:
            site = self.settings.datacenter(key.site)
            if site is None:
                return WindowOutput()  # no longer mapped: nothing to compute
            return await self.datacenter(site, key.window, key.start)
        if key.family == TRAFFIC:
            return await self.traffic(key.site, key.window, key.start)
        raise ValueError(f"unknown window family {key.family!r}")

    # --- data center -------------------------------------------------------------------

    async def _counter(
        self, measurement: str, fieldname: str, site: str, start: datetime, end: datetime
    ) -> dict[tuple[str, str], list[CounterReading]]:
        """Counter readings per (device, circuit or "") in [start, end], oldest first."""
        group = ', "circuit"' if measurement == "energy_meter" else ""
        found: dict[tuple[str, str], list[CounterReading]] = defaultdict(list)
        for tags, rows in await self._query(
            f"SELECT {ident(fieldname)} FROM {ident(measurement)} WHERE "
            f'"site" = {quote(site)} AND time >= {rfc3339(start)} AND time <= {rfc3339(end)} '
            f'GROUP BY "device"{group}'
        ):
            series = found[(tags.get("device", ""), tags.get("circuit", ""))]
            for row in rows:
                value = row[fieldname]
                if isinstance(value, int | float):
                    moment = moment_ns(int(row["time"]))  # type: ignore[call-overload]
                    series.append(CounterReading(time=moment, energy_kwh=float(value)))
        return found

    async def datacenter(self, site: DatacenterSite, window: Window, at: datetime) -> WindowOutput:
        start, end = window_bounds(at, window, site.tz)
        margin = self.settings.max_split
        energy = await self._counter(
            "energy_meter", "energy_kwh", site.site, start - margin, end + margin
        )

        def meter_energy(
            meter: MeterRef | WaterMeterRef, readings: list[CounterReading]
        ) -> WindowEnergy:
            intervals = interval_energies(readings, meter.meter)
            return window_energy(intervals, start, end, meter=meter.label, max_split=margin)

        def total(meters: list[MeterRef]) -> WindowEnergy:
            return total_energy(
                [meter_energy(m, energy.get((m.device, m.circuit), [])) for m in meters],
                start=start,
                end=end,
            )

        out = WindowOutput()
        tags = {"site": site.site, "window": window.value}
        facility, it = total(site.facility), total(site.it)
        pue, issues = efficiency_ratio(facility, it, denominator_meter="it", low=1.0, high=math.inf)
        fields: Fields = {"category": float(site.category)}
        _put(fields, "pue", pue)
        _put(fields, "facility_kwh", facility.energy_kwh)
        _put(fields, "it_kwh", it.energy_kwh)
        out.add(PUE, tags, start, _finish(fields, pue, issues), complete=pue is not None)

        for zone in site.zones:
            zone_it = total(zone.it)
            zone_all = total([*zone.it, *zone.infrastructure])
            ppue, zissues = efficiency_ratio(
                zone_all, zone_it, denominator_meter="it", low=1.0, high=math.inf
            )
            zfields: Fields = {}
            _put(zfields, "ppue", ppue)
            _put(zfields, "zone_kwh", zone_all.energy_kwh)
            _put(zfields, "it_kwh", zone_it.energy_kwh)
            out.add(
                PPUE,
                {**tags, "zone": zone.name},
                start,
                _finish(zfields, ppue, zissues),
                complete=ppue is not None,
            )

        if site.renewable:
            green = total(site.renewable)
            ref, rissues = efficiency_ratio(
                green, facility, denominator_meter="facility", low=0.0, high=1.0
            )
            rfields: Fields = {}
            _put(rfields, "ref", ref)
            _put(rfields, "renewable_kwh", green.energy_kwh)
            _put(rfields, "facility_kwh", facility.energy_kwh)
            out.add(REF, tags, start, _finish(rfields, ref, rissues), complete=ref is not None)

        if site.water:
            parts = []
            for meter in site.water:
                counters = await self._counter(
                    meter.measurement, meter.field, site.site, start - margin, end + margin
                )
                units = meter_energy(meter, counters.get((meter.device, ""), []))
                litres = (
                    None if units.energy_kwh is None else units.energy_kwh * meter.litres_per_unit
                )
                parts.append(units.model_copy(update={"energy_kwh": litres}))
            water = total_energy(parts, start=start, end=end)
            wue, wissues = efficiency_ratio(
                water, it, denominator_meter="it", low=0.0, high=math.inf
            )
            wfields: Fields = {}
            _put(wfields, "wue", wue)
            _put(wfields, "water_l", water.energy_kwh)
            _put(wfields, "it_kwh", it.energy_kwh)
            out.add(WUE, tags, start, _finish(wfields, wue, wissues), complete=wue is not None)
        return out

    # --- traffic -----------------------------------------------------------------------

    async def traffic(self, site: str, window: Window, at: datetime) -> WindowOutput:
        start, end = window_bounds(at, window, self.settings.highway_tz)
        lanes = (
            f'"site" = {quote(site)} AND time >= {rfc3339(start)} AND time < {rfc3339(end)} '
            'GROUP BY "device", "lane"'
        )
        # Summed per lane by InfluxDB: the raw rows of a busy site's hour would cost it
        # and us their JSON (2.2 MB and 78 ms of InfluxDB CPU for two hours of 80 lanes,
        # against 27 ms summed; docs/performance.md). Occupancy is weighted by each
        # count's interval; while a lane's intervals are all equal (nearly always) that
        # is the interval times the sum, without a subquery: 40-80 against 90-300 ms of
        # InfluxDB CPU per window of the benchmark's 80 lanes.
        totals: list[LaneTotals] = []
        for lane, row in await self._lane_rows(
            'SELECT sum("interval_s") AS "covered_s", sum("volume") AS "vehicles", '
            'min("interval_s") AS "shortest_s", max("interval_s") AS "longest_s", '
            f'sum("occupancy") AS "occupancy" FROM "traffic_detector" WHERE {lanes}'
        ):
            if row["longest_s"] != row["shortest_s"]:
                totals = []
                break
            totals.append(_lane_totals(lane, row, row["occupancy"] * row["shortest_s"]))
        else:
            return self._site_flow(site, window, start, end, totals)
        for lane, row in await self._lane_rows(
            'SELECT sum("interval_s") AS "covered_s", sum("volume") AS "vehicles", '
            'min("interval_s") AS "shortest_s", sum("w") AS "occupancy_s" FROM ('
            'SELECT "interval_s", "volume", "occupancy" * "interval_s" AS "w" '
            f'FROM "traffic_detector" WHERE {lanes}) GROUP BY "device", "lane"'
        ):
            totals.append(_lane_totals(lane, row, row["occupancy_s"]))
        return self._site_flow(site, window, start, end, totals)

    async def _lane_rows(self, query: str) -> list[tuple[str, dict[str, float]]]:
        """Each lane's ("device/lane") row of sums, its numbers as floats."""
        return [
            (
                f"{tags.get('device', '')}/{tags.get('lane', '')}",
                {k: float(v) for k, v in row.items() if k != "time"},  # type: ignore[arg-type]
            )
            for tags, rows in await self._query(query)
            for row in rows
        ]

    def _site_flow(
        self, site: str, window: Window, start: datetime, end: datetime, totals: list[LaneTotals]
    ) -> WindowOutput:
        out = WindowOutput()
        if not totals:
            return out
        flow = site_flow_of_totals(totals, (end - start).total_seconds(), self.settings.congestion)
        fields: Fields = {
            "flow_vph": flow.flow_vph,
            "vehicles": flow.vehicles,
            "lanes": float(flow.lanes),
            "coverage": flow.coverage,
            "mean_occupancy": flow.mean_occupancy,
            "congestion_level": float(flow.congestion_level),
            "complete": 1.0 if flow.complete else 0.0,
        }
        out.add(SITE_FLOW, {"site": site, "window": window.value}, start, fields, complete=True)
        return out


def _lane_totals(lane: str, row: dict[str, float], occupancy_s: float) -> LaneTotals:
    return LaneTotals(
        lane=lane,
        covered_s=row["covered_s"],
        vehicles=row["vehicles"],
        shortest_s=row["shortest_s"],
        occupancy_s=occupancy_s,
    )


def _put(fields: Fields, name: str, value: float | None) -> None:
    if value is not None:
        fields[name] = value


def _finish(fields: Fields, ratio: float | None, issues: tuple[Issue, ...]) -> Fields:
    fields["complete"] = 1.0 if ratio is not None else 0.0
    fields["issues"] = _issues_text(issues)
    return fields


_WINDOW_S = {Window.QUARTER_HOUR: 900, Window.HOUR: 3_600, Window.DAY: 86_400}


@lru_cache(maxsize=4_096)
def _window_key(family: str, site: str, window: Window, start_s: int) -> WindowKey:
    # Readings of one window recur thousands of times: build its key once.
    return WindowKey(family, site, window, datetime.fromtimestamp(start_s, UTC))


def _starts(epoch_s: float, offset_s: int, windows: tuple[Window, ...]) -> list[tuple[Window, int]]:
    """Window starts by arithmetic: exact for the fixed UTC offsets the settings allow, and
    ~20 times faster than window_bounds, which matters on the ingest's hot path."""
    return [
        (w, (math.floor(epoch_s) + offset_s) // _WINDOW_S[w] * _WINDOW_S[w] - offset_s)
        for w in windows
    ]


def window_kinds(settings: DeriveSettings) -> frozenset[str]:
    """The kinds keys_for_reading can find windows for: the others need not ask it."""
    if not settings.datacenters:
        return frozenset({"traffic_detector"})
    return frozenset({"traffic_detector", "energy_meter"} | settings.water_kinds)


def keys_for_reading(
    settings: DeriveSettings, site: str, kind: str, device: str, at: datetime
) -> set[WindowKey]:
    """The windows a reading can change: its own, and for counters the neighbours within
    max_split (the interval to the next or previous reading may straddle their edge)."""
    if kind == "traffic_detector":
        offset = round(settings.highway_utc_offset_h * 3_600)
        return {
            _window_key(TRAFFIC, site, w, start)
            for w, start in _starts(at.timestamp(), offset, TRAFFIC_WINDOWS)
        }
    if kind != "energy_meter" and not settings.water_kinds:
        return set()
    dc = settings.datacenter(site)
    if dc is None:
        return set()
    if kind != "energy_meter" and not any(
        w.measurement == kind and w.device == device for w in dc.water
    ):
        return set()
    epoch_s, margin = at.timestamp(), settings.max_split_s
    offset = round(dc.utc_offset_h * 3_600)
    return {
        _window_key(DATACENTER, site, w, start)
        for moment in (epoch_s - margin, epoch_s, epoch_s + margin)
        for w, start in _starts(moment, offset, DATACENTER_WINDOWS)
    }
