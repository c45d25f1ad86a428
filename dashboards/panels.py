"""Grafana panels: one per catalog quantity (unit, decimals, range, thresholds from the catalog), and the derived ones."""

import math
from collections.abc import Sequence

from grafana_foundation_sdk.builders import common, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model

from dashboards.influxql import DATASOURCE_TYPE, DATASOURCE_UID, InfluxQL
from devices import KindValues, QuantitySpec, Role

DATASOURCE = model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
_SHARE_UNITS = {"percent", "humidity"}

# Grafana fills $site, $gateway and $device with an escaped regex of the selected values.
SITE_FILTER = 'WHERE "site" =~ /^$site$/ AND $timeFilter'
GATEWAY_FILTER = 'WHERE "site" =~ /^$site$/ AND "gateway" =~ /^$gateway$/ AND $timeFilter'
SERIES_FILTER = (
    'WHERE "site" =~ /^$site$/ AND "gateway" =~ /^$gateway$/ AND "device" =~ /^$device$/ '
    "AND $timeFilter"
)

Step = tuple[float | None, str]
"""A threshold step: from this value (None: from minus infinity) on, this colour."""

Panel = cogbuilder.Builder[model.Panel]


def group_tags(kind: type[KindValues]) -> list[str]:
    tags = ["site", "device"]
    if kind.channel is not None:
        tags.append(kind.channel.tag)
    return tags


def quantity_query(kind: type[KindValues], q: QuantitySpec) -> str:
    """The InfluxQL of one quantity's panel: a mean per interval, the last for states and counters."""
    tags = ", ".join(f'"{t}"' for t in group_tags(kind))
    if q.role is Role.STATE or q.role is Role.COUNTER:
        # A counter as read: a difference of readings would count a replaced meter's start or a
        # gap's hours as one interval's use; per-window use is a derived figure (datacenter.py).
        select = f'SELECT last("{q.name}")'
    else:
        select = f'SELECT mean("{q.name}")'
    return (
        f'{select} FROM "{kind.kind}" {SERIES_FILTER} GROUP BY time($__interval), {tags} fill(none)'
    )


def quantity_alias(kind: type[KindValues]) -> str:
    return " ".join(f"$tag_{t}" for t in group_tags(kind))


def thresholds(steps: Sequence[Step]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def above(limit: float) -> float:
    """Where a step for "over ``limit``" starts: Grafana colours a value by the last step at or
    under it, so a step at the limit itself would paint the limit (pH 9.0, PUE 1.25) red."""
    return math.nextafter(limit, math.inf)


def quantity_steps(q: QuantitySpec) -> list[Step]:
    """Red outside the catalog's normal range, green inside (both ends included); green throughout
    when it has none."""
    if q.normal is None:
        return [(None, "green")]
    low, high = q.normal
    return [(None, "red"), (low, "green"), (above(high), "red")]


def _drawn(panel: timeseries.Panel, steps: Sequence[Step]) -> timeseries.Panel:
    """Thresholds drawn as lines on the graph wherever there is more than one colour."""
    if len(steps) < 2:
        return panel
    style = common.GraphThresholdsStyleConfig().mode(common_model.GraphTresholdsStyleMode.LINE)
    return panel.thresholds_style(style)


def value_mappings(labels: dict[int, tuple[str, str]]) -> list[model.ValueMapping]:
    """Numbers shown as words and colours (a water class as "III", an icing level as "risk")."""
    options = {
        str(value): model.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(sorted(labels.items()))
    }
    return [model.ValueMap(options=options)]


def quantity_panel(kind: type[KindValues], q: QuantitySpec) -> Panel:
    """The panel of one quantity: a time series, or a state timeline for categorical values."""
    unit_text = f" ({q.unit})" if q.unit else ""
    title = f"{q.title}{unit_text}"
    if q.role is Role.COUNTER:
        title = f"{q.title.replace(' (cumulative)', '')} meter reading{unit_text}"
    target = InfluxQL(quantity_query(kind, q)).alias(quantity_alias(kind))
    panel: timeseries.Panel | statetimeline.Panel
    if q.role is Role.STATE:
        panel = statetimeline.Panel().unit(q.grafana_unit).decimals(q.decimals)
        panel = panel.thresholds(thresholds([(None, "blue")]))
    else:
        panel = timeseries.Panel().unit(q.grafana_unit).decimals(q.decimals)
        # Fixed axes only for shares: a -60..50 degC axis would flatten every curve.
        if q.grafana_unit in _SHARE_UNITS and q.minimum is not None and q.maximum is not None:
            panel = panel.min(q.minimum).max(q.maximum)
        steps = quantity_steps(q)
        panel = _drawn(panel.thresholds(thresholds(steps)), steps)
    return (
        panel.title(title)
        .description(
            f"{kind.title}: {q.title}, {q.unit or 'state'} (field {q.name} of {kind.kind})"
        )
        .datasource(DATASOURCE)
        .with_target(target)
        .height(8)
        .span(12)
    )


def series_panel(
    title: str,
    description: str,
    query: str,
    *,
    alias: str,
    unit: str,
    decimals: int,
    steps: Sequence[Step],
    mappings: dict[int, tuple[str, str]] | None = None,
    span: int = 12,
) -> timeseries.Panel:
    """A time series of a derived or health quantity, with its unit, decimals and thresholds."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query).alias(alias))
        .unit(unit)
        .decimals(decimals)
        .thresholds(thresholds(steps))
        .height(8)
        .span(span)
    )
    panel = _drawn(panel, steps)
    if mappings:
        panel = panel.mappings(value_mappings(mappings))
    return panel


def state_panel(
    title: str,
    description: str,
    query: str,
    *,
    alias: str,
    steps: Sequence[Step],
    mappings: dict[int, tuple[str, str]],
    span: int = 12,
) -> statetimeline.Panel:
    """A state timeline of a coded value (class, level, tier), its codes shown as words."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query).alias(alias))
        .unit("none")
        .decimals(0)
        .thresholds(thresholds(steps))
        .mappings(value_mappings(mappings))
        .height(8)
        .span(span)
    )


def stat_panel(
    title: str,
    description: str,
    query: str,
    *,
    alias: str,
    unit: str,
    decimals: int,
    steps: Sequence[Step],
    span: int = 6,
) -> stat.Panel:
    """One number (the latest), coloured by thresholds."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query).alias(alias))
        .unit(unit)
        .decimals(decimals)
        .thresholds(thresholds(steps))
        .height(5)
        .span(span)
    )


def table_panel(
    title: str,
    description: str,
    query: str,
    *,
    unit: str,
    decimals: int,
    steps: Sequence[Step],
    links: Sequence[tuple[str, str]] = (),
    span: int = 24,
) -> table.Panel:
    """A table (one row per series, tags as columns); ``links`` are (title, url) data links."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query).table())
        .unit(unit)
        .decimals(decimals)
        .thresholds(thresholds(steps))
        .height(8)
        .span(span)
    )
    if links:
        panel = panel.data_links([dash.DashboardLink(t).url(u) for t, u in links])
    return panel
