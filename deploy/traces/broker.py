"""Broker connections for the trace commands: the gateway's broker settings (credentials, TLS), MQTT 3.1.1 or 5."""

import ssl
import uuid
from pathlib import Path
from typing import Literal

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from pydantic import ValidationError

from collector.broker_link import tls_context
from collector.config import BrokerSettings
from collector.settings_loader import ConfigError, read_toml

MqttVersion = Literal["3.1.1", "5"]
_PROTOCOLS = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}


def broker_from_file(path: Path) -> BrokerSettings:
    """The ``[broker]`` table of a TOML file (a gateway configuration works as it is)."""
    data = read_toml(path)
    try:
        return BrokerSettings.model_validate(data.get("broker", {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"broker.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"{path}: {problems}") from None


def broker_url(broker: BrokerSettings) -> str:
    scheme = "mqtts" if broker.tls is not None else "mqtt"
    return f"{scheme}://{broker.host}:{broker.port}"


def make_client(
    broker: BrokerSettings,
    *,
    version: MqttVersion,
    purpose: str,
    context: ssl.SSLContext | None,
    max_inflight: int | None = None,
) -> aiomqtt.Client:
    """A clean-session aiomqtt client with the broker's credentials and TLS."""
    client_id = broker.client_id or f"ecotel-trace-{purpose}-{uuid.uuid4().hex[:8]}"
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id,
        protocol=_PROTOCOLS[version],
        keepalive=broker.keepalive_s,
        username=broker.username,
        password=broker.password.get_secret_value() if broker.password else None,
        tls_context=context,
        tls_insecure=False if context is not None else None,
        clean_session=True if version == "3.1.1" else None,
        clean_start=MQTT_CLEAN_START_FIRST_ONLY,
        timeout=10,
        max_inflight_messages=max_inflight,
    )


def client_tls(broker: BrokerSettings, source: str) -> ssl.SSLContext | None:
    """The TLS context as the gateway builds it; ConfigError names the bad setting."""
    return tls_context(broker, source)
