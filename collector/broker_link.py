"""The gateway's MQTT link: client options (credentials, TLS) and what a refused connection means."""

import hashlib
import ssl
from pathlib import Path

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from collector.config import BrokerSettings, TlsSettings
from collector.settings_loader import ConfigError

# MQTT 3.1.1 CONNACK codes 4 and 5; MQTT 5 reason codes 0x86, 0x87, 0x8C.
_BAD_CREDENTIALS = {4, 5, 0x86, 0x87, 0x8C}


def tls_context(broker: BrokerSettings, source: str) -> ssl.SSLContext | None:
    """The TLS context the settings describe; ConfigError names the setting that is wrong."""
    return context_from(broker.tls, source, section="broker")


def context_from(tls: TlsSettings | None, source: str, *, section: str) -> ssl.SSLContext | None:
    """The TLS context of ``tls``; errors name ``<section>.tls.<key>`` (the ingest's is mqtt)."""
    if tls is None:
        return None
    for key, path in (
        ("ca_file", tls.ca_file),
        ("cert_file", tls.cert_file),
        ("key_file", tls.key_file),
    ):
        if path is not None and not path.is_file():
            raise ConfigError(f"{source}: {section}.tls.{key}: no such file {path}")
    try:
        context = ssl.create_default_context(cafile=_str(tls.ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{source}: {section}.tls.ca_file: not a usable CA certificate ({exc})"
        ) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{source}: {section}.tls.cert_file / {section}.tls.key_file: certificate and key "
                f"cannot be used together ({exc.reason or exc})"
            ) from None
    return context


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def make_client(
    broker: BrokerSettings,
    *,
    client_id: str,
    will: aiomqtt.Will | None,
    context: ssl.SSLContext | None,
) -> aiomqtt.Client:
    """An aiomqtt client for the broker, with credentials and TLS as configured."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id,
        keepalive=broker.keepalive_s,
        username=broker.username,
        password=broker.password.get_secret_value() if broker.password else None,
        tls_context=context,
        # The broker's certificate must name broker.host; never switched off.
        tls_insecure=False if context is not None else None,
        will=will,
        timeout=10,
    )


def misconfiguration(exc: aiomqtt.MqttError, broker: BrokerSettings) -> str | None:
    """If the broker refused us because of our settings, which setting and why; else None.

    A network failure is not a misconfiguration: the gateway keeps its readings
    and retries. A wrong password or certificate will not get better by retrying.
    """
    # Only a CONNACK refusal: a publish on a dropped link also carries code 4 (MQTT_ERR_NO_CONN).
    if isinstance(exc, MqttConnectError) and _code(exc.rc) in _BAD_CREDENTIALS:
        who = "broker.username / broker.password"
        if broker.username is None:
            who = "broker.username / broker.password (none set; the broker wants credentials)"
        return f"{who}: the broker refused them ({exc})"
    text = str(exc)
    if broker.tls is None:
        return None
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "mismatch" in text:
            return f"broker.host: the broker's certificate is not issued for this name ({text})"
        return f"broker.tls.ca_file: the broker's certificate does not verify against it ({text})"
    if "certificate required" in text or "bad certificate" in text or "unknown ca" in text:
        return f"broker.tls.cert_file / broker.tls.key_file: the broker rejected our certificate ({text})"
    return None


def _code(rc: object) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def settings_fingerprint(broker: BrokerSettings) -> int:
    """A number that changes whenever the broker address, credentials or TLS files change."""
    parts = [broker.host, str(broker.port), broker.username or ""]
    parts.append(broker.password.get_secret_value() if broker.password else "")
    if broker.tls is not None:
        for path in (broker.tls.ca_file, broker.tls.cert_file, broker.tls.key_file):
            parts.append(path.read_bytes().hex() if path is not None and path.is_file() else "")
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")
