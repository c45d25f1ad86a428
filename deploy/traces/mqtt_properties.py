"""MQTT 5 PUBLISH properties as JSON for the trace file, and back to paho's Properties for replay."""

import base64
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Set per connection or per subscription by the broker: meaningless when published again.
_NOT_REPLAYED = {"TopicAlias", "SubscriptionIdentifier"}


def properties_to_json(props: Properties | None) -> dict[str, Any] | None:
    """paho's attributes as a JSON object: names without spaces, bytes as {"b64": ...}."""
    if props is None:
        return None
    out: dict[str, Any] = {}
    for name in props.names:
        key = name.replace(" ", "")
        if not hasattr(props, key):
            continue
        value = getattr(props, key)
        if isinstance(value, bytes | bytearray):
            value = {"b64": base64.b64encode(value).decode("ascii")}
        elif key == "UserProperty":
            value = [[k, v] for k, v in value]
        out[key] = value
    return out or None


def properties_from_json(data: dict[str, Any] | None) -> Properties | None:
    """The PUBLISH properties to send again; broker-assigned ones (topic alias, subscription id) left out."""
    if not data:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    found = False
    for key, value in data.items():
        if key in _NOT_REPLAYED:
            continue
        if isinstance(value, dict) and "b64" in value:
            value = base64.b64decode(value["b64"])
        elif key == "UserProperty":
            value = [(str(k), str(v)) for k, v in value]
        setattr(props, key, value)
        found = True
    return props if found else None


def unpack_properties(buffer: bytes) -> tuple[dict[str, Any] | None, int]:
    """Decode the properties at the start of a PUBLISH variable header; (json, bytes used)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props, used = props.unpack(buffer)  # type: ignore[no-untyped-call]
    return properties_to_json(props), used
