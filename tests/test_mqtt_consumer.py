"""The ingest's hand-written MQTT link: packet framing across socket reads, PUBACKs in arrival
order, and a broker that restarts with its sessions gone, so only the ingest's resubscription
brings readings back."""

import asyncio
import json
import shutil
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.acks import InOrderAcks
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.influx_query import influx_query
from pipelines.mqtt_consumer import Message, MqttLinkError, _Protocol
from pipelines.service import IngestService

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _remaining(n: int) -> bytes:
    # MQTT 3.1.1 section 2.2.3, written out here rather than taken from the module under test.
    out = []
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(m: Message) -> bytes:
    topic = m.topic.encode()
    body = struct.pack("!H", len(topic)) + topic
    if m.qos:
        body += struct.pack("!H", m.mid)
    return bytes([0x30 | m.qos << 1]) + _remaining(len(body) + len(m.payload)) + body + m.payload


messages = st.lists(
    st.builds(
        Message,
        topic=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
        # Up to 20,000 bytes: remaining lengths of one, two and three bytes.
        payload=st.binary(max_size=20_000),
        mid=st.integers(1, 0xFFFF),
        qos=st.sampled_from([0, 1]),
    ),
    max_size=20,
)


def _received(stream: bytes, cuts: list[int]) -> tuple[list[Message], MqttLinkError | None]:
    async def feed() -> tuple[list[Message], MqttLinkError | None]:
        protocol = _Protocol()
        start = 0
        for cut in [*sorted(cuts), len(stream)]:
            protocol.data_received(stream[start:cut])
            start = cut
        return list(protocol.pending), protocol.lost

    return asyncio.run(feed())


@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_publishes_come_out_whole_however_the_socket_cuts_them(
    sent: list[Message], data: st.DataObject
) -> None:
    # A PINGRESP between messages is taken and forgotten.
    stream = b"".join(_publish(m) + (b"\xd0\x00" if m.qos else b"") for m in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    received, lost = _received(stream, cuts)
    assert lost is None
    assert received == [m if m.qos else m._replace(mid=0) for m in sent]


def test_a_qos_2_publish_or_an_unknown_packet_breaks_the_link() -> None:
    qos2 = b"\x34\x07\x00\x01t\x00\x05hi"
    received, lost = _received(qos2, [])
    assert received == []
    assert lost is not None
    assert "QoS 2" in str(lost)
    received, lost = _received(_publish(Message("t", b"x", 7, 1)) + b"\xf0\x00", [3])
    assert received == [Message("t", b"x", 7, 1)]
    assert lost is not None
    assert "packet type 15" in str(lost)


def test_a_large_message_in_many_reads_comes_out_once_whole() -> None:
    big = Message("ecotel/v1/site/gw/readings", bytes(range(256)) * 4_000, 9, 1)
    stream = _publish(big) + _publish(Message("t", b"after", 10, 1))
    received, lost = _received(stream, list(range(0, len(stream), 4_096)))
    assert lost is None
    assert received == [big, Message("t", b"after", 10, 1)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=4))
def test_garbage_from_the_broker_breaks_the_link_and_nothing_else(
    stream: bytes, cuts: list[int]
) -> None:
    # Whatever arrives, data_received returns: a bad packet ends the link (lost), never the loop.
    _received(stream, [min(c, len(stream)) for c in cuts])


@given(st.data())
def test_pubacks_go_out_in_arrival_order_whatever_order_messages_finish(
    data: st.DataObject,
) -> None:
    qos = data.draw(st.lists(st.sampled_from([0, 1]), max_size=40))
    finishing = data.draw(st.permutations(range(len(qos))))
    sent: list[int] = []
    acks = InOrderAcks(sent.append)
    tickets = [acks.ticket(mid, q) for mid, q in enumerate(qos, start=1)]
    finished: set[int] = set()
    for index in finishing:
        tickets[index]()
        if data.draw(st.booleans()):
            tickets[index]()  # a second call changes nothing
        finished.add(index)
        oldest = 0
        while oldest in finished:
            oldest += 1
        # Acknowledged: exactly the QoS 1 messages before the oldest one still unfinished.
        assert sent == [mid for mid, q in enumerate(qos[:oldest], start=1) if q]
        assert acks.unacked == len(qos) - oldest


def test_acknowledging_with_a_backlog_still_owed_asks_for_a_write_at_once() -> None:
    asked: list[int] = []
    acks = InOrderAcks(lambda mid: None, backlog=2, on_backlog=lambda: asked.append(acks.unacked))
    tickets = [acks.ticket(mid, 1) for mid in range(1, 5)]
    tickets[0]()  # 3 still owed
    tickets[2]()  # done early: nothing acknowledged, nothing asked
    tickets[1]()  # 1 still owed: below the backlog
    tickets[3]()
    assert asked == [3]


async def test_a_stopping_ingest_waits_until_every_puback_is_sent() -> None:
    sent: list[int] = []
    acks = InOrderAcks(sent.append)
    await acks.all_done()  # nothing owed: at once
    tickets = [acks.ticket(mid, 1) for mid in range(1, 4)]
    waiting = asyncio.create_task(acks.all_done())
    tickets[2]()
    tickets[0]()
    await asyncio.sleep(0)
    assert not waiting.done()
    assert sent == [1]
    tickets[1]()
    await asyncio.wait_for(waiting, 5)
    assert sent == [1, 2, 3]


def _message(seq: int) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "gateway": "gw-re",
            "site": "site",
            "seq": seq,
            "sent_at": T0.isoformat(),
            "readings": [
                {
                    "device": "hydro-1",
                    "kind": "hydrology",
                    "time": (T0 + timedelta(seconds=seq)).isoformat(),
                    "values": {"stage": 1.0, "discharge": 50.0, "water_temperature": 4.0},
                }
            ],
        }
    ).encode()


async def _publish_all(port: int, seqs: range) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as publisher:
        for seq in seqs:
            await publisher.publish(wire.readings_topic("site", "gw-re"), _message(seq), qos=1)


async def _until(what: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not what():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _stored(url: str, database: str) -> int:
    series = await influx_query(url, "SELECT count(stage) FROM hydrology", database=database)
    return int(series[0].values[0][1]) if series else 0


@pytest.mark.slow
async def test_the_ingest_reconnects_and_resubscribes_to_a_broker_that_forgot_it(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with MosquittoServer(tmp_path / "broker") as broker:
        ingest = IngestService(
            IngestSettings(
                mqtt=MqttSettings(port=broker.port, client_id="ingest-reconnect", keepalive_s=5),
                influx=InfluxSettings(url=influxdb.url, database=influx_db),
                batch=BatchSettings(max_delay_s=0.1),
                dead_letter=DeadLetterSettings(path=tmp_path / "dead.sqlite3"),
            )
        )
        running = asyncio.create_task(ingest.run())
        try:
            await asyncio.wait_for(ingest.connected.wait(), 30)
            await _publish_all(broker.port, range(50))
            await _until(lambda: ingest.stats.written >= 50)
            # Quiet for longer than 1.5 keepalives: the ingest's pings keep the broker from
            # closing the link, and the broker's answers keep the ingest from doing so.
            await asyncio.sleep(11.0)
            assert "broker link lost" not in caplog.text
            assert ingest.connected.is_set()

            # The broker comes back without its saved sessions: the ingest's
            # subscription exists again only if the ingest makes it again.
            await broker.stop()
            await _until(lambda: not ingest.connected.is_set())
            shutil.rmtree(broker.persistence_dir)
            await broker.start()
            await asyncio.wait_for(ingest.connected.wait(), 30)
            await _publish_all(broker.port, range(50, 120))
            await _until(lambda: ingest.stats.written >= 120)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert await _stored(influxdb.url, influx_db) == 120
    assert "broker link lost" in caplog.text
