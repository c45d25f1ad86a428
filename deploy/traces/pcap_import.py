"""Import: MQTT 3.1.1 and 5 PUBLISH messages from a pcap/pcapng capture, TCP streams reassembled.

scapy reads the capture and decodes IP/TCP; the MQTT framing is decoded here
(scapy.contrib.mqtt knows no MQTT 5 properties), the properties by paho.
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import PcapReader

from deploy.traces.file_format import TraceRecord
from deploy.traces.mqtt_properties import unpack_properties

Direction = Literal["to-broker", "from-broker", "both"]
Endpoint = tuple[str, int]
FlowKey = tuple[Endpoint, Endpoint]

_CONNECT, _PUBLISH = 1, 3
_SEQ_MOD = 1 << 32


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
    """Streams that are not MQTT (or TLS), or whose start was not captured."""
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


def _mqtt_packets(stream: bytes) -> Iterator[tuple[int, int, bytes, int]]:
    """(type, flags, body, end offset) of each complete MQTT control packet in the stream."""
    pos = 0
    while pos < len(stream):
        head = stream[pos]
        decoded = _remaining_length(stream, pos + 1)
        if decoded is None:
            return
        length, used = decoded
        start = pos + 1 + used
        end = start + length
        if end > len(stream):
            return  # the capture ended inside this packet
        yield head >> 4, head & 0x0F, stream[start:end], end
        pos = end


def _connect_version(body: bytes) -> int | None:
    name_len = int.from_bytes(body[0:2], "big")
    if body[2 : 2 + name_len] not in (b"MQTT", b"MQIsdp"):
        return None
    return body[2 + name_len]


def _time_at(times: list[tuple[int, int]], end: int) -> int:
    """Capture time of the segment that completed the byte at offset ``end - 1``."""
    for seg_end, time_us in times:
        if seg_end >= end:
            return time_us
    return times[-1][1]


def _publish(body: bytes, flags: int, version: int, aliases: dict[int, str]) -> TraceRecord:
    qos = (flags >> 1) & 0x03
    topic_len = int.from_bytes(body[0:2], "big")
    topic = body[2 : 2 + topic_len].decode("utf-8")
    pos = 2 + topic_len
    if qos:
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

    ``to-broker``: what clients published (each message once, as its publisher
    sent it); ``from-broker``: what the broker delivered to subscribers. The
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
    for key in flows:
        if key in done:
            continue
        reverse: FlowKey = (key[1], key[0])
        done.update({key, reverse})
        stats.connections += 1
        records.extend(_connection(key, flows, broker_ports, direction, assume_version, stats))
    records.sort(key=lambda r: r.t_us)
    return records, stats


def _connection(
    key: FlowKey,
    flows: dict[FlowKey, _Flow],
    broker_ports: set[int] | frozenset[int],
    direction: Direction,
    assume_version: int,
    stats: ImportStats,
) -> list[TraceRecord]:
    sides = {}
    for flow_key in (key, (key[1], key[0])):
        flow = flows.get(flow_key)
        if flow is None:
            continue
        stream, times, gap = _reassemble(flow)
        stats.gaps += gap
        sides[flow_key] = (stream, times)
    # Which way is client -> broker: the side that sent CONNECT, else the side not on a broker port.
    client_key: FlowKey | None = None
    version = assume_version
    for flow_key, (stream, _) in sides.items():
        try:
            first = next(_mqtt_packets(stream), None)
        except ValueError:
            first = None
        if first is not None and first[0] == _CONNECT:
            found = _connect_version(first[2])
            if found is not None:
                client_key, version = flow_key, found
    if client_key is None:
        for flow_key in sides:
            if flow_key[1][1] in broker_ports:
                client_key = flow_key
    if client_key is None:
        stats.undecoded += 1
        return []
    stats.versions["5" if version == 5 else "3.1.1"] += 1
    wanted: list[FlowKey] = []
    if direction in ("to-broker", "both"):
        wanted.append(client_key)
    if direction in ("from-broker", "both"):
        wanted.append((client_key[1], client_key[0]))
    out: list[TraceRecord] = []
    for flow_key in wanted:
        if flow_key not in sides:
            continue
        stream, times = sides[flow_key]
        aliases: dict[int, str] = {}
        try:
            for kind, flags, body, end in _mqtt_packets(stream):
                stats.mqtt_packets[_NAMES.get(kind, str(kind))] += 1
                if kind != _PUBLISH:
                    continue
                rec = _publish(body, flags, version, aliases)
                out.append(
                    TraceRecord(
                        t_us=_time_at(times, end),
                        topic=rec.topic,
                        payload=rec.payload,
                        qos=rec.qos,
                        retain=rec.retain,
                        props=rec.props,
                    )
                )
        except (ValueError, IndexError, UnicodeDecodeError):
            stats.undecoded += 1
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
