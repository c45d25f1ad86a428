"""The [derive] section: the sample's meter map fits the sample data-center gateway; bad maps are
refused naming the key."""

from pathlib import Path

import pytest

from collector.config import load_gateway_config
from collector.settings_loader import ConfigError, build_settings
from pipelines.analytics.energy import PueCategory
from pipelines.config import IngestSettings, load_ingest_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_sample_meter_map_names_circuits_the_sample_gateway_meters() -> None:
    derive = load_ingest_config(ROOT / "deploy" / "ingest" / "ingest.toml").derive
    gateway = load_gateway_config(ROOT / "deploy" / "gateway" / "datacenter.toml")
    metered = {
        (device.id, circuit)
        for device in gateway.devices
        if device.kind == "energy_meter"
        for circuit in device.source.options["circuits"]  # type: ignore[union-attr]
    }
    (site,) = derive.datacenters
    assert site.site == gateway.gateway.site
    assert {(m.device, m.circuit) for m in site.energy_meters()} <= metered
    assert site.category is PueCategory.PUE1


def _derive(**site: object) -> dict[str, object]:
    meter = {"device": "m", "max_power_kw": 100}
    base: dict[str, object] = {
        "site": "dc",
        "facility": [{**meter, "circuit": "utility"}],
        "it": [{**meter, "circuit": "pdu_output"}],
    }
    return {"derive": {"datacenters": [{**base, **site}]}}


@pytest.mark.parametrize(
    ("site", "key", "message"),
    [
        (
            {"it": [{"device": "m", "circuit": "cooling", "max_power_kw": 1}]},
            "derive.datacenters.0.it",
            "does not measure IT energy",
        ),
        (
            {
                "it": [
                    {"device": "a", "circuit": "pdu_output", "max_power_kw": 1},
                    {"device": "b", "circuit": "it_load", "max_power_kw": 1},
                ]
            },
            "derive.datacenters.0.it",
            "one PUE category needs them all at one",
        ),
        (
            {"facility": [{"device": "m", "circuit": "mains", "max_power_kw": 1}]},
            "derive.datacenters.0.facility.0.circuit",
            "unknown circuit 'mains'",
        ),
        (
            {"facility": [{"device": "m", "circuit": "utility", "max_power_kw": 0}]},
            "derive.datacenters.0.facility.0.max_power_kw",
            "greater than 0",
        ),
        (
            {"facility": [{"device": "m", "circuit": "utility", "max_power_kw": 1}] * 2},
            "derive.datacenters.0.facility",
            "meter listed twice: m:utility",
        ),
    ],
)
def test_a_bad_meter_map_is_refused_naming_the_key(
    site: dict[str, object], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(IngestSettings, _derive(**site), source="test.toml")
    text = str(caught.value)
    assert f"[key {key}" in text
    assert message in text


def test_the_it_meters_position_is_the_pue_category() -> None:
    settings = build_settings(IngestSettings, _derive(), source="test.toml")
    assert settings.derive.datacenters[0].category is PueCategory.PUE2
