"""Expand a panel's InfluxQL the way Grafana does: $timeFilter, $__interval and template variables.

Used by the tests (and by anyone checking a dashboard without a Grafana) to run
exactly what Grafana would send to InfluxDB.
"""

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

# Grafana's kbn.roundInterval: (upper bound, rounded interval), milliseconds.
_ROUNDING = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000
# Grafana's escapeRegex, plus '/' because the value sits inside /.../.
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}|\[\[(\w+)\]\]")


def round_interval_ms(interval_ms: float) -> int:
    """Grafana's rounding of range / maxDataPoints to a friendly interval."""
    for bound, rounded in _ROUNDING:
        if interval_ms <= bound:
            return rounded
    return _YEAR_MS


def format_duration(ms: int) -> str:
    """An InfluxQL duration literal as Grafana writes it (500ms, 10s, 1m, 1h, 1d)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def interval_for(start: datetime, end: datetime, max_data_points: int, min_interval_ms: int) -> str:
    span_ms = (end - start).total_seconds() * 1000
    return format_duration(max(round_interval_ms(span_ms / max_data_points), min_interval_ms))


def regex_value(values: Sequence[str]) -> str:
    """A variable's value as Grafana writes it into an InfluxQL regex: escaped, several as (a|b)."""
    escaped = [_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), v) for v in values]
    if len(escaped) == 1:
        return escaped[0]
    return "(" + "|".join(escaped) + ")"


def expand(
    query: str,
    *,
    start: datetime,
    end: datetime,
    variables: Mapping[str, Sequence[str]],
    max_data_points: int = 1_000,
    min_interval_ms: int = 10_000,
) -> str:
    """The query Grafana would send; ``$tag_x`` aliases and unknown names are left alone.

    ``$__from`` and ``$__to`` (Grafana's global variables) are the range's ends in epoch ms.
    """
    start_ms = int(start.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000)
    text = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    for name, ms in (("__from", start_ms), ("__to", end_ms)):
        text = text.replace(f"${{{name}}}", str(ms)).replace(f"${name}", str(ms))
    interval = interval_for(start, end, max_data_points, min_interval_ms)
    text = text.replace("$__interval_ms", str(_parse_ms(interval))).replace("$__interval", interval)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            return match.group(0)
        return regex_value(variables[name])

    return _VARIABLE.sub(substitute, text)


def _parse_ms(duration: str) -> int:
    sizes = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)", duration).groups()  # type: ignore[union-attr]
    return int(number) * sizes[unit]


class Target(NamedTuple):
    """One InfluxDB target of a panel, with what Grafana needs to expand it."""

    panel_id: int
    title: str
    ref: str
    query: str
    min_interval_ms: int | None
    """The panel's own min interval, which replaces the datasource's (as in Grafana)."""


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, raw query) of every target of every panel, rows included."""
    return [(t.title, t.ref, t.query) for t in panel_targets(dashboard)]


def panel_targets(dashboard: Mapping[str, Any]) -> list[Target]:
    """Every InfluxDB target of every panel, rows included."""
    found: list[Target] = []
    for panel in _panels(dashboard.get("panels", [])):
        own = panel.get("interval")
        for target in panel.get("targets") or []:
            # Only InfluxDB targets reach InfluxDB (the map's station list is static CSV).
            if (target.get("datasource") or {}).get("type", "influxdb") != "influxdb":
                continue
            found.append(
                Target(
                    int(panel.get("id", 0)),
                    str(panel.get("title", "")),
                    str(target.get("refId", "")),
                    str(target.get("query", "")),
                    _parse_ms(str(own)) if own else None,
                )
            )
    return found


def variable_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, query) of each query variable, in dashboard order (later ones may use earlier ones)."""
    return [
        (str(v["name"]), str(v["query"]))
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "query"
    ]


def _panels(panels: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    flat: list[Mapping[str, Any]] = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels") or []))
    return flat
