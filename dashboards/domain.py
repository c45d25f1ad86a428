"""One dashboard per domain, built from the catalog: a row per kind, a panel per quantity."""

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dashboards.panels import DATASOURCE, quantity_panel
from devices import Domain, kinds_in

TITLES = {
    Domain.ECOLOGY: "Sanjiangyuan ecological stations",
    Domain.HIGHWAY: "Smart highway",
    Domain.DATACENTER: "Data center energy and environment",
}


def dashboard_uid(domain: Domain) -> str:
    return f"ecotel-{domain.value}"


def measurements_regex(domain: Domain) -> str:
    return "/^(" + "|".join(k.kind for k in kinds_in(domain)) + ")$/"


def _variable(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .multi(True)
        .include_all(True)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def build_dashboard(domain: Domain) -> model.Dashboard:
    """The domain's dashboard; a new kind or quantity in the catalog gets its panels here."""
    measurements = measurements_regex(domain)
    builder = (
        dash.Dashboard(f"ecotel: {TITLES[domain]}")
        .uid(dashboard_uid(domain))
        .tags(["ecotel", domain.value])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            _variable("site", "Site", f'SHOW TAG VALUES FROM {measurements} WITH KEY = "site"')
        )
        .with_variable(
            _variable(
                "device",
                "Device",
                f'SHOW TAG VALUES FROM {measurements} WITH KEY = "device" WHERE "site" =~ /^$site$/',
            )
        )
        .link(
            dash.DashboardLink("ecotel dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["ecotel"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )
    for kind in kinds_in(domain):
        builder = builder.with_row(dash.Row(kind.title))
        for quantity in kind.quantities():
            builder = builder.with_panel(quantity_panel(kind, quantity))
    return builder.build()


def dashboard_json(domain: Domain) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    encoded = json.dumps(build_dashboard(domain), cls=JSONEncoder)
    result: dict[str, Any] = json.loads(encoded)
    return result
