"""The trace file format and the commands around it: exact round trip, appending, rotation, a killed
recorder, inspect, trim, replay from the command line, and TCP reassembly of split MQTT frames."""

import asyncio
import base64
import gzip
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapWriter

from collector.config import BrokerSettings
from deploy.servers import MosquittoServer
from deploy.traces.file_format import (
    TraceHeader,
    TraceRecord,
    TraceWriter,
    load_trace,
    write_trace,
)
from deploy.traces.pcap_import import import_capture
from deploy.traces.record import RecordOptions, recording
from deploy.traces.replay import ReplayOptions, replay
from deploy.traces.rewrite import Rewrite
from pipelines.mqtt_packets import remaining_length
from tests.trace_fixtures import TRACES

CLI = [sys.executable, "-m", "deploy.traces"]
HEADER = TraceHeader(
    broker="mqtt://test", filters=["#"], started_at=datetime(2026, 1, 1, tzinfo=UTC)
)

records_st = st.builds(
    TraceRecord,
    t_us=st.integers(0, 2**53),
    topic=st.text(min_size=1, max_size=40),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    props=st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {
                "UserProperty": st.lists(
                    st.tuples(st.text(), st.text()).map(list), min_size=1, max_size=3
                ),
                "CorrelationData": st.binary(max_size=8).map(
                    lambda b: {"b64": base64.b64encode(b).decode()}
                ),
            }
        ),
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(records_st, max_size=30))
def test_any_records_round_trip_exactly(tmp_path_factory: pytest.TempPathFactory, records) -> None:
    path = tmp_path_factory.mktemp("rt") / "t.trace.gz"
    write_trace(path, HEADER, records)
    back, stats = load_trace([path])
    assert back == records
    assert stats.headers == [HEADER]
    assert stats.truncated == []


def _records(n: int, start: int = 0) -> list[TraceRecord]:
    return [
        TraceRecord(1_000_000 * i, f"t/{i}", f"payload {i}".encode() * 50, 1)
        for i in range(start, start + n)
    ]


def test_a_cut_last_member_loses_only_that_member(tmp_path: Path) -> None:
    path = tmp_path / "t.trace.gz"
    with TraceWriter(path, HEADER) as writer:
        for rec in _records(10):
            writer.write(rec)
        writer.flush()  # one member with the ten records
        for rec in _records(5, start=10):
            writer.write(rec)
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])  # killed while writing the second member
    back, stats = load_trace([path])
    assert back[:10] == _records(10)
    assert len(back) < 15
    assert back == (_records(10) + _records(5, start=10))[: len(back)]
    assert stats.truncated == [path]


def test_appending_adds_a_header_and_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "t.trace.gz"
    write_trace(path, HEADER, _records(3))
    with pytest.raises(Exception, match="exists"):
        TraceWriter(path, HEADER)
    second = TraceHeader(broker="mqtt://other", filters=["x/#"], started_at=datetime.now(UTC))
    with TraceWriter(path, second, append=True) as writer:
        for rec in _records(2, start=3):
            writer.write(rec)
    back, stats = load_trace([path])
    assert back == _records(5)
    assert [h.broker for h in stats.headers] == ["mqtt://test", "mqtt://other"]
    # Plain gzip tools read it too: members concatenate.
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert sum("ecotel_trace" in line for line in lines) == 2


async def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def test_rotation_by_size_writes_numbered_parts_with_headers(
    mosquitto, tmp_path: Path
) -> None:
    out = tmp_path / "field.trace.gz"
    options = RecordOptions(filters=["rot/#"], out=out, rotate_bytes=2_000, flush_interval_s=0.05)
    sent = [(f"rot/{i}", os.urandom(700)) for i in range(40)]
    async with recording(BrokerSettings(port=mosquitto.port), options, quiet_s=0.5) as stats:
        for start in range(0, len(sent), 5):
            await _publish(mosquitto.port, sent[start : start + 5])
            await asyncio.sleep(0.1)
    assert len(stats.files) >= 3
    assert stats.files[0].name == "field-000001.trace.gz"
    back, read = load_trace(sorted(stats.files))
    assert [(r.topic, r.payload) for r in back] == sent
    assert [h.part for h in read.headers] == list(range(1, len(stats.files) + 1))


@pytest.mark.slow
async def test_ctrl_c_and_kill_leave_a_readable_trace(mosquitto, tmp_path: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        out = tmp_path / f"{sig.name}.trace.gz"
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "record",
            "--port",
            str(mosquitto.port),
            "-t",
            f"sig/{sig.name}/#",
            "-o",
            str(out),
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"recording" in line, line
        sent = [(f"sig/{sig.name}/{i}", f"m{i}".encode()) for i in range(30)]
        await _publish(mosquitto.port, sent)
        await asyncio.sleep(1.5)  # one flush interval: the messages are on disk
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait(), 20)
        back, stats = load_trace([out])
        assert [(r.topic, r.payload) for r in back] == sent
        if sig is signal.SIGINT:
            assert proc.returncode == 0
            assert stats.truncated == []


def _cli(*args: str) -> str:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=True).stdout


def test_inspect_counts_topics_and_names_what_does_not_decode() -> None:
    summary = json.loads(_cli("inspect", "--json", str(TRACES / "not_utf8.trace.gz")))
    assert summary["undecodable"] == {"not_utf8": 2}
    assert summary["topics"]["ecotel/v1/Tuotuohe/gbk-gw/readings"]["messages"] == 2
    summary = json.loads(_cli("inspect", "--json", str(TRACES / "malformed_json.trace.gz")))
    assert summary["undecodable"] == {"not_json": 1}
    summary = json.loads(_cli("inspect", "--json", str(TRACES / "backlog.trace.gz")))
    assert summary["undecodable"] == {}
    assert summary["messages"] == sum(t["messages"] for t in summary["topics"].values())
    assert sum(summary["rates"]) == summary["messages"]
    text = _cli("inspect", str(TRACES / "ecology.trace.gz"))
    assert "every payload decodes" in text
    assert "ecotel/v1/Tuotuohe/tuotuohe-gw1/readings" in text


def test_trim_by_time_and_topic(tmp_path: Path) -> None:
    source = TRACES / "backlog.trace.gz"
    records, _ = load_trace([source])
    first = records[0].t_us
    out = tmp_path / "cut.trace.gz"
    _cli("trim", str(source), "-o", str(out), "--from", "+0.5", "-t", "ecotel/v1/+/+/readings")
    kept, stats = load_trace([out])
    assert kept == [
        r for r in records if r.t_us >= first + 500_000 and r.topic.endswith("/readings")
    ]
    assert stats.headers[0].source == "trim"
    until = records[2].arrived.isoformat()
    _cli("trim", str(source), "-o", str(tmp_path / "head.trace.gz"), "--to", until)
    head, _ = load_trace([tmp_path / "head.trace.gz"])
    assert head == records[:2]


def test_trim_refuses_an_existing_output_and_an_empty_span(tmp_path: Path) -> None:
    source = str(TRACES / "backlog.trace.gz")
    out = tmp_path / "cut.trace.gz"
    out.write_bytes(b"an earlier trace")
    done = subprocess.run(
        [*CLI, "trim", source, "-o", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert f"{out} exists; choose another name" in done.stderr
    assert out.read_bytes() == b"an earlier trace"
    empty = tmp_path / "empty.trace.gz"
    done = subprocess.run(
        [*CLI, "trim", source, "-o", str(empty), "--from", "+5", "--to", "+2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "--to +2 is not after --from +5" in done.stderr
    assert not empty.exists()


@pytest.mark.slow
async def test_replay_command_sends_the_exact_bytes(tmp_path: Path) -> None:
    source = TRACES / "not_utf8.trace.gz"
    heard = tmp_path / "heard.trace.gz"
    options = RecordOptions(filters=["ecotel/v1/#"], out=heard)
    # A broker of its own: the session broker holds other tests' retained statuses.
    async with (
        MosquittoServer(tmp_path / "broker") as broker,
        recording(BrokerSettings(port=broker.port), options, quiet_s=0.5),
    ):
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "replay",
            str(source),
            "--port",
            str(broker.port),
            "--speed",
            "4",
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert b"done: replayed 3/3 messages" in err
    original, _ = load_trace([source])
    back, _ = load_trace([heard])
    assert [(r.topic, r.payload, r.retain) for r in back] == [
        (r.topic, r.payload, r.retain) for r in original
    ]


def test_restamp_shifts_live_times_and_keeps_an_unset_clock() -> None:
    body = {
        "site": "A",
        "gateway": "g",
        "sent_at": "2026-01-01T00:00:00Z",
        "readings": [{"time": "2026-01-01T00:00:00.5Z"}, {"time": "1970-01-01T00:03:00Z"}],
    }
    out = json.loads(
        Rewrite(sites={"A": "B"}, restamp=True).payload(
            json.dumps(body).encode(), lambda moment: moment + timedelta(hours=1)
        )
    )
    assert out["site"] == "B"
    assert out["sent_at"] == "2026-01-01T01:00:00.000000Z"
    assert out["readings"][0]["time"] == "2026-01-01T01:00:00.500000Z"
    assert out["readings"][1]["time"] == "1970-01-01T00:03:00Z"
    assert Rewrite(sites={"A": "B"}).topic("ecotel/v1/A/g/readings") == "ecotel/v1/B/g/readings"
    raw = b"\xff not json"
    later = Rewrite(sites={"A": "B"}, restamp=True).payload(raw, lambda m: m + timedelta(hours=1))
    assert later == raw


def _publish_frame(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    variable = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if qos:
        variable += mid.to_bytes(2, "big")
    return (
        bytes([0x30 | qos << 1])
        + remaining_length(len(variable) + len(payload))
        + variable
        + payload
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=st.lists(
        st.tuples(
            # A topic name: no wildcards or NUL (an importer refuses those as not MQTT).
            st.text(
                st.characters(exclude_characters="+#\x00", exclude_categories=["Cs"]),
                min_size=1,
                max_size=20,
            ),
            st.binary(max_size=3000),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=12,
    ),
    cuts=st.lists(st.integers(1, 20_000), max_size=12),
    shuffle_seed=st.integers(0, 1000),
)
def test_frames_split_reordered_and_resent_are_reassembled(
    tmp_path_factory: pytest.TempPathFactory, messages, cuts, shuffle_seed
) -> None:
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
    stream = connect + b"".join(
        _publish_frame(t, p, q, i + 1) for i, (t, p, q) in enumerate(messages)
    )
    bounds = sorted({c % len(stream) for c in cuts} | {0, len(stream)})
    isn = 4_294_967_000  # near the wrap of the 32-bit sequence space
    segments = [(isn + 1 + a, stream[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    rng = random.Random(shuffle_seed)
    shuffled = segments + rng.sample(segments, k=min(2, len(segments)))  # retransmissions
    rng.shuffle(shuffled)
    path = tmp_path_factory.mktemp("cap") / "c.pcap"
    client, broker = ("10.0.0.2", 40000), ("10.0.0.1", 1883)
    with PcapWriter(str(path)) as writer:
        syn = (
            Ether()
            / IP(src=client[0], dst=broker[0])
            / TCP(sport=client[1], dport=broker[1], flags="S", seq=isn)
        )
        syn.time = 1.0
        writer.write(syn)
        for index, (seq, data) in enumerate(shuffled):
            pkt = (
                Ether()
                / IP(src=client[0], dst=broker[0])
                / TCP(sport=client[1], dport=broker[1], flags="PA", seq=seq % 2**32)
                / data
            )
            pkt.time = 2.0 + index / 1000
            writer.write(pkt)
    records, stats = import_capture(path)
    assert stats.gaps == 0
    got = sorted((r.topic, r.payload, r.qos) for r in records)
    assert got == sorted(messages)


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_replay_keeps_qos_retain_and_properties(tmp_path: Path, version: str) -> None:
    props = {"UserProperty": [["site", "沱沱河"]], "ContentType": "application/json"}
    sent = [
        TraceRecord(1_000_000, "q/0", b"zero", 0),
        TraceRecord(1_100_000, "q/1", b"one", 1, props=props),
        TraceRecord(1_200_000, "q/2", b"\xfftwo", 2, retain=True, props=props),
    ]
    async with MosquittoServer(tmp_path / "broker") as broker:
        settings = BrokerSettings(port=broker.port)
        heard = tmp_path / "heard.trace.gz"
        async with recording(settings, RecordOptions(filters=["q/#"], out=heard), quiet_s=0.5):
            await replay(settings, sent, ReplayOptions(speed=None, version=version))  # type: ignore[arg-type]
    back, _ = load_trace([heard])
    assert [(r.topic, r.payload, r.qos, r.retain) for r in back] == [
        (r.topic, r.payload, r.qos, r.retain) for r in sent
    ]
    for got, want in zip(back, sent, strict=True):
        if version == "5" and want.props:
            assert got.props is not None
            assert got.props["UserProperty"] == want.props["UserProperty"]
            assert got.props["ContentType"] == want.props["ContentType"]
        else:
            assert not (got.props or {}).get("UserProperty")


def test_topic_prefixes_are_rewritten() -> None:
    rewrite = Rewrite(prefixes=[("plant/a/", "plant/b/")])
    assert rewrite.topic("plant/a/meter/1") == "plant/b/meter/1"
    assert rewrite.topic("plant/c/meter/1") == "plant/c/meter/1"
    assert not rewrite.changes_payload


@pytest.mark.slow
async def test_the_recorder_comes_back_after_the_broker_restarts(tmp_path: Path) -> None:
    out = tmp_path / "long.trace.gz"
    async with MosquittoServer(tmp_path / "broker") as broker:
        settings = BrokerSettings(port=broker.port)
        options = RecordOptions(filters=["site/#"], out=out)
        async with recording(settings, options, quiet_s=0.5) as stats:
            await _publish(broker.port, [("site/a", b"before")])
            await asyncio.sleep(0.3)
            await broker.restart()
            async with asyncio.timeout(30):
                while stats.subscribed < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await _publish(broker.port, [("site/a", b"after")])
    back, read = load_trace([out])
    assert [r.payload for r in back] == [b"before", b"after"]
    assert stats.reconnects >= 1
    assert len(read.headers) == 2
    assert read.headers[1].note is not None
    assert "reconnected" in read.headers[1].note
