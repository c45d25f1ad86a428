"""TLS and credentials against a real Mosquitto: what works, and what fails at start naming its setting."""

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from collector.config import GatewaySettings
from collector.gateway import BrokerRefused, Gateway
from collector.wire import READINGS_FILTER
from tests.tls_material import TlsBroker, tls_broker_in

USER, PASSWORD = "tuotuohe-gw1", "s3cret-plateau"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsBroker]:
    async with tls_broker_in(tmp_path_factory.mktemp("tls"), USER, PASSWORD) as broker:
        yield broker


def _config(broker: TlsBroker, state_dir: Path, **broker_overrides: Any) -> dict[str, Any]:
    m = broker.material
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.tls_port,
        "username": USER,
        "password": PASSWORD,
        "reconnect_max_s": 0.3,
        "tls": {
            "ca_file": str(m.ca),
            "cert_file": str(m.client_cert),
            "key_file": str(m.client_key),
        },
    }
    settings.update(broker_overrides)
    return {
        "gateway": {
            "id": "tls-gw",
            "site": "Tuotuohe",
            "state_dir": str(state_dir),
            "batch_max_delay_s": 0.1,
        },
        "broker": settings,
        "devices": [
            {
                "id": "hydro-1",
                "kind": "hydrology",
                "interval_s": 0.1,
                "source": {"type": "simulator"},
            }
        ],
    }


def _toml(config: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return str(v).lower() if isinstance(v, bool) else str(v)

    lines = []
    for section in ("gateway", "broker"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in config[section].items()]
    for device in config["devices"]:
        lines.append("[[devices]]")
        lines += [f"{k} = {value(v)}" for k, v in device.items()]
    return "\n".join(lines) + "\n"


async def _run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_readings_flow_over_tls_with_client_certificate_and_password(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    gateway = Gateway(GatewaySettings(**_config(tls_broker, tmp_path)))
    # The observer uses the plain loopback listener: the topics are the broker's, not the listener's.
    async with aiomqtt.Client("127.0.0.1", tls_broker.server.port) as observer:
        await observer.subscribe(READINGS_FILTER, qos=1)
        task = asyncio.create_task(gateway.run())
        try:
            async with asyncio.timeout(20):
                message = await anext(aiomqtt_messages(observer))
        finally:
            gateway.stop()
            await task
    assert message.topic.value == "ecotel/v1/Tuotuohe/tls-gw/readings"
    assert gateway.stats.published > 0
    assert gateway.outbox.pending == 0


async def aiomqtt_messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    async for message in client.messages:
        yield message


async def test_wrong_password_fails_at_start_naming_the_setting(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    config_file = tmp_path / "gw.toml"
    config_file.write_text(
        _toml(_config(tls_broker, tmp_path / "state", password="not-the-password"))
    )
    code, err = await _run_cli("run", "--config", str(config_file))
    assert code == 78, err
    assert "broker.username / broker.password" in err
    assert str(config_file) in err


async def test_missing_credentials_fail_at_start(tls_broker: TlsBroker, tmp_path: Path) -> None:
    config = _config(tls_broker, tmp_path)
    del config["broker"]["username"], config["broker"]["password"]
    with pytest.raises(BrokerRefused, match=r"broker\.username / broker\.password \(none set"):
        async with asyncio.timeout(20):
            await Gateway(GatewaySettings(**config)).run()


async def test_certificate_from_another_ca_names_ca_file(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    config = _config(tls_broker, tmp_path)
    config["broker"]["tls"]["ca_file"] = str(tls_broker.material.other_ca)
    with pytest.raises(
        BrokerRefused, match=r"broker\.tls\.ca_file: the broker's certificate does not verify"
    ):
        async with asyncio.timeout(20):
            await Gateway(GatewaySettings(**config)).run()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"key_file": "/nonexistent/gateway.key"},
            "broker.tls.key_file: no such file /nonexistent/gateway.key",
        ),
        ({"cert_file": None}, "cert_file and key_file go together"),
        (
            "swap_key",
            "broker.tls.cert_file / broker.tls.key_file: certificate and key cannot be used together",
        ),
        ("ca_is_a_key", "broker.tls.ca_file: not a usable CA certificate"),
    ],
)
async def test_bad_certificate_files_fail_the_check_naming_the_setting(
    tls_broker: TlsBroker, tmp_path: Path, change: Any, expected: str
) -> None:
    config = _config(tls_broker, tmp_path)
    tls = config["broker"]["tls"]
    if change == "swap_key":
        tls["key_file"] = str(tls_broker.material.server_key)
    elif change == "ca_is_a_key":
        tls["ca_file"] = str(tls_broker.material.client_key)
    else:
        tls.update(change)
        config["broker"]["tls"] = {k: v for k, v in tls.items() if v is not None}
    config_file = tmp_path / "gw.toml"
    config_file.write_text(_toml(config))
    code, err = await _run_cli("check", "--config", str(config_file))
    assert code == 2, err
    assert expected in err
    assert str(config_file) in err


async def test_settings_that_worked_before_keep_collecting_when_the_broker_changes(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    config = _config(tls_broker, tmp_path)
    first = Gateway(GatewaySettings(**config))
    task = asyncio.create_task(first.run())
    async with asyncio.timeout(20):
        while first.stats.published == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    first.stop()
    await task
    # The broker's administrator rotates the password; the station is not told.
    material = tls_broker.material
    process = await asyncio.create_subprocess_exec(
        "mosquitto_passwd", "-b", str(material.password_file), USER, "rotated"
    )
    assert await process.wait() == 0
    await tls_broker.server.restart()
    try:
        second = Gateway(GatewaySettings(**config))
        task = asyncio.create_task(second.run())
        await asyncio.sleep(2.0)
        assert not task.done(), "a proven gateway must keep collecting when refused"
        assert second.stats.reconnects >= 2
        assert second.stats.polled > 0
        second.stop()
        await task
        assert second.outbox.pending >= second.stats.polled - 1  # everything kept for later
    finally:
        process = await asyncio.create_subprocess_exec(
            "mosquitto_passwd", "-b", str(material.password_file), USER, PASSWORD
        )
        await process.wait()
        await tls_broker.server.restart()
        with contextlib.suppress(Exception):
            pass


def test_a_dropped_link_is_not_taken_for_refused_credentials() -> None:
    # paho's MQTT_ERR_NO_CONN (4) on a publish shares its number with CONNACK code 4.
    from aiomqtt.exceptions import MqttConnectError

    from collector.broker_link import misconfiguration
    from collector.config import BrokerSettings

    broker = BrokerSettings(username="gw", password="x")
    assert misconfiguration(aiomqtt.MqttCodeError(4, "not connected"), broker) is None
    assert misconfiguration(aiomqtt.MqttError("Connection refused"), broker) is None
    refused = misconfiguration(MqttConnectError(4), broker)
    assert refused is not None
    assert refused.startswith("broker.username / broker.password")
