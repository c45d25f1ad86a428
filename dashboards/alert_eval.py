"""Evaluate a provisioned alert rule the way Grafana does: InfluxQL query -> reduce -> threshold, then ``for``.

For tests and for checking rules without a Grafana: it reads the rule exactly
as provisioned (its data queries, expressions and pending period).
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dashboards.alert_model import EXPRESSION_DATASOURCE_UID
from dashboards.expand import expand
from pipelines.influx_query import influx_query

Labels = tuple[tuple[str, str], ...]
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_TEMPLATE = re.compile(r"\{\{\s*\$(labels|values)\.(\w+)(?:\.Value)?[^}]*\}\}")


@dataclass(frozen=True)
class Instance:
    """One alert instance: the series' labels, the reduced value, whether the condition holds."""

    labels: Labels
    value: float
    condition: bool


def duration(text: str) -> timedelta:
    return timedelta(seconds=sum(int(n) * _SECONDS[u] for n, u in _DURATION.findall(text)))


def _reduce(values: list[float], reducer: str) -> float:
    if not values:
        return math.nan
    if reducer == "last":
        return values[-1]
    if reducer == "min":
        return min(values)
    if reducer == "max":
        return max(values)
    if reducer == "mean":
        return sum(values) / len(values)
    raise ValueError(f"reducer {reducer!r} not supported here")


def _holds(value: float, evaluator: Mapping[str, Any]) -> bool:
    if math.isnan(value):
        return False
    params = [float(p) for p in evaluator["params"]]
    kind = evaluator["type"]
    if kind == "gt":
        return value > params[0]
    if kind == "lt":
        return value < params[0]
    if kind == "within_range":
        return params[0] < value < params[1]
    if kind == "outside_range":
        return value < params[0] or value > params[1]
    raise ValueError(f"threshold type {kind!r} not supported here")


async def evaluate(
    rule: Mapping[str, Any], influx_url: str, database: str, at: datetime
) -> list[Instance]:
    """The rule's instances at ``at``: every query run over its relative time range, then the expressions."""
    results: dict[str, dict[Labels, float | list[float]]] = {}
    for query in rule["data"]:
        ref, model = query["refId"], query["model"]
        if query["datasourceUid"] != EXPRESSION_DATASOURCE_UID:
            span = query["relativeTimeRange"]
            text = expand(
                model["query"],
                start=at - timedelta(seconds=span["from"]),
                end=at - timedelta(seconds=span["to"]),
                variables={},
                min_interval_ms=int(model.get("intervalMs", 1_000)),
            )
            frames: dict[Labels, float | list[float]] = {}
            for series in await influx_query(influx_url, text, database=database):
                labels = tuple(sorted(series.tags.items()))
                frames[labels] = [float(r[1]) for r in series.values if r[1] is not None]
            results[ref] = frames
        elif model["type"] == "reduce":
            source = results[model["expression"]]
            results[ref] = {
                k: _reduce(v if isinstance(v, list) else [v], model["reducer"])
                for k, v in source.items()
            }
        elif model["type"] == "threshold":
            source = results[model["expression"]]
            evaluator = model["conditions"][0]["evaluator"]
            results[ref] = {
                k: float(_holds(v if isinstance(v, float) else math.nan, evaluator))
                for k, v in source.items()
            }
        else:
            raise ValueError(f"expression type {model['type']!r} not supported here")
    condition = results[rule["condition"]]
    reduced = next(
        (results[q["refId"]] for q in rule["data"] if q["model"].get("type") == "reduce"), {}
    )
    return [
        Instance(labels, float(reduced.get(labels, math.nan)), bool(holds))  # type: ignore[arg-type]
        for labels, holds in sorted(condition.items())
    ]


async def firing(
    rule: Mapping[str, Any],
    influx_url: str,
    database: str,
    now: datetime,
    *,
    interval: timedelta = timedelta(minutes=1),
) -> dict[Labels, Instance]:
    """Instances Grafana would have firing at ``now``: the condition held at every evaluation over ``for``."""
    pending = duration(str(rule.get("for", "0s")))
    steps = int(pending / interval)
    held: dict[Labels, Instance] | None = None
    for i in range(steps, -1, -1):
        found = {
            x.labels: x
            for x in await evaluate(rule, influx_url, database, now - i * interval)
            if x.condition
        }
        held = found if held is None else {k: v for k, v in found.items() if k in held}
    return held or {}


def render(template: str, instance: Instance) -> str:
    """A summary with ``{{ $labels.x }}`` and ``{{ $values.B... }}`` filled in (Go template subset)."""
    labels = dict(instance.labels)

    def fill(match: re.Match[str]) -> str:
        if match.group(1) == "labels":
            return labels.get(match.group(2), "")
        return f"{instance.value:g}"

    return _TEMPLATE.sub(fill, template)
