"""Captures that start mid-connection or carry bytes that are not MQTT: the import reads the whole
packets it can, says what it skipped, and never makes records out of a packet's insides."""

import json
import struct
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from deploy.traces.file_format import load_trace
from deploy.traces.pcap_import import import_capture
from pipelines.mqtt_packets import connect_packet, packet, utf8

CLI = [sys.executable, "-m", "deploy.traces"]
TOPIC = "ecotel/v1/S/gw/readings"
ISN = 1000


def _publish(seq: int, values: list[float], qos: int = 1) -> bytes:
    body = json.dumps({"seq": seq, "values": values}).encode()
    mid = struct.pack("!H", seq + 1) if qos else b""
    return packet(0x30 | (qos << 1), utf8(TOPIC) + mid + body)


def _capture(path: Path, stream: bytes, *, skip: int = 0, syn: bool = False) -> Path:
    """The client -> broker direction of one connection, from byte ``skip`` of ``stream``."""
    frames = []
    t = 1_795_886_000.0
    if syn:
        frames.append(
            Ether() / IP(dst="127.0.0.1") / TCP(sport=40000, dport=1883, flags="S", seq=ISN)
        )
    data = stream[skip:]
    for off in range(0, len(data), 60):
        frame = (
            Ether()
            / IP(src="127.0.0.1", dst="127.0.0.1")
            / TCP(sport=40000, dport=1883, flags="PA", seq=ISN + 1 + skip + off)
            / data[off : off + 60]
        )
        frame.time = t + off / 1e4
        frames.append(frame)
    wrpcap(str(path), frames)
    return path


def _import(capture: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "import-pcap", str(capture), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_capture_starting_inside_a_payload_gives_the_whole_messages_after_it(
    tmp_path: Path,
) -> None:
    packets = [_publish(i, [35.25 + i, 12.5, 7.75]) for i in range(6)]
    stream = b"".join(packets)
    capture = _capture(tmp_path / "mid.pcap", stream, skip=stream.index(b"35.25"))
    out = tmp_path / "mid.trace.gz"
    result = _import(capture, out)
    assert result.returncode == 0, result.stderr
    assert "5 PUBLISH messages" in result.stdout
    assert "skipped 19 bytes to its first whole MQTT packet" in result.stderr
    imported, _ = load_trace([out])
    assert [(r.topic, json.loads(r.payload)["seq"], r.qos) for r in imported] == [
        (TOPIC, i, 1) for i in range(1, 6)
    ]


def test_bytes_that_are_no_valid_publish_end_the_stream_with_a_warning(tmp_path: Path) -> None:
    good = [_publish(0, [1.0]), _publish(1, [2.0])]
    bad = [
        packet(0x36, utf8(TOPIC) + b"\x00\x09" + b"{}"),  # QoS 3
        packet(0x32, utf8("ecotel/v1/S\x00gw") + b"\x00\x0a" + b"{}"),  # NUL in the topic
    ]
    for index, wrong in enumerate(bad):
        stream = connect_packet("gw", 30, clean=True) + b"".join(good) + wrong + _publish(5, [5.0])
        capture = _capture(tmp_path / f"bad{index}.pcap", stream, syn=True)
        out = tmp_path / f"bad{index}.trace.gz"
        result = _import(capture, out)
        assert result.returncode == 0, result.stderr
        assert "warning: 1 connections are not readable MQTT" in result.stdout
        imported, _ = load_trace([out])
        assert [json.loads(r.payload)["seq"] for r in imported] == [0, 1]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=6),
        min_size=2,
        max_size=8,
    ),
    qos=st.sampled_from([0, 1, 2]),
    cut=st.floats(0, 1, exclude_max=True),
)
def test_any_cut_gives_exactly_the_messages_that_start_after_it(
    tmp_path_factory, values: list[list[float]], qos: int, cut: float
) -> None:
    packets = [_publish(i, v, qos) for i, v in enumerate(values)]
    stream = b"".join(packets)
    skip = int(cut * len(packets[0]))  # inside the first message
    capture = _capture(tmp_path_factory.mktemp("cut") / "cut.pcap", stream, skip=skip)
    records, stats = import_capture(capture)
    first = 0 if skip == 0 else 1
    assert [json.loads(r.payload)["seq"] for r in records] == list(range(first, len(values)))
    assert stats.undecoded == 0
    assert stats.resynchronised == (1 if skip else 0)
