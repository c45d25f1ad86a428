"""The device catalog: ranges at their boundaries, identifiers, and the doc generated from it."""

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from devices import KINDS, CatalogError, Identifier, check_values
from devices.catalog_doc import render_catalog_markdown

ROOT = Path(__file__).resolve().parent.parent
identifier = TypeAdapter(Identifier)


def test_wire_contract_doc_lists_the_catalog_as_coded() -> None:
    doc = (ROOT / "docs" / "wire-contract.md").read_text(encoding="utf-8")
    assert render_catalog_markdown() in doc, "run: python -m devices.catalog_doc and paste"


def test_every_quantity_has_a_unit_and_numeric_ones_a_range() -> None:
    for kind in KINDS.values():
        for q in kind.quantities():
            assert q.grafana_unit, (kind.kind, q.name)
            if not q.states:
                assert q.minimum is not None, (kind.kind, q.name)


def _weather(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "air_temperature": -12.5,
        "relative_humidity": 40.0,
        "air_pressure": 590.0,
        "wind_speed": 4.0,
        "wind_direction": 270.0,
        "precipitation": 0.0,
        "solar_radiation": 800.0,
    }
    values.update(overrides)
    return values


@pytest.mark.parametrize("value", [-60.0, 50.0, -60, 0])
def test_range_limits_are_inclusive(value: float) -> None:
    check_values("weather", None, _weather(air_temperature=value))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            _weather(air_temperature=-60.01),
            "air_temperature: Input should be greater than or equal to -60",
        ),
        (_weather(air_pressure=1100.5), "air_pressure: Input should be less than or equal to 1100"),
        (_weather(wind_speed="4"), "wind_speed: Input should be a valid number"),
        (_weather(wind_speed=True), "wind_speed: Input should be a valid number"),
        (_weather(solar_radiation=float("nan")), "solar_radiation"),
        (_weather(colour="blue"), "colour: Extra inputs are not permitted"),
        ({"air_temperature": 1.0}, "air_pressure: Field required"),
    ],
)
def test_invalid_values_name_the_field(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(CatalogError) as caught:
        check_values("weather", None, values)
    assert caught.value.code == "invalid_values"
    assert fragment in caught.value.detail


def test_channels_are_required_exactly_where_the_kind_has_them() -> None:
    rack = {"inlet_temperature": 22.0, "relative_humidity": 45.0}
    check_values("rack_environment", "A01", rack)
    with pytest.raises(CatalogError, match="bad_channel"):
        check_values("rack_environment", None, rack)
    with pytest.raises(CatalogError, match="bad_channel"):
        check_values("weather", "A01", _weather())
    meter = {"energy_kwh": 10.0, "active_power_kw": 1.0}
    with pytest.raises(CatalogError, match="bad_channel: circuit 'kitchen'"):
        check_values("energy_meter", "kitchen", meter)
    with pytest.raises(CatalogError, match="unknown_kind"):
        check_values("toaster", None, meter)


def test_lane_volume_beyond_capacity_is_refused() -> None:
    ok = {"interval_s": 60.0, "volume": 40.0, "mean_speed": 80.0, "occupancy": 12.0}
    check_values("traffic_detector", "1", ok)
    with pytest.raises(CatalogError, match="exceeds lane capacity"):
        check_values("traffic_detector", "1", {**ok, "volume": 100.0})


@pytest.mark.parametrize(
    "name", ["沱沱河", "沱沱河 水文站", "a", "G109 K3012", "x,y=z", 'say "hi"', "x$"]
)
def test_identifiers_accept_any_text_that_topics_and_tags_can_carry(name: str) -> None:
    assert identifier.validate_python(name) == name


@pytest.mark.parametrize(
    "name", ["", " lead", "trail ", "a/b", "a+b", "a#b", "$SYS", "a\\b", "a\nb", "x" * 65]
)
def test_identifiers_refuse_what_would_break_a_topic_or_a_line(name: str) -> None:
    with pytest.raises(ValidationError):
        identifier.validate_python(name)


@given(st.text(min_size=1, max_size=64))
def test_identifier_rule_is_exactly_the_documented_one(name: str) -> None:
    forbidden = re.compile(r"[\x00-\x1f\x7f/+#\\]")
    expected = (
        not forbidden.search(name)
        and not name.startswith("$")
        and name[0] != " "
        and name[-1] != " "
    )
    try:
        identifier.validate_python(name)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == expected, repr(name)
