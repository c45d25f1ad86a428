"""ecotel's alert rules as code: InfluxQL query -> reduce -> threshold, one Grafana rule group per concern."""

from dataclasses import dataclass
from typing import Any, Literal

from dashboards import limits, names
from dashboards.alert_model import EXPRESSION_DATASOURCE_UID, AlertRulesFile
from dashboards.influxql import DATASOURCE_TYPE, DATASOURCE_UID

FOLDER = "ecotel"
GROUP_INTERVAL = "1m"

Reducer = Literal["last", "min", "max", "mean"]
Comparison = Literal["gt", "lt"]


@dataclass(frozen=True)
class AlertSpec:
    """One rule: its InfluxQL (GROUP BY the tags that name what fired), reduction and threshold."""

    uid: str
    group: str
    title: str
    query: str
    lookback_s: int
    reducer: Reducer
    comparison: Comparison
    threshold: float
    summary: str
    for_: str = "0s"
    severity: str = "warning"
    dashboard: str | None = None


def _by(*tags: str) -> str:
    return ", ".join(f'"{t}"' for t in tags)


SPECS: tuple[AlertSpec, ...] = (
    AlertSpec(
        uid="ecotel-gateway-offline",
        group="fleet",
        title="Gateway offline for 15 minutes",
        # Status is written on change only, so the lookback costs one point per change:
        # 400 d keeps a gateway lost for months offline (30 d let it resolve itself).
        query=f'SELECT last("online") FROM "{names.STATUS}" WHERE $timeFilter '
        f"GROUP BY {_by('site', 'gateway')}",
        lookback_s=limits.STATUS_LOOKBACK_D * 86_400,
        reducer="last",
        comparison="lt",
        threshold=1,
        for_=limits.OFFLINE_FOR,
        summary="Gateway {{ $labels.gateway }} at {{ $labels.site }} has been offline "
        f"for {limits.OFFLINE_FOR}",
        severity="critical",
        dashboard="ecotel-fleet",
    ),
    AlertSpec(
        uid="ecotel-device-failing",
        group="fleet",
        title="Device read errors for 15 minutes",
        # The gateway counts each failed read per device since its start (gateway_device_errors,
        # in every health report): a device that stops answering while its gateway stays online
        # shows here, where no reading of it arrives for the other rules to see. Increases are
        # summed (non_negative_difference), so a gateway restart (count back to 0) adds nothing.
        query=f'SELECT sum("new") FROM (SELECT non_negative_difference("errors") AS "new" '
        f'FROM "{names.DEVICE_ERRORS}" WHERE $timeFilter GROUP BY {_by("site", "gateway", "device")}) '
        f"GROUP BY {_by('site', 'gateway', 'device')}",
        lookback_s=limits.DEVICE_ERRORS_WINDOW_S,
        reducer="last",
        comparison="gt",
        threshold=0,
        # Errors that kept rising for this long, not a lone failed read.
        for_=limits.OFFLINE_FOR,
        summary="Device {{ $labels.device }} at {{ $labels.site }} (gateway "
        "{{ $labels.gateway }}): {{ $values.B.Value }} failed reads in the last "
        f"{limits.DEVICE_ERRORS_WINDOW_S // 60} min, read errors for {limits.OFFLINE_FOR}",
        dashboard="ecotel-fleet",
    ),
    AlertSpec(
        uid="ecotel-backlog-old",
        group="fleet",
        title="Oldest unsent reading older than an hour",
        query=f'SELECT last("oldest_unsent_age_s") FROM "{names.HEALTH}" WHERE $timeFilter '
        f"GROUP BY {_by('site', 'gateway')}",
        lookback_s=15 * 60,
        reducer="last",
        comparison="gt",
        threshold=limits.BACKLOG_MAX_AGE_S,
        summary="Gateway {{ $labels.gateway }} at {{ $labels.site }} holds a reading unsent "
        "for {{ humanizeDuration $values.B.Value }}",
        dashboard="ecotel-fleet",
    ),
    AlertSpec(
        uid="ecotel-pue-above-target",
        group="datacenter",
        title="PUE above target for a day",
        # The daily window's point is stamped at the day's start: up to 48 h back.
        query=f'SELECT last("{names.PUE_FIELD}") FROM "{names.PUE}" WHERE '
        f"\"{names.WINDOW_TAG}\" = '{names.DAY}' AND $timeFilter GROUP BY {_by('site')}",
        lookback_s=3 * 86_400,
        reducer="last",
        comparison="gt",
        threshold=limits.PUE_TARGET,
        summary='Data center {{ $labels.site }}: PUE {{ $values.B.Value | printf "%.3f" }} '
        f"over the last full day, above the target {limits.PUE_TARGET}",
        dashboard="ecotel-datacenter",
    ),
    AlertSpec(
        uid="ecotel-water-worse-than-iii",
        group="ecology",
        title="Water quality worse than class III",
        query=f'SELECT last("{names.WATER_CLASS_FIELD}") FROM "{names.WATER_CLASS}" '
        f"WHERE $timeFilter GROUP BY {_by('site', 'device')}",
        lookback_s=3_600,
        reducer="last",
        comparison="gt",
        threshold=limits.WATER_CLASS_LIMIT,
        # Derived per sample: one outlying parameter (a spike) must not declare the river
        # polluted; pollution lasts for more than two samples.
        for_=limits.WATER_CLASS_HOLD,
        summary="River at {{ $labels.site }} (sonde {{ $labels.device }}) is worse than "
        "GB 3838-2002 class III",
        severity="critical",
        dashboard="ecotel-ecology",
    ),
    AlertSpec(
        uid="ecotel-road-icing",
        group="highway",
        title="Road icing risk",
        query=f'SELECT last("{names.ICING_LEVEL_FIELD}") FROM "{names.ROAD_SAFETY}" '
        f"WHERE $timeFilter GROUP BY {_by('site', 'device')}",
        lookback_s=15 * 60,
        reducer="last",
        comparison="gt",
        threshold=0,
        # Derived per reading: a spike in surface temperature alone must not close a road.
        for_=limits.CRITICAL_HOLD,
        summary="Icing risk on the road at {{ $labels.site }} (station {{ $labels.device }})",
        severity="critical",
        dashboard="ecotel-highway",
    ),
    AlertSpec(
        uid="ecotel-low-visibility",
        group="highway",
        title="Visibility under 200 m",
        query='SELECT last("visibility") FROM "road_weather" WHERE $timeFilter '
        f"GROUP BY {_by('site', 'device')}",
        lookback_s=10 * 60,
        reducer="last",
        comparison="lt",
        threshold=limits.VISIBILITY_TIERS_M[-1],
        # Held over three evaluations: a lone reading the ingest flags as a spike (30 m among
        # 15,000 m) is the last one for one road-weather interval (two if a poll is missed),
        # and InfluxDB 1.6 cannot filter it out (a `quality !~ /spike/` condition also drops
        # the unflagged points, which have no quality field). Real fog persists.
        for_=limits.CRITICAL_HOLD,
        summary="Visibility {{ $values.B.Value }} m at {{ $labels.site }} (station "
        "{{ $labels.device }}): expressway limit 60 km/h or lower (art. 81)",
        severity="critical",
        dashboard="ecotel-highway",
    ),
    AlertSpec(
        uid="ecotel-battery-low",
        group="ecology",
        title="Station battery low",
        query='SELECT last("battery_voltage") FROM "station_health" WHERE $timeFilter '
        f"GROUP BY {_by('site', 'device')}",
        lookback_s=3_600,
        reducer="last",
        comparison="lt",
        threshold=limits.BATTERY_LOW_V,
        # A dip under a heater's load is not a failing battery.
        for_="10m",
        summary="Station {{ $labels.site }} battery ({{ $labels.device }}) at "
        f"{{{{ $values.B.Value }}}} V, under {limits.BATTERY_LOW_V} V",
        dashboard="ecotel-ecology",
    ),
)


def _query(spec: AlertSpec) -> dict[str, Any]:
    return {
        "refId": "A",
        "queryType": "",
        "relativeTimeRange": {"from": spec.lookback_s, "to": 0},
        "datasourceUid": DATASOURCE_UID,
        "model": {
            "refId": "A",
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "query": spec.query,
            "rawQuery": True,
            "resultFormat": "time_series",
            "intervalMs": 60_000,
            "maxDataPoints": 43_200,
        },
    }


def _expression(ref: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "refId": ref,
        "queryType": "",
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": EXPRESSION_DATASOURCE_UID,
        "model": {
            "refId": ref,
            "datasource": {"type": EXPRESSION_DATASOURCE_UID, "uid": EXPRESSION_DATASOURCE_UID},
            **model,
        },
    }


def rule(spec: AlertSpec) -> dict[str, Any]:
    """One rule as the provisioning file holds it: A (InfluxQL), B = reduce(A), C = threshold(B)."""
    data = [
        _query(spec),
        _expression(
            "B",
            {
                "type": "reduce",
                "expression": "A",
                "reducer": spec.reducer,
                "settings": {"mode": "dropNN"},
            },
        ),
        _expression(
            "C",
            {
                "type": "threshold",
                "expression": "B",
                "conditions": [
                    {"evaluator": {"type": spec.comparison, "params": [spec.threshold]}}
                ],
            },
        ),
    ]
    body: dict[str, Any] = {
        "uid": spec.uid,
        "title": spec.title,
        "condition": "C",
        "data": data,
        "noDataState": "OK",
        "execErrState": "Error",
        "for": spec.for_,
        "annotations": {"summary": spec.summary},
        "labels": {"severity": spec.severity, "team": "ecotel"},
        "isPaused": False,
    }
    if spec.dashboard:
        body["dashboardUid"] = spec.dashboard
    return body


def rules_file(specs: tuple[AlertSpec, ...] = SPECS) -> AlertRulesFile:
    """Every rule, grouped, validated against the provisioning format."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        groups.setdefault(spec.group, []).append(rule(spec))
    return AlertRulesFile.model_validate(
        {
            "apiVersion": 1,
            "groups": [
                {
                    "orgId": 1,
                    "name": f"ecotel-{name}",
                    "folder": FOLDER,
                    "interval": GROUP_INTERVAL,
                    "rules": rules,
                }
                for name, rules in groups.items()
            ],
        }
    )


def rules_document(specs: tuple[AlertSpec, ...] = SPECS) -> dict[str, Any]:
    """The file's content as plain data (aliases: ``for``, ``from``)."""
    return rules_file(specs).model_dump(by_alias=True, exclude_none=True)
