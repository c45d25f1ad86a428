"""The generated dashboards: Grafana's model accepts them, every quantity has a panel, macros expand as Grafana does."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard
from hypothesis import given
from hypothesis import strategies as st

from dashboards.domain import dashboard_json
from dashboards.expand import expand, format_duration, panel_queries, regex_value, round_interval_ms
from dashboards.provisioning import write_provisioning
from devices import Domain, kinds_in

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("domain", list(Domain))
def test_dashboard_loads_into_grafanas_typed_model(domain: Domain) -> None:
    data = dashboard_json(domain)
    board = Dashboard.from_json(data)
    assert board.uid == f"ecotel-{domain.value}"
    assert [v.name for v in board.templating.list_val or []] == ["site", "device"]
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"]["uid"] == "ecotel-influxdb"
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("domain", list(Domain))
def test_every_quantity_of_every_kind_has_a_panel(domain: Domain) -> None:
    queries = [q for _, _, q in panel_queries(dashboard_json(domain))]
    for kind in kinds_in(domain):
        for quantity in kind.quantities():
            assert any(f'"{quantity.name}"' in q and f'FROM "{kind.kind}"' in q for q in queries), (
                kind.kind,
                quantity.name,
            )


def test_checked_in_provisioning_matches_the_generator(tmp_path: Path) -> None:
    written = write_provisioning(
        tmp_path,
        influx_url="http://127.0.0.1:8086",
        database="ecotel",
        dashboards_dir="/var/lib/grafana/dashboards/ecotel",
    )
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
