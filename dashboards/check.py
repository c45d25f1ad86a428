"""Run every panel of the generated dashboards against a real InfluxDB, as Grafana would, and report what shows nothing."""

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from dashboards.boards import all_dashboards, domain_uids
from dashboards.expand import expand, panel_targets, variable_queries
from pipelines.influx_query import influx_query


async def resolve_variables(
    dashboard: Mapping[str, Any], influx_url: str, database: str, start: datetime, end: datetime
) -> dict[str, list[str]]:
    """Each variable set to All: its values from its own query, as Grafana fills the picker."""
    values: dict[str, list[str]] = {}
    for name, query in variable_queries(dashboard):
        text = expand(query, start=start, end=end, variables=values)
        series = await influx_query(influx_url, text, database=database)
        values[name] = sorted({str(row[1]) for s in series for row in s.values})
    return values


async def check_panels(
    influx_url: str,
    database: str,
    start: datetime,
    end: datetime,
    *,
    min_interval_ms: int = 10_000,
    uids: list[str] | None = None,
    skip_measurements: Collection[str] = (),
    variables: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Problems found: a query that fails, a panel whose queries return no series or only nulls.
    Empty is good.

    ``min_interval_ms`` is the datasource's minimum interval; it should match the
    gateways' poll interval, as the provisioned datasource's does (10 s).
    ``uids`` are the dashboards to check (default: the three domain dashboards);
    panels reading one of ``skip_measurements`` are not run (for a run too short
    to fill them, such as an hour's PUE). ``variables`` picks template variables' values
    (as an operator would); a variable not named there is set to All.
    """
    problems: list[str] = []
    boards = all_dashboards()
    for uid in uids or domain_uids():
        dashboard = boards[uid]
        chosen = await resolve_variables(dashboard, influx_url, database, start, end)
        for name, found in chosen.items():
            if not found:
                problems.append(f"{uid}: variable ${name} has no values")
        chosen |= {k: list(v) for k, v in (variables or {}).items() if k in chosen}
        shown: dict[int, list[str]] = {}  # panel id: its empty targets, or [] once one shows
        for target in panel_targets(dashboard):
            title, ref, query = target.title, target.ref, target.query
            if any(f'FROM "{m}"' in query for m in skip_measurements):
                continue
            text = expand(
                query,
                start=start,
                end=end,
                variables=chosen,
                min_interval_ms=target.min_interval_ms or min_interval_ms,
            )
            try:
                series = await influx_query(influx_url, text, database=database)
            except Exception as exc:
                problems.append(f"{uid} / {title} [{ref}]: {exc} -- {text}")
                continue
            values = [v for s in series for row in s.values for v in row[1:] if v is not None]
            empty = shown.setdefault(
                target.panel_id, [f"{uid} / {title} [{ref}]: no data -- {text}"]
            )
            if values:
                empty.clear()
        # A panel shows something when one of its targets does (spikes but no stuck gauge).
        problems.extend(p for empty in shown.values() for p in empty[:1])
    return problems
