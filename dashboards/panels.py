"""One Grafana panel per catalog quantity, with the quantity's unit, decimals, range and thresholds."""

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard as model

from dashboards.influxql import DATASOURCE_TYPE, DATASOURCE_UID, InfluxQL
from devices import KindValues, QuantitySpec, Role

DATASOURCE = model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
_SHARE_UNITS = {"percent", "humidity"}


# Grafana fills $site and $device with an escaped regex of the selected values.
SERIES_FILTER = 'WHERE "site" =~ /^$site$/ AND "device" =~ /^$device$/ AND $timeFilter'


def group_tags(kind: type[KindValues]) -> list[str]:
    tags = ["site", "device"]
    if kind.channel is not None:
        tags.append(kind.channel.tag)
    return tags


def quantity_query(kind: type[KindValues], q: QuantitySpec) -> str:
    """The InfluxQL of one quantity's panel: a mean per interval, energy per interval for counters."""
    tags = ", ".join(f'"{t}"' for t in group_tags(kind))
    where = SERIES_FILTER
    if q.role is Role.COUNTER:
        # A counter's level says nothing; what was used in each interval does.
        select = f'SELECT non_negative_difference(last("{q.name}"))'
    elif q.role is Role.STATE:
        select = f'SELECT last("{q.name}")'
    else:
        select = f'SELECT mean("{q.name}")'
    return f'{select} FROM "{kind.kind}" {where} GROUP BY time($__interval), {tags} fill(none)'


def quantity_alias(kind: type[KindValues]) -> str:
    return " ".join(f"$tag_{t}" for t in group_tags(kind))


def _thresholds(q: QuantitySpec) -> dash.ThresholdsConfig:
    steps = [model.Threshold(value=None, color="green")]
    if q.normal is not None:
        low, high = q.normal
        steps = [
            model.Threshold(value=None, color="red"),
            model.Threshold(value=low, color="green"),
            model.Threshold(value=high, color="red"),
        ]
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def quantity_panel(kind: type[KindValues], q: QuantitySpec) -> cogbuilder.Builder[model.Panel]:
    """The panel of one quantity: a time series, or a state timeline for categorical values."""
    unit_text = f" ({q.unit})" if q.unit else ""
    title = f"{q.title}{unit_text}"
    if q.role is Role.COUNTER:
        title = f"{q.title.replace(' (cumulative)', '')} per interval{unit_text}"
    target = InfluxQL(quantity_query(kind, q)).alias(quantity_alias(kind))
    panel: timeseries.Panel | statetimeline.Panel
    if q.role is Role.STATE:
        panel = statetimeline.Panel().unit(q.grafana_unit).decimals(q.decimals)
    else:
        panel = timeseries.Panel().unit(q.grafana_unit).decimals(q.decimals)
        # Fixed axes only for shares: a -60..50 degC axis would flatten every curve.
        if q.grafana_unit in _SHARE_UNITS and q.minimum is not None and q.maximum is not None:
            panel = panel.min(q.minimum).max(q.maximum)
        panel = panel.thresholds(_thresholds(q))
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
