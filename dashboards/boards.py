"""Every ecotel dashboard by uid: one per domain and the fleet's."""

from collections.abc import Sequence
from typing import Any

from dashboards.domain import build_dashboard, dashboard_uid, to_json
from dashboards.fleet import UID as FLEET_UID
from dashboards.fleet import build_fleet
from dashboards.sites import Station, load_sites
from devices import Domain


def all_dashboards(stations: Sequence[Station] | None = None) -> dict[str, dict[str, Any]]:
    """uid -> Grafana JSON model, stations from the sites file unless given."""
    chosen = list(stations) if stations is not None else load_sites()
    boards = {dashboard_uid(d): to_json(build_dashboard(d, chosen)) for d in Domain}
    boards[FLEET_UID] = to_json(build_fleet())
    return boards


def domain_uids() -> list[str]:
    return [dashboard_uid(d) for d in Domain]
