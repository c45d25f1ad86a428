"""Run every panel of the generated dashboards against a real InfluxDB, as Grafana would, and report what shows nothing."""

from datetime import datetime

from dashboards.domain import dashboard_json
from dashboards.expand import expand, panel_queries, variable_queries
from devices import Domain
from pipelines.influx_query import influx_query


async def resolve_variables(
    dashboard: dict[str, object], influx_url: str, database: str, start: datetime, end: datetime
) -> dict[str, list[str]]:
    """Each variable set to All: its values from its own query, as Grafana fills the picker."""
    values: dict[str, list[str]] = {}
    for name, query in variable_queries(dashboard):
        text = expand(query, start=start, end=end, variables=values)
        series = await influx_query(influx_url, text, database=database)
        values[name] = sorted({str(row[1]) for s in series for row in s.values})
    return values


async def check_panels(
    influx_url: str, database: str, start: datetime, end: datetime, *, min_interval_ms: int = 10_000
) -> list[str]:
    """Problems found: a panel whose query fails, returns no series, or only nulls. Empty is good.

    ``min_interval_ms`` is the datasource's minimum interval; it should match the
    gateways' poll interval, as the provisioned datasource's does (10 s).
    """
    problems: list[str] = []
    for domain in Domain:
        dashboard = dashboard_json(domain)
        variables = await resolve_variables(dashboard, influx_url, database, start, end)
        for name, found in variables.items():
            if not found:
                problems.append(f"{domain.value}: variable ${name} has no values")
        for title, ref, query in panel_queries(dashboard):
            text = expand(
                query, start=start, end=end, variables=variables, min_interval_ms=min_interval_ms
            )
            try:
                series = await influx_query(influx_url, text, database=database)
            except Exception as exc:
                problems.append(f"{domain.value} / {title} [{ref}]: {exc} -- {text}")
                continue
            values = [v for s in series for row in s.values for v in row[1:] if v is not None]
            if not values:
                problems.append(f"{domain.value} / {title} [{ref}]: no data -- {text}")
    return problems
