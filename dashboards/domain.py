"""The frame every ecotel dashboard shares (variables site, gateway, device; links), and one dashboard per domain."""

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dashboards import datacenter, ecology, highway
from dashboards.panels import DATASOURCE, Panel, quantity_panel
from dashboards.sites import Station
from devices import Domain, kinds_in

TITLES = {
    Domain.ECOLOGY: "Sanjiangyuan ecological stations",
    Domain.HIGHWAY: "Smart highway",
    Domain.DATACENTER: "Data center energy and environment",
}

Section = tuple[str, Sequence[Panel]]
"""A row title and its panels."""


def dashboard_uid(domain: Domain) -> str:
    return f"ecotel-{domain.value}"


def measurements_regex(measurements: Sequence[str]) -> str:
    return "/^(" + "|".join(measurements) + ")$/"


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


def frame(
    uid: str, title: str, tags: Sequence[str], measurements: Sequence[str], *, devices: bool = True
) -> dash.Dashboard:
    """A dashboard with variables $site, $gateway (and $device) over ``measurements``, and links.

    The links carry the variables and the time range, so jumping from one
    dashboard to another keeps the station in view.
    """
    source = measurements_regex(measurements)
    builder = (
        dash.Dashboard(f"ecotel: {title}")
        .uid(uid)
        .tags(["ecotel", *tags])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            _variable("site", "Site", f'SHOW TAG VALUES FROM {source} WITH KEY = "site"')
        )
        .with_variable(
            _variable(
                "gateway",
                "Gateway",
                f'SHOW TAG VALUES FROM {source} WITH KEY = "gateway" WHERE "site" =~ /^$site$/',
            )
        )
    )
    if devices:
        builder = builder.with_variable(
            _variable(
                "device",
                "Device",
                f'SHOW TAG VALUES FROM {source} WITH KEY = "device" '
                'WHERE "site" =~ /^$site$/ AND "gateway" =~ /^$gateway$/',
            )
        )
    return builder.link(
        dash.DashboardLink("ecotel dashboards")
        .type(model.DashboardLinkType.DASHBOARDS)
        .tags(["ecotel"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


def add_sections(builder: dash.Dashboard, sections: Sequence[Section]) -> dash.Dashboard:
    for title, panels in sections:
        builder = builder.with_row(dash.Row(title))
        for panel in panels:
            builder = builder.with_panel(panel)
    return builder


def _extra_sections(domain: Domain, stations: Sequence[Station]) -> list[Section]:
    if domain is Domain.ECOLOGY:
        return ecology.sections(stations)
    if domain is Domain.HIGHWAY:
        return highway.sections()
    return datacenter.sections()


def build_dashboard(domain: Domain, stations: Sequence[Station]) -> model.Dashboard:
    """The domain's dashboard: its derived views first, then a row per catalog kind, a panel per quantity."""
    kinds = kinds_in(domain)
    builder = frame(dashboard_uid(domain), TITLES[domain], [domain.value], [k.kind for k in kinds])
    sections = _extra_sections(domain, stations)
    sections += [(k.title, [quantity_panel(k, q) for q in k.quantities()]) for k in kinds]
    return add_sections(builder, sections).build()


def to_json(board: model.Dashboard) -> dict[str, Any]:
    """A dashboard as Grafana's JSON model."""
    result: dict[str, Any] = json.loads(json.dumps(board, cls=JSONEncoder))
    # Stable panel ids: alert rules, links and previews refer to panels by id.
    for number, panel in enumerate(result.get("panels", []), start=1):
        panel["id"] = number
    return result
