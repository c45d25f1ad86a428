"""The backlog drain with several messages in flight: exact bytes, nothing taken twice, kill -9 mid-drain."""

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from collector import wire
from collector.clock import Anchor
from collector.outbox import Outbox, OutgoingMessage
from deploy.servers import MosquittoServer
from devices import Reading
from devices.simulators import make_simulator
from tests.mqtt_observer import observe, readings_delivered_once

GATEWAY, SITE = "drain-gw", "Tuotuohe"
START = datetime(2026, 6, 1, tzinfo=UTC)


def _backlog(seconds: int) -> list[Reading]:
    """Readings of three kinds (one with a channel, one corrected by the clock) every second."""
    sims = [
        make_simulator(kind, f"{kind}-1", seed=3, interval_s=1.0)
        for kind in ("hydrology", "weather", "soil_profile")
    ]
    readings: list[Reading] = []
    for second in range(seconds):
        at = START + timedelta(seconds=second, microseconds=second % 7)
        for sim in sims:
            readings.extend(sim.sample(at))
    return readings


def _check_payload(message: OutgoingMessage) -> dict[str, Any]:
    """The spliced payload is exactly what the wire model writes for its readings."""
    parsed = wire.ReadingsMessage.model_validate_json(message.payload)
    assert parsed.encode() == message.payload
    assert parsed.seq == message.seq
    assert len(parsed.readings) == len(message.ids)
    body: dict[str, Any] = json.loads(message.payload)
    return body


async def test_messages_in_flight_never_share_a_reading_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    readings = _backlog(120)
    async with Outbox(path, max_bytes=10**9, boot_id="b1") as outbox:
        await outbox.add(readings[:200])
        outbox.mark_live()  # the first 200 are backlog, the rest live
        await outbox.add(readings[200:], [1.0] * 5 + [None] * (len(readings) - 205))
        assert outbox.held == 5
        await outbox.correct_held(Anchor(START + timedelta(hours=1), 10.0))
        sent_at = START + timedelta(days=1)
        in_flight = [
            await outbox.reserve("backlog", 64, GATEWAY, SITE, sent_at) for _ in range(3)
        ] + [await outbox.reserve("live", 50, GATEWAY, SITE, sent_at) for _ in range(3)]
        messages = [m for m in in_flight if m is not None]
        assert len(messages) == 6
        ids = [i for m in messages for i in m.ids]
        assert len(ids) == len(set(ids)), "no reading is in two messages"
        assert [m.seq for m in messages] == list(range(6))
        for message in messages:
            _check_payload(message)
        assert "corrected" in {
            r.get("clock") for m in messages for r in _check_payload(m)["readings"]
        }
        # Acknowledged out of order: what is left is still taken once.
        await outbox.acknowledged(messages[1])
        await outbox.acknowledged(messages[4])
    # A crash now: the four unacknowledged messages go out again, byte for byte.
    async with Outbox(path, max_bytes=10**9, boot_id="b1") as outbox:
        # Counted as they changed, not rescanned at start: the counts match the rows.
        rows = list(
            await outbox.db.execute_fetchall("SELECT count(*), total(length(body)) FROM readings")
        )
        assert (outbox.pending, outbox.pending_bytes) == (rows[0][0], int(rows[0][1]))
        assert outbox.pending == len(readings) - len(messages[1].ids) - len(messages[4].ids)
        again = await outbox.inflight_messages()
        assert [(m.seq, m.payload) for m in again] == [
            (m.seq, m.payload) for m in messages if m.seq not in (1, 4)
        ]
        for message in again:
            await outbox.acknowledged(message)
        # Reopened, everything waiting is backlog.
        taken = set(ids)
        while rest := await outbox.reserve("backlog", 100, GATEWAY, SITE, START):
            assert not taken & set(rest.ids)
            taken |= set(rest.ids)
            _check_payload(rest)
            await outbox.acknowledged(rest)
        assert outbox.pending == 0
        assert len(taken) == len(readings)


def _wire_time(reading: Reading) -> str:
    return reading.time.isoformat().replace("+00:00", "Z")


@pytest.mark.slow
async def test_kill_9_mid_drain_loses_nothing_and_resends_the_same_bytes(
    tmp_path: Path,
) -> None:
    backlog = _backlog(2_000)  # 18,000 readings
    state = tmp_path / "state"
    async with Outbox(state / f"{GATEWAY}.outbox.sqlite3", max_bytes=10**9) as outbox:
        await outbox.add(backlog)
    received: list[tuple[str, bytes]] = []
    ready = asyncio.Event()
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = tmp_path / "gw.toml"
        config.write_text(
            "\n".join(
                [
                    "[gateway]",
                    f'id = "{GATEWAY}"',
                    f'site = "{SITE}"',
                    f"state_dir = {json.dumps(str(state))}",
                    "batch_max_readings = 100",
                    "backlog_readings_per_s = 6000",
                    "[broker]",
                    f"port = {broker.port}",
                    "[[devices]]",
                    'id = "hydro-live"',
                    'kind = "hydrology"',
                    "interval_s = 0.5",
                    'source = { type = "simulator", seed = 1 }',
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        observer = asyncio.create_task(
            observe(
                broker.port, wire.readings_topic(SITE, GATEWAY), "drain-observer", received, ready
            )
        )
        await ready.wait()
        command = [sys.executable, "-m", "collector", "run", "--config", str(config)]
        first = await asyncio.create_subprocess_exec(*command)
        async with asyncio.timeout(60):
            while len(received) < 30:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        async with Outbox(state / f"{GATEWAY}.outbox.sqlite3", max_bytes=10**9) as outbox:
            assert outbox.pending > 0, "killed mid-drain"
        second = await asyncio.create_subprocess_exec(*command)

        def backlog_seen() -> int:
            times = {r["time"] for _, p in received for r in json.loads(p)["readings"]}
            return sum(1 for r in backlog if _wire_time(r) in times)

        async with asyncio.timeout(90):
            while backlog_seen() < len(backlog):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
        await asyncio.sleep(0.3)
        observer.cancel()
        await asyncio.gather(observer, return_exceptions=True)

    keys = readings_delivered_once(received)
    expected = {(r.device, r.channel, _wire_time(r)) for r in backlog}
    assert len(expected) == len(backlog)
    assert expected <= set(keys), "every backlog reading arrived"
    async with Outbox(state / f"{GATEWAY}.outbox.sqlite3", max_bytes=10**9) as outbox:
        assert outbox.pending == 0
        assert await outbox.inflight() is None


async def test_counts_left_by_two_writers_with_nothing_held_are_reset(tmp_path: Path) -> None:
    # Before the outbox was locked, two gateways on one file each wrote back their own
    # count; one run left "9 readings" in an empty outbox, and every stop since waited to
    # publish them.
    path = tmp_path / "outbox.sqlite3"
    async with Outbox(path, max_bytes=10**9, boot_id="b1") as outbox:
        await outbox.add(_backlog(3))
        assert outbox.pending > 0
    async with aiosqlite.connect(path) as db:
        await db.execute("DELETE FROM readings")
        await db.execute("UPDATE meta SET value = 9 WHERE key = 'count'")
        await db.commit()
    async with Outbox(path, max_bytes=10**9, boot_id="b1") as outbox:
        assert outbox.pending == 0
    async with Outbox(path, max_bytes=10**9, boot_id="b1") as outbox:
        assert outbox.pending == 0  # and written back
