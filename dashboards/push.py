"""Push the generated dashboards, datasources and alert rules to a running Grafana over its HTTP API.

Idempotent: each object is read first and written only when it differs; a dry
run prints what would change as a unified diff and writes nothing.
"""

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards.alerts import rules_document
from dashboards.boards import all_dashboards
from dashboards.ecology import STATIC_DATASOURCE_UID
from dashboards.influxql import DATASOURCE_UID

FOLDER_UID = "ecotel"
FOLDER_TITLE = "ecotel"


class PushError(Exception):
    """Grafana could not be reached, refused the credentials, or refused an object."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        self.auth = auth


def _failure(exc: Exception) -> PushError:
    if isinstance(exc, GrafanaException) and exc.status_code in (401, 403):
        name = "Unauthorized" if exc.status_code == 401 else "Forbidden"
        return PushError(f"refused the credentials (HTTP {exc.status_code} {name})", auth=True)
    if isinstance(exc, GrafanaException) and exc.status_code:
        return PushError(f"answered: {exc.message}")
    # The HTTP client's text is a nest of pools and object addresses: keep the OS's reason.
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return PushError(f"is unreachable: {errno.group(0) if errno else exc}")


@dataclass(frozen=True)
class Change:
    """One object pushed (or that would be): ``action`` is create, update or unchanged."""

    kind: str
    uid: str
    action: str
    diff: str = ""


def datasources(influx_url: str, database: str) -> list[dict[str, Any]]:
    """The datasources as the HTTP API takes them (the same as the provisioning file's)."""
    return [
        {
            "uid": DATASOURCE_UID,
            "name": "ecotel InfluxDB",
            "type": "influxdb",
            "access": "proxy",
            "url": influx_url,
            "database": database,
            "isDefault": True,
            "jsonData": {"dbName": database, "httpMode": "POST", "timeInterval": "10s"},
        },
        {
            "uid": STATIC_DATASOURCE_UID,
            "name": "ecotel static",
            "type": "grafana-testdata-datasource",
            "access": "proxy",
        },
    ]


def api_rules(folder_uid: str) -> list[dict[str, Any]]:
    """The alert rules in the provisioning API's shape (folderUID, ruleGroup, orgID per rule)."""
    found = []
    for group in rules_document()["groups"]:
        for rule in group["rules"]:
            found.append({**rule, "folderUID": folder_uid, "ruleGroup": group["name"], "orgID": 1})
    return found


def _diff(kind: str, uid: str, current: dict[str, Any] | None, wanted: dict[str, Any]) -> str:
    def lines(obj: dict[str, Any] | None) -> list[str]:
        if obj is None:
            return []
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).splitlines(True)

    return "".join(
        difflib.unified_diff(
            lines(current), lines(wanted), f"grafana/{kind}/{uid}", f"ecotel/{kind}/{uid}"
        )
    )


def _subset(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """What Grafana holds of the keys we set: it adds ids, versions and defaults of its own."""
    return {k: current.get(k) for k in wanted}


def _get(fetch: Callable[[], Any]) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = fetch()
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise
    return found


class Pusher:
    """Reconciles one Grafana with the generated objects."""

    def __init__(self, api: GrafanaApi, *, dry_run: bool) -> None:
        # grafana-client has no type hints: its calls are checked by the stand-in test.
        self.api: Any = api
        self.dry_run = dry_run
        self.changes: list[Change] = []

    def _apply(
        self,
        kind: str,
        uid: str,
        current: dict[str, Any] | None,
        wanted: dict[str, Any],
        create: Callable[[], Any],
        update: Callable[[], Any],
    ) -> None:
        if current is not None and current == wanted:
            self.changes.append(Change(kind, uid, "unchanged"))
            return
        action = "create" if current is None else "update"
        self.changes.append(Change(kind, uid, action, _diff(kind, uid, current, wanted)))
        if not self.dry_run:
            (create if current is None else update)()

    def folder(self) -> None:
        current = _get(lambda: self.api.folder.get_folder(FOLDER_UID))
        wanted = {"uid": FOLDER_UID, "title": FOLDER_TITLE}
        self._apply(
            "folder",
            FOLDER_UID,
            None if current is None else _subset(current, wanted),
            wanted,
            lambda: self.api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID),
            lambda: self.api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True),
        )

    def datasource(self, wanted: dict[str, Any]) -> None:
        uid = wanted["uid"]
        current = _get(lambda: self.api.datasource.get_datasource_by_uid(uid))
        self._apply(
            "datasource",
            uid,
            None if current is None else _subset(current, wanted),
            wanted,
            lambda: self.api.datasource.create_datasource(wanted),
            lambda: self.api.datasource.update_datasource_by_uid(uid, wanted),
        )

    def dashboard(self, uid: str, wanted: dict[str, Any]) -> None:
        found = _get(lambda: self.api.dashboard.get_dashboard(uid))
        current = None
        if found is not None:
            current = _subset(found.get("dashboard", {}), wanted)
            if found.get("meta", {}).get("folderUid") != FOLDER_UID:
                current["__folder"] = found.get("meta", {}).get("folderUid")
        body = {"dashboard": wanted, "folderUid": FOLDER_UID, "overwrite": True}
        body["message"] = "ecotel-dashboards push"

        def write() -> None:
            self.api.dashboard.update_dashboard(body)

        self._apply("dashboard", uid, current, wanted, write, write)

    def rule(self, wanted: dict[str, Any]) -> None:
        uid = wanted["uid"]
        current = _get(lambda: self.api.alertingprovisioning.get_alertrule(uid))
        self._apply(
            "alert-rule",
            uid,
            None if current is None else _subset(current, wanted),
            wanted,
            lambda: self.api.alertingprovisioning.create_alertrule(wanted),
            lambda: self.api.alertingprovisioning.update_alertrule(uid, wanted),
        )


def push(api: GrafanaApi, *, influx_url: str, database: str, dry_run: bool) -> list[Change]:
    """Folder, datasources, dashboards (into the folder), alert rules; what changed (or would).

    Raises ``PushError`` when Grafana is unreachable or refuses the credentials or an object.
    """
    pusher = Pusher(api, dry_run=dry_run)
    try:
        pusher.folder()
        for source in datasources(influx_url, database):
            pusher.datasource(source)
        for uid, board in all_dashboards().items():
            pusher.dashboard(uid, board)
        for rule in api_rules(FOLDER_UID):
            pusher.rule(rule)
    # grafana-client lets its HTTP client's connection errors (OSError) through unwrapped.
    except (GrafanaException, OSError) as exc:
        raise _failure(exc) from exc
    return pusher.changes
