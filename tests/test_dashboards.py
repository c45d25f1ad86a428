"""The generated dashboards: Grafana's model accepts them, every quantity has a panel, macros expand as Grafana does."""

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dashboards import limits
from dashboards.alert_model import AlertRulesFile
from dashboards.alerts import SPECS, rules_document
from dashboards.boards import all_dashboards
from dashboards.domain import dashboard_uid
from dashboards.expand import expand, format_duration, regex_value, round_interval_ms
from dashboards.fleet import UID as FLEET_UID
from dashboards.provisioning import read_alert_rules, write_provisioning
from dashboards.sites import load_sites
from devices import Domain, kinds_in
from pipelines.analytics.road_safety import VisibilityTier, low_visibility_rule

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
BOARDS = all_dashboards()
UIDS = sorted(BOARDS)


def _panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in data["panels"] if p["type"] != "row"]


def test_four_dashboards() -> None:
    assert sorted([*(dashboard_uid(d) for d in Domain), FLEET_UID]) == UIDS


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_loads_into_grafanas_typed_model(uid: str) -> None:
    data = BOARDS[uid]
    board = Dashboard.from_json(data)
    assert board.uid == uid
    names = [v.name for v in board.templating.list_val or []]
    assert names[:2] == ["site", "gateway"]
    assert uid == FLEET_UID or names == ["site", "gateway", "device"]
    ids = [p["id"] for p in data["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in _panels(data):
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"], panel["title"]
        assert "decimals" in defaults, panel["title"]
        assert defaults["thresholds"]["steps"], panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "ecotel-influxdb"
        # Every panel narrows to the chosen site (the fleet's ingest panels have no site).
        queries = [t["query"] for t in panel["targets"] if "query" in t]
        assert queries, panel["title"]
        if not any(
            f'FROM "{m}"' in q for q in queries for m in ("ingest_stats", "ingest_rejected")
        ):
            assert all("$site" in q for q in queries), panel["title"]


@pytest.mark.parametrize("domain", list(Domain))
def test_every_quantity_of_every_kind_has_a_panel_with_its_unit(domain: Domain) -> None:
    data = BOARDS[dashboard_uid(domain)]
    for kind in kinds_in(domain):
        for quantity in kind.quantities():
            found = [
                p
                for p in _panels(data)
                for t in p["targets"]
                if f'"{quantity.name}"' in t.get("query", "")
                and f'FROM "{kind.kind}"' in t.get("query", "")
            ]
            assert found, (kind.kind, quantity.name)
            units = {p["fieldConfig"]["defaults"]["unit"] for p in found}
            assert quantity.grafana_unit in units, (kind.kind, quantity.name, units)


def test_station_map_carries_the_configured_coordinates() -> None:
    geomap = next(p for p in BOARDS["ecotel-ecology"]["panels"] if p["type"] == "geomap")
    csv = next(t["csvContent"] for t in geomap["targets"] if "csvContent" in t)
    for station in load_sites():
        assert f'"{station.site}",' in csv
        assert f",{station.latitude},{station.longitude}," in csv
    layer = geomap["options"]["layers"][0]
    assert layer["location"] == {"mode": "coords", "latitude": "latitude", "longitude": "longitude"}
    assert geomap["transformations"][0]["options"]["byField"] == "site"


def test_fleet_links_a_station_to_its_data() -> None:
    table = next(p for p in BOARDS[FLEET_UID]["panels"] if p["type"] == "table")
    urls = [link["url"] for link in table["fieldConfig"]["defaults"]["links"]]
    assert "/d/ecotel-ecology?var-site=${__data.fields.site}&${__url_time_range}" in urls
    for uid in UIDS:
        link = BOARDS[uid]["links"][0]
        assert link["includeVars"], uid
        assert link["keepTime"], uid


def test_visibility_tiers_match_the_art_81_rule() -> None:
    for i, bound in enumerate(limits.VISIBILITY_TIERS_M):
        assert low_visibility_rule(bound).tier < low_visibility_rule(bound - 0.01).tier, bound
        assert low_visibility_rule(bound - 0.01).tier == VisibilityTier(3 - i)


def test_alert_rules_file_passes_the_provisioning_model() -> None:
    shipped = read_alert_rules(ROOT / "deploy/grafana/provisioning/alerting/ecotel.yaml")
    parsed = AlertRulesFile.model_validate(shipped)
    rules = [r for g in parsed.groups for r in g.rules]
    assert {r.uid for r in rules} == {s.uid for s in SPECS}
    assert len(rules) == 8
    for rule in rules:
        query = rule.data[0]
        assert query.datasourceUid == "ecotel-influxdb"
        assert "GROUP BY" in query.model["query"]
        assert "$timeFilter" in query.model["query"]
        assert [q.model.get("type") for q in rule.data[1:]] == ["reduce", "threshold"]
        assert {q.datasourceUid for q in rule.data[1:]} == {"__expr__"}
        summary = rule.annotations["summary"]
        assert "{{ $labels.site }}" in summary, rule.uid
        assert (
            "{{ $labels.device }}" in summary
            or "{{ $labels.gateway }}" in summary
            or (
                rule.uid
                == "ecotel-pue-above-target"  # PUE is per site: the data center is the device
            )
        ), rule.uid


@pytest.mark.parametrize(
    "broken",
    [
        lambda d: d.update(apiVersion=2),
        lambda d: d["groups"][0].pop("folder"),
        lambda d: d["groups"][0]["rules"][0].update(condition="Z"),
        lambda d: d["groups"][0]["rules"][0].update(forr="5m"),
        lambda d: d["groups"][0]["rules"][0].update({"for": "15 minutes"}),
        lambda d: d["groups"][0]["rules"][0]["data"][0]["model"].update(query=""),
        lambda d: d["groups"][0]["rules"][0]["data"][1]["model"].update(expression="Q"),
        lambda d: d["groups"][0]["rules"][0]["data"][0].pop("relativeTimeRange"),
    ],
)
def test_the_provisioning_model_refuses_broken_files(broken: Callable[[Any], None]) -> None:
    document = rules_document()
    AlertRulesFile.model_validate(document)
    broken(document)
    with pytest.raises(ValidationError):
        AlertRulesFile.model_validate(document)


def test_checked_in_provisioning_matches_the_generator(tmp_path: Path) -> None:
    written = write_provisioning(
        tmp_path,
        influx_url="http://127.0.0.1:8086",
        database="ecotel",
        dashboards_dir="/var/lib/grafana/dashboards/ecotel",
    )
    assert len(written) == 7
    for path in written:
        shipped = ROOT / "deploy" / "grafana" / path.relative_to(tmp_path)
        assert shipped.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{shipped} is stale: see deploy/grafana/README.md"
        )


def test_time_filter_and_interval_expand_as_grafana_does() -> None:
    query = 'SELECT mean("x") FROM "m" WHERE $timeFilter GROUP BY time($__interval)'
    end = START + timedelta(hours=6)
    text = expand(query, start=START, end=end, variables={}, max_data_points=1000)
    start_ms = int(START.timestamp() * 1000)
    # 6 h / 1000 points = 21.6 s, which Grafana rounds to 20 s.
    assert text == (
        f'SELECT mean("x") FROM "m" WHERE time >= {start_ms}ms and '
        f"time <= {start_ms + 6 * 3_600_000}ms GROUP BY time(20s)"
    )
    short = expand("$__interval", start=START, end=START + timedelta(minutes=5), variables={})
    assert short == "10s", "never below the datasource's minimum interval"


@pytest.mark.parametrize(
    ("ms", "rounded", "text"),
    [
        (21_600, 20_000, "20s"),
        (3_600, 5_000, "5s"),
        (61_000, 60_000, "1m"),
        (4_000_000, 3_600_000, "1h"),
        (700, 500, "500ms"),
        (100_000_000, 86_400_000, "1d"),
    ],
)
def test_interval_rounding(ms: int, rounded: int, text: str) -> None:
    assert round_interval_ms(ms) == rounded
    assert format_duration(rounded) == text


def test_variables_become_escaped_regexes() -> None:
    query = 'WHERE "site" =~ /^$site$/ AND "device" =~ /^${device}$/ ALIAS $tag_site'
    text = expand(
        query,
        start=START,
        end=START,
        variables={"site": ["沱沱河 水文站", "G109 K3012"], "device": ["a.b/c"]},
    )
    assert (
        text
        == r'WHERE "site" =~ /^(沱沱河 水文站|G109 K3012)$/ AND "device" =~ /^a\.b\/c$/ ALIAS $tag_site'
    )


@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4, unique=True),
    st.text(min_size=1, max_size=12),
)
def test_an_expanded_regex_matches_exactly_the_chosen_values(chosen: list[str], other: str) -> None:
    pattern = re.compile("^" + regex_value(chosen).replace("\\/", "/") + "$", re.DOTALL)
    for value in chosen:
        assert pattern.fullmatch(value)
    if other not in chosen:
        assert not pattern.fullmatch(other)
