"""Import: MQTT 3.1.1 and 5 PUBLISH messages from a pcap/pcapng capture, TCP streams reassembled.

scapy reads the capture and decodes IP/TCP; the MQTT framing is decoded here
(scapy.contrib.mqtt knows no MQTT 5 properties), the properties by paho.
"""

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import PcapReader

from deploy.traces.file_format import TraceRecord
from deploy.traces.mqtt_properties import unpack_properties

Direction = Literal["to-broker", "from-broker", "both"]
Endpoint = tuple[str, int]
FlowKey = tuple[Endpoint, Endpoint]

_CONNECT, _PUBLISH, _PUBREL = 1, 3, 6
_SEQ_MOD = 1 << 32
# Fixed-header flags MQTT requires of each packet type (PUBLISH's are its DUP/QoS/RETAIN bits).
_FIXED_FLAGS = {
    1: 0,
    2: 0,
    4: 0,
    5: 0,
    6: 2,
    7: 0,
    8: 2,
    9: 0,
    10: 2,
    11: 0,
    12: 0,
    13: 0,
    14: 0,
    15: 0,
}
# Body sizes (MQTT 5 may add a reason code and properties to the two bytes).
_TWO_BYTES = frozenset({2, 4, 5, 6, 7, 11})
_EMPTY = frozenset({12, 13})
# A stream whose start was not captured: how far into it to look for the first whole packet.
_RESYNC_SCAN = 4 * 1024 * 1024
_HEADS = frozenset(
    [(_PUBLISH << 4) | f for f in range(16) if f & 0x06 != 0x06]
    + [(kind << 4) | f for kind, f in _FIXED_FLAGS.items()]
)

log = logging.getLogger("ecotel.trace.pcap")


class CaptureError(Exception):
    """A capture file scapy cannot read."""


@dataclass
class ImportStats:
    packets: int = 0
    tcp_segments: int = 0
    connections: int = 0
    mqtt_packets: Counter[str] = field(default_factory=Counter)
    gaps: int = 0
    """Streams with missing bytes (a segment the capture lost): parsing stops there."""
    truncated_packets: int = 0
    """Packets the capture cut short (snap length; libpcap also caps frames at the interface
    MTU, and loopback GSO packets of 64 KiB exceed it): their streams have gaps."""
    undecoded: int = 0
    """Streams that are not MQTT (or TLS), or not valid MQTT from some packet on: cut there."""
    resynchronised: int = 0
    """Streams whose start was not captured, read from their first whole packet."""
    qos2_resends: int = 0
    """QoS 2 PUBLISH packets sent again before their PUBREL: the broker passes them on once."""
    versions: Counter[str] = field(default_factory=Counter)


@dataclass
class _Segment:
    seq: int
    data: bytes
    time_us: int


@dataclass
class _Flow:
    segments: list[_Segment] = field(default_factory=list)
    isn: int | None = None


def _packets(path: Path, stats: ImportStats) -> Iterator[tuple[int, Any, Any]]:
    try:
        reader = PcapReader(str(path))  # pcap or pcapng: scapy picks the reader by magic number
    except Exception as exc:  # scapy raises its own and OSError subclasses alike
        raise CaptureError(f"{path}: not a readable pcap/pcapng capture ({exc})") from None
    with reader:
        for packet in reader:
            stats.packets += 1
            if TCP not in packet:
                continue
            wirelen = getattr(packet, "wirelen", None)
            if isinstance(wirelen, int) and wirelen > len(packet):
                stats.truncated_packets += 1
            ip = packet.getlayer(IP) or packet.getlayer(IPv6)
            if ip is None:
                continue
            # scapy gives the capture time as an EDecimal of seconds: exact to the microsecond.
            yield int(packet.time * 1_000_000), ip, packet[TCP]


def _reassemble(flow: _Flow) -> tuple[bytes, list[tuple[int, int]], bool]:
    """The stream's bytes, (end offset, capture time) per segment, and whether bytes are missing."""
    if not flow.segments:
        return b"", [], False
    base = flow.isn + 1 if flow.isn is not None else min(s.seq for s in flow.segments)
    ordered = sorted(flow.segments, key=lambda s: ((s.seq - base) % _SEQ_MOD, s.time_us))
    stream = bytearray()
    times: list[tuple[int, int]] = []
    gap = False
    for seg in ordered:
        offset = (seg.seq - base) % _SEQ_MOD
        end = offset + len(seg.data)
        if end <= len(stream):
            continue  # a retransmission of bytes we have
        if offset > len(stream):
            gap = True
            break
        stream += seg.data[len(stream) - offset :]
        times.append((len(stream), seg.time_us))
    return bytes(stream), times, gap


def _remaining_length(data: bytes, pos: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    for index in range(4):
        if pos + index >= len(data):
            return None
        byte = data[pos + index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise ValueError("malformed remaining length")


def _mqtt_packets(stream: bytes, pos: int = 0) -> Iterator[tuple[int, int, bytes, int]]:
    """(type, flags, body, end offset) of each complete MQTT control packet in the stream.

    A first byte no MQTT packet has (type 0, wrong fixed flags, QoS 3) is a ValueError.
    """
    while pos < len(stream):
        head = stream[pos]
        kind, flags = head >> 4, head & 0x0F
        if kind == _PUBLISH:
            if flags & 0x06 == 0x06:
                raise ValueError("PUBLISH with QoS 3")
        elif _FIXED_FLAGS.get(kind, -1) != flags:
            raise ValueError(f"not an MQTT packet: first byte {head:#04x}")
        decoded = _remaining_length(stream, pos + 1)
        if decoded is None:
            return
        length, used = decoded
        start = pos + 1 + used
        end = start + length
        if end > len(stream):
            return  # the capture ended inside this packet
        yield kind, flags, stream[start:end], end
        pos = end


def _plausible_size(kind: int, size: int, version: int) -> bool:
    if kind in _EMPTY:
        return size == 0
    if kind in _TWO_BYTES:
        return size >= 2 if version == 5 else size == 2
    return True


def _readable_from(stream: bytes, pos: int, version: int) -> bool:
    """Whether valid MQTT packets (PUBLISH topics, ack lengths and all) run from ``pos`` to the
    stream's end, at least one of them whole."""
    whole = False
    try:
        for kind, flags, body, _ in _mqtt_packets(stream, pos):
            if kind == _PUBLISH:
                _publish(body, flags, version, {})
            elif not _plausible_size(kind, len(body), version):
                return False
            whole = True
    except (ValueError, IndexError, UnicodeDecodeError):
        return False
    return whole


def _first_whole_packet(stream: bytes, version: int) -> int | None:
    """Where the first whole packet of a stream captured mid-way starts (0 if at the start)."""
    for pos in range(min(len(stream), _RESYNC_SCAN)):
        if stream[pos] in _HEADS and _readable_from(stream, pos, version):
            return pos
    return None


@dataclass
class _Connect:
    client_id: str
    version: int
    clean: bool
    expiry_s: int


def _connect(body: bytes) -> _Connect | None:
    """The CONNECT's protocol level, client id and session flags; None if not MQTT's CONNECT."""
    name_len = int.from_bytes(body[0:2], "big")
    if body[2 : 2 + name_len] not in (b"MQTT", b"MQIsdp"):
        return None
    pos = 2 + name_len
    version, flags = body[pos], body[pos + 1]
    pos += 4  # level, flags, keep alive
    expiry = 0
    if version == 5:
        decoded = _remaining_length(body, pos)
        if decoded is None:
            return None
        length, used = decoded
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.unpack(body[pos : pos + used + length])  # type: ignore[no-untyped-call]
        expiry = int(getattr(props, "SessionExpiryInterval", 0))
        pos += used + length
    id_len = int.from_bytes(body[pos : pos + 2], "big")
    client_id = body[pos + 2 : pos + 2 + id_len].decode("utf-8", errors="replace")
    return _Connect(client_id, version, bool(flags & 0x02), expiry)


def _time_at(times: list[tuple[int, int]], end: int) -> int:
    """Capture time of the segment that completed the byte at offset ``end - 1``."""
    for seg_end, time_us in times:
        if seg_end >= end:
            return time_us
    return times[-1][1]


def _publish(body: bytes, flags: int, version: int, aliases: dict[int, str]) -> TraceRecord:
    """The PUBLISH as a record; ValueError if it is not a valid one (QoS 3, a topic no broker takes)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ValueError("PUBLISH with QoS 3")
    topic_len = int.from_bytes(body[0:2], "big")
    pos = 2 + topic_len
    if len(body) < pos + (2 if qos else 0):
        raise ValueError("PUBLISH shorter than its topic")
    topic = body[2:pos].decode("utf-8")
    if "\x00" in topic or "+" in topic or "#" in topic:
        raise ValueError(f"PUBLISH topic {topic!r} is not a valid topic name")
    if qos:
        if body[pos : pos + 2] == b"\x00\x00":
            raise ValueError("PUBLISH with packet identifier 0")
        pos += 2  # packet identifier
    props: dict[str, Any] | None = None
    if version == 5:
        props, used = unpack_properties(body[pos:])
        pos += used
        alias = props.get("TopicAlias") if props else None
        if isinstance(alias, int):
            if topic:
                aliases[alias] = topic
            else:
                topic = aliases.get(alias, "")
    if not topic and not (props and "TopicAlias" in props):
        # (An alias whose setting the capture missed is kept, without its topic.)
        raise ValueError("PUBLISH without a topic")
    return TraceRecord(
        t_us=0, topic=topic, payload=body[pos:], qos=qos, retain=bool(flags & 1), props=props
    )


def import_capture(
    path: Path,
    *,
    broker_ports: set[int] | frozenset[int] = frozenset({1883}),
    direction: Direction = "to-broker",
    assume_version: int = 4,
) -> tuple[list[TraceRecord], ImportStats]:
    """The PUBLISH messages of a capture, by capture time.

    ``to-broker``: what clients published, each message once as the broker passes it
    on (a QoS 2 re-send before PUBREL is the same message; a QoS 1 re-send the broker
    delivers again); ``from-broker``: what the broker delivered to subscribers. The
    client of a connection is the side that sent CONNECT; for a connection whose
    start was not captured, the side not on a broker port, and its MQTT version
    is ``assume_version`` (4 = 3.1.1, 5).
    """
    stats = ImportStats()
    flows: dict[FlowKey, _Flow] = {}
    for time_us, ip, tcp in _packets(path, stats):
        key: FlowKey = ((str(ip.src), int(tcp.sport)), (str(ip.dst), int(tcp.dport)))
        flow = flows.setdefault(key, _Flow())
        if tcp.flags.S:
            flow.isn = int(tcp.seq)
        data = bytes(tcp.payload)
        if data:
            stats.tcp_segments += 1
            flow.segments.append(_Segment(int(tcp.seq), data, time_us))
    records: list[TraceRecord] = []
    done: set[FlowKey] = set()
    # QoS 2 packet ids awaiting PUBREL, per session and direction, across the session's connections.
    sessions: dict[tuple[str, bool], dict[int, tuple[str, bytes]]] = {}
    for key in flows:  # in order of each connection's first captured packet
        if key in done:
            continue
        reverse: FlowKey = (key[1], key[0])
        done.update({key, reverse})
        stats.connections += 1
        records.extend(
            _connection(key, flows, broker_ports, direction, assume_version, stats, sessions)
        )
    records.sort(key=lambda r: r.t_us)
    return records, stats


@dataclass
class _Side:
    stream: bytes
    times: list[tuple[int, int]]
    start: int | None
    """Offset of the first whole packet; None when no valid MQTT was found."""


def _side(flow: _Flow, version: int, stats: ImportStats) -> _Side:
    stream, times, gap = _reassemble(flow)
    stats.gaps += gap
    if flow.isn is not None or not stream:
        return _Side(stream, times, 0)  # the stream's start is in the capture
    start = _first_whole_packet(stream, version)
    if start:
        stats.resynchronised += 1
        log.warning(
            "a connection's start is not in the capture: skipped %s bytes to its first whole "
            "MQTT packet",
            f"{start:,}",
        )
    return _Side(stream, times, start)


def _connection(
    key: FlowKey,
    flows: dict[FlowKey, _Flow],
    broker_ports: set[int] | frozenset[int],
    direction: Direction,
    assume_version: int,
    stats: ImportStats,
    sessions: dict[tuple[str, bool], dict[int, tuple[str, bytes]]],
) -> list[TraceRecord]:
    sides: dict[FlowKey, _Side] = {}
    for flow_key in (key, (key[1], key[0])):
        flow = flows.get(flow_key)
        if flow is not None:
            sides[flow_key] = _side(flow, assume_version, stats)
    # Which way is client -> broker: the side that sent CONNECT, else the side not on a broker port.
    client_key: FlowKey | None = None
    version = assume_version
    connect: _Connect | None = None
    for flow_key, side in sides.items():
        if side.start is None:
            continue
        try:
            first = next(_mqtt_packets(side.stream, side.start), None)
            found = _connect(first[2]) if first is not None and first[0] == _CONNECT else None
        except (ValueError, IndexError):
            found = None
        if found is not None:
            client_key, version, connect = flow_key, found.version, found
    if client_key is None:
        for flow_key in sides:
            if flow_key[1][1] in broker_ports:
                client_key = flow_key
    if client_key is None:
        stats.undecoded += 1
        return []
    stats.versions["5" if version == 5 else "3.1.1"] += 1
    session = connect.client_id if connect is not None else f"{client_key[0][0]}:{client_key[0][1]}"
    wanted: list[FlowKey] = []
    if direction in ("to-broker", "both"):
        wanted.append(client_key)
    if direction in ("from-broker", "both"):
        wanted.append((client_key[1], client_key[0]))
    out: list[TraceRecord] = []
    for flow_key in wanted:
        if flow_key not in sides:
            continue
        side = sides[flow_key]
        if side.start is None:
            stats.undecoded += 1
            continue
        # Both ways, PUBREL goes the way its PUBLISH went: one stream says what is pending.
        state = (session, flow_key == client_key)
        if connect is not None and connect.clean:
            sessions.pop(state, None)
        pending = sessions.setdefault(state, {})
        out.extend(_publishes(side, version, pending, stats))
        if connect is None or connect.clean or (version == 5 and connect.expiry_s == 0):
            sessions.pop(state, None)  # the session ends with the connection
    return out


def _publishes(
    side: _Side, version: int, pending: dict[int, tuple[str, bytes]], stats: ImportStats
) -> list[TraceRecord]:
    """The stream's PUBLISH messages as the receiver takes them: a QoS 2 message sent again
    before its PUBREL (same id, topic and payload) is left out, as the broker leaves it out."""
    assert side.start is not None
    out: list[TraceRecord] = []
    aliases: dict[int, str] = {}
    try:
        for kind, flags, body, end in _mqtt_packets(side.stream, side.start):
            stats.mqtt_packets[_NAMES.get(kind, str(kind))] += 1
            if kind == _PUBREL:
                pending.pop(int.from_bytes(body[0:2], "big"), None)
                continue
            if kind != _PUBLISH:
                continue
            rec = _publish(body, flags, version, aliases)
            if rec.qos == 2:
                topic_len = int.from_bytes(body[0:2], "big")
                mid = int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")
                if pending.get(mid) == (rec.topic, rec.payload):
                    stats.qos2_resends += 1
                    continue
                pending[mid] = (rec.topic, rec.payload)
            out.append(
                TraceRecord(
                    t_us=_time_at(side.times, end),
                    topic=rec.topic,
                    payload=rec.payload,
                    qos=rec.qos,
                    retain=rec.retain,
                    props=rec.props,
                )
            )
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        stats.undecoded += 1
        log.warning("a connection stops being readable MQTT (%s): the rest of it is skipped", exc)
    return out


_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}
