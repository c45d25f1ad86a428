"""Configuration files: the shipped samples load, and every error names the file and the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import load_gateway_config
from collector.settings_loader import ConfigError
from pipelines.config import load_ingest_config

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
[gateway]
id = "gw-1"
site = "沱沱河 站"

[broker]
port = 1883

[[devices]]
id = "wq-1"
kind = "water_quality"
interval_s = 5
source = { type = "simulator", seed = 1 }
"""


@pytest.mark.parametrize("name", ["ecology.toml", "highway.toml", "datacenter.toml"])
def test_shipped_gateway_samples_load(name: str) -> None:
    settings = load_gateway_config(ROOT / "deploy" / "gateway" / name)
    assert settings.devices


def test_shipped_ingest_sample_loads() -> None:
    assert (
        load_ingest_config(ROOT / "deploy" / "ingest" / "ingest.toml").influx.database == "ecotel"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 1883", 'port = "x"', "broker.port: Input should be a valid integer"),
        ("port = 1883", "port = 1883\nspeed = 3", "broker.speed: Extra inputs are not permitted"),
        (
            'kind = "water_quality"',
            'kind = "toaster"',
            "devices.0.kind: Value error, unknown device kind 'toaster'",
        ),
        (
            'source = { type = "simulator", seed = 1 }',
            'source = { type = "modem" }',
            "devices.0.source",
        ),
        ('site = "沱沱河 站"', 'site = "a/b"', "gateway.site: String should match pattern"),
        (
            "interval_s = 5",
            "interval_s = 0",
            "devices.0.interval_s: Input should be greater than or equal to 0.05",
        ),
        (
            "seed = 1 }",
            "seed = 1, options = { altitude = 4000 } }",
            "devices.0: Value error, source.options.altitude: Extra inputs",
        ),
    ],
)
def test_gateway_config_errors_name_file_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD.replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_gateway_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_gateway_config(bad)
    # A directory given for the file (or one it may not read): named, not a traceback.
    with pytest.raises(ConfigError, match="cannot read the configuration file: Is a directory"):
        load_gateway_config(tmp_path)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD, encoding="utf-8")
    monkeypatch.setenv("ECOTEL_GW_BROKER__PORT", "1999")
    settings = load_gateway_config(path)
    assert settings.broker.port == 1999
    assert settings.gateway.site == "沱沱河 站"
    monkeypatch.setenv("ECOTEL_GW_BROKER__PORT", "many")
    with pytest.raises(ConfigError, match="ECOTEL_GW_BROKER__PORT"):
        load_gateway_config(path)


def test_the_gateway_command_reports_a_bad_file_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD.replace("port = 1883", "port = 0"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "collector", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "broker.port" in done.stderr
    assert str(path) in done.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp//x", "not an http:// or https:// address with a host"),
        ("127.0.0.1:8086", "not an http:// or https:// address with a host"),
        ("http://influx:80x6", "its port is not a number"),
    ],
)
def test_an_influx_url_that_cannot_work_is_named_at_start(
    tmp_path: Path, url: str, said: str
) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text(f'[influx]\nurl = "{url}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_ingest_config(path)
    assert str(path) in str(caught.value)
    assert f"influx.url: Value error, {said}" in str(caught.value)


def test_an_influx_url_of_http_or_https_with_a_host_loads(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    for url in ("http://127.0.0.1:8086", "https://influx.example:8086/", "http://[::1]:8086"):
        path.write_text(f'[influx]\nurl = "{url}"\n', encoding="utf-8")
        assert load_ingest_config(path).influx.url == url
