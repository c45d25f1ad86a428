"""MQTT's wire encoding for ecotel's hand-written MQTT links (the ingest's consumer, the trace
replayer, the benchmark's load generator): lengths, strings and the packets they send."""

import struct

# CONNECT flags.
_CLEAN, _USER, _PASSWORD = 0x02, 0x80, 0x40


def remaining_length(n: int) -> bytes:
    """The variable-length integer of a fixed header (MQTT 3.1.1 2.2.3, 5.0 1.5.5)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    """A length-prefixed UTF-8 string."""
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    """A whole packet: its first byte, the remaining length, the body."""
    return bytes([first]) + remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    keepalive_s: int,
    *,
    clean: bool,
    username: str | None = None,
    password: str | None = None,
    version: int = 4,
) -> bytes:
    """CONNECT for MQTT 3.1.1 (``version`` 4) or 5 (without properties).

    3.1.1 allows a password only with a user name, so a password alone is not sent.
    """
    flags = _CLEAN if clean else 0
    payload = utf8(client_id)
    if username is not None:
        flags |= _USER
        payload += utf8(username)
        if password is not None:
            flags |= _PASSWORD
            payload += utf8(password)
    body = utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive_s)
    if version == 5:
        body += b"\x00"  # no CONNECT properties
    return packet(0x10, body + payload)


def subscribe_packet(topic_filter: str, packet_id: int, qos: int) -> bytes:
    """SUBSCRIBE to one filter."""
    return packet(0x82, struct.pack("!H", packet_id) + utf8(topic_filter) + bytes([qos]))


def unsubscribe_packet(topic_filter: str, packet_id: int) -> bytes:
    """UNSUBSCRIBE from one filter."""
    return packet(0xA2, struct.pack("!H", packet_id) + utf8(topic_filter))


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH, not retained, not a duplicate."""
    return packet(0x32, utf8(topic) + struct.pack("!H", packet_id) + payload)


def puback_packet(packet_id: int) -> bytes:
    """PUBACK of a QoS 1 PUBLISH."""
    return struct.pack("!BBH", 0x40, 2, packet_id)
