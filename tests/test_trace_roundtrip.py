"""Record, replay, record again: the same points in a fresh stack, the same payload bytes on the wire.

Also the scheduler's timing at 10x, loops, and site/gateway rewriting with re-stamping.
"""

import asyncio
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.config import BrokerSettings
from collector.gateway import Gateway
from deploy.servers import MosquittoServer
from deploy.stack import StackOptions, sample_gateways
from deploy.traces.file_format import TraceHeader, TraceRecord, load_trace, write_trace
from deploy.traces.record import RecordOptions, recording
from deploy.traces.replay import ReplayOptions, replay
from deploy.traces.rewrite import Rewrite
from tests.trace_fixtures import TRACES, TraceStack, expected_points, open_trace_stack

pytestmark = pytest.mark.slow


def _wire(records: list[TraceRecord]) -> list[tuple[str, bytes, int, bool]]:
    return [(r.topic, r.payload, r.qos, r.retain) for r in records]


async def test_record_replay_record_gives_same_points_and_bytes(
    trace_stack: TraceStack, influxdb, tmp_path: Path
) -> None:
    first = tmp_path / "field.trace.gz"
    options = RecordOptions(filters=["ecotel/v1/#"], out=first)
    # The field: the stack's three sample gateways publish while the recorder listens.
    async with recording(trace_stack.broker_settings, options):
        gateways = [
            Gateway(s)
            for s in sample_gateways(
                StackOptions(data_dir=tmp_path, interval_s=0.25), trace_stack.broker.port
            )
        ]
        tasks = [asyncio.create_task(gw.run()) for gw in gateways]
        await asyncio.sleep(2.5)
        for gw in gateways:
            gw.stop()
        await asyncio.gather(*tasks)
    recorded, _ = load_trace([first])
    trace_stack.replayed.extend(recorded)  # what the field stack's ingest must take
    await trace_stack.settle()
    field_points = await trace_stack.points(quality=True)
    assert field_points, "the gateways published readings"
    assert {p[:4] for p in field_points} >= {p[:4] for p in expected_points(recorded)}

    # A fresh stack: replay with the original spacing while recording again.
    fresh_db = f"replay_{uuid.uuid4().hex[:8]}"
    second = tmp_path / "replayed.trace.gz"
    async with open_trace_stack(influxdb.url, fresh_db, tmp_path / "fresh") as fresh:
        async with recording(
            fresh.broker_settings, RecordOptions(filters=["ecotel/v1/#"], out=second)
        ):
            await fresh.replay(first, speed=1.0)
        assert await fresh.points(quality=True) == field_points
        assert await fresh.dead_letters() == []
    replayed, _ = load_trace([second])
    assert _wire(replayed) == _wire(recorded), "payload bytes, topics, QoS, retain identical"


def _sixty_seconds() -> list[TraceRecord]:
    rng = random.Random(5)
    t = 1_780_000_000_000_000
    records: list[TraceRecord] = []
    while True:
        records.append(TraceRecord(t, f"bench/{len(records) % 4}", b"x" * rng.randint(10, 500), 1))
        t += rng.randint(10_000, 400_000)
        if t - records[0].t_us > 60_000_000:
            return records


async def test_replay_at_ten_times_keeps_the_timing(mosquitto, tmp_path: Path) -> None:
    records = _sixty_seconds()
    span_s = (records[-1].t_us - records[0].t_us) / 1e6
    assert 59.5 <= span_s <= 60.0
    broker = BrokerSettings(port=mosquitto.port)
    heard = tmp_path / "heard.trace.gz"
    async with recording(broker, RecordOptions(filters=["bench/#"], out=heard), quiet_s=0.5):
        await replay(broker, records, ReplayOptions(speed=10))
    arrived, _ = load_trace([heard])
    assert [r.payload for r in arrived] == [r.payload for r in records]
    wall_s = (arrived[-1].t_us - arrived[0].t_us) / 1e6
    # Functional, not a benchmark: 60 s of trace at x10 is 6 s at the subscriber, within 5 %.
    assert abs(wall_s - span_s / 10) <= 0.05 * span_s / 10, wall_s
    # And no message far from its own slot (a generous bound: the machine is shared).
    for rec, got in zip(records, arrived, strict=True):
        due = (rec.t_us - records[0].t_us) / 10
        assert abs((got.t_us - arrived[0].t_us) - due) < 1_000_000


async def test_loops_with_restamp_and_a_gateway_mapped_onto_another(
    trace_stack: TraceStack, tmp_path: Path
) -> None:
    source, _ = load_trace([TRACES / "duplicated_seq.trace.gz"])
    before = datetime.now(UTC)
    await trace_stack.replay(
        TRACES / "duplicated_seq.trace.gz",
        loops=2,
        rewrite=Rewrite(gateways={"dup-gw": "demo-gw"}, restamp=True),
    )
    points = await trace_stack.points()
    original = expected_points(source)
    assert len(points) == 2 * len(original), "each loop's readings got their own times"
    assert {dict(p[1])["gateway"] for p in points} == {"demo-gw"}
    newest = max(p[2] for p in points) / 1e9
    assert before.timestamp() - 30 < newest <= datetime.now(UTC).timestamp() + 1
    assert await trace_stack.dead_letters() == []
    # The trace's own redelivery, then every message of the second loop repeats a number.
    assert trace_stack.ingest.stats.repeated_messages == 1 + 4


async def test_trace_file_of_a_replay_can_be_written_and_read(tmp_path: Path) -> None:
    path = tmp_path / "x.trace.gz"
    header = TraceHeader(broker="test", filters=["#"], started_at=datetime.now(UTC))
    write_trace(path, header, _sixty_seconds()[:3])
    records, stats = load_trace([path])
    assert len(records) == 3
    assert stats.headers[0].broker == "test"


async def test_a_refused_connection_is_an_error_not_a_hang(tmp_path: Path) -> None:
    async with MosquittoServer(tmp_path / "m", extra_config="") as broker:
        port = broker.port
    from deploy.traces.frame_publisher import PublishError

    with pytest.raises(PublishError):
        await replay(BrokerSettings(port=port), _sixty_seconds()[:3], ReplayOptions(speed=None))
