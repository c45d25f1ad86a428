"""Store and forward with real processes: kill -9 the gateway, stop the broker, fill the disk budget.

In each case every reading the policy says must arrive is in InfluxDB exactly
once, and what the policy drops is counted.
"""

import asyncio
import itertools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from collector.config import GatewaySettings
from collector.gateway import Gateway
from collector.outbox import Outbox
from deploy.servers import MosquittoServer, find_free_port
from pipelines.config import (
    BatchSettings,
    DeadLetterSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
)
from pipelines.service import IngestService
from tests.gateway_harness import GATEWAY, HYDRO_INTERVAL_S, Harness, gateway_settings


def _assert_exactly_once(h: Harness, stored: list[int]) -> None:
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    assert len(stored) == len(h.observed_times()), "InfluxDB holds what the broker delivered"
    seqs = h.observed_seqs()
    assert sorted(set(seqs)) == list(range(max(seqs) + 1)), "no message number is missing"


def _assert_no_gaps(stored: list[int], allowed_gap_s: float) -> None:
    """Readings every 0.1 s: a hole longer than ``allowed_gap_s`` means lost readings."""
    times = sorted(stored)
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(times)]
    assert max(gaps) < allowed_gap_s, f"largest gap {max(gaps):.2f} s"


async def test_kill_9_mid_run_loses_nothing_and_duplicates_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    settings = gateway_settings(harness.broker.port, tmp_path / "state")
    config.write_text(_toml(settings), encoding="utf-8")
    command = [sys.executable, "-m", "collector", "run", "--config", str(config)]
    first = await asyncio.create_subprocess_exec(*command)
    await asyncio.sleep(3)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    killed_at_readings = len(harness.observed_times())
    second = await asyncio.create_subprocess_exec(*command)
    await asyncio.sleep(3)
    second.send_signal(signal.SIGTERM)
    assert await second.wait() == 0

    async with Outbox(tmp_path / "state" / f"{GATEWAY}.outbox.sqlite3", max_bytes=10**9) as outbox:
        assert outbox.pending == 0, "a clean stop leaves nothing unsent"
        assert await outbox.inflight() is None
    await harness.settle(len(harness.observed_times()))
    stored = await harness.stored_times()
    assert killed_at_readings > 10
    assert len(stored) > killed_at_readings
    _assert_exactly_once(harness, stored)
    # The only hole is the restart (a Python start-up), not lost readings around the kill.
    _assert_no_gaps(stored, allowed_gap_s=5.0)


async def test_a_broker_outage_is_bridged_by_the_outbox(harness: Harness, tmp_path: Path) -> None:
    gateway = Gateway(
        GatewaySettings.model_validate(
            gateway_settings(harness.broker.port, tmp_path / "state", backlog_readings_per_s=20)
        )
    )
    task = asyncio.create_task(gateway.run())
    await asyncio.sleep(1.5)
    await harness.broker.stop()
    await asyncio.sleep(3)  # ~30 readings taken while the broker is away
    assert gateway.outbox.pending >= 20
    backlog = gateway.outbox.pending
    await harness.broker.start()
    await asyncio.sleep(4)
    gateway.stop()
    await task
    assert gateway.outbox.pending == 0
    assert gateway.stats.reconnects >= 1
    await harness.settle(gateway.stats.published)
    stored = await harness.stored_times()
    assert len(stored) == gateway.stats.polled
    _assert_exactly_once(harness, stored)
    _assert_no_gaps(stored, allowed_gap_s=0.5)
    assert harness.ingest.stats.missing_messages == 0
    # Drained at 20 readings/s: the backlog went out in several small messages,
    # not in one burst.
    assert max(len(m["readings"]) for m in harness.observed) <= 20
    assert len(harness.observed) > backlog / 20


async def test_a_full_disk_budget_drops_the_oldest_and_counts_them(
    harness: Harness, tmp_path: Path
) -> None:
    # First the station is cut off (no broker on this port) until its outbox
    # overflows, and is switched off; then it comes back with a broker there.
    port = find_free_port()
    settings = GatewaySettings.model_validate(
        gateway_settings(port, tmp_path / "state", outbox_max_mb=0.004)  # about 20 readings
    )
    offline = Gateway(settings)
    started_ns = time.time_ns()
    task = asyncio.create_task(offline.run(drain_timeout_s=0.5))
    await asyncio.sleep(4)
    offline.stop()
    await task
    assert offline.stats.dropped > 0
    assert offline.outbox.pending_bytes <= 4_000
    kept = offline.outbox.pending
    async with MosquittoServer(tmp_path / "late-broker", port=port):
        ingest = IngestService(
            IngestSettings(
                mqtt=MqttSettings(port=port, client_id="late-ingest"),
                influx=InfluxSettings(url=harness.influx_url, database=harness.database),
                batch=BatchSettings(max_delay_s=0.1),
                dead_letter=DeadLetterSettings(path=tmp_path / "late-dead.sqlite3"),
            )
        )
        ingest_task = asyncio.create_task(ingest.run())
        async with asyncio.timeout(30):
            await ingest.connected.wait()
        # Back on line with room to spare, so only the outage's policy decides.
        back = Gateway(
            GatewaySettings.model_validate(
                gateway_settings(port, tmp_path / "state", outbox_max_mb=1)
            )
        )
        task = asyncio.create_task(back.run())
        await asyncio.sleep(1.5)
        back.stop()
        await task
        async with asyncio.timeout(30):
            while ingest.stats.received < back.stats.published:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await ingest.wait_idle()
        ingest_task.cancel()
        await asyncio.gather(ingest_task, return_exceptions=True)
    stored = await harness.stored_times()
    assert len(stored) == len(set(stored))
    assert back.stats.published == kept + back.stats.polled - back.stats.dropped
    assert len(stored) == back.stats.published, "all but the dropped arrive"
    assert back.outbox.dropped == offline.stats.dropped + back.stats.dropped, "kept on disk"
    # drop_oldest: the outage's survivors are its newest readings, without holes.
    survivors = sorted(stored)[:kept]
    assert survivors[0] > started_ns + offline.stats.dropped * HYDRO_INTERVAL_S * 0.5e9
    _assert_no_gaps(survivors, allowed_gap_s=0.5)


def _toml(settings: dict[str, Any]) -> str:
    lines: list[str] = []
    for section in ("gateway", "broker"):
        lines.append(f"[{section}]")
        lines += [
            f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in settings[section].items()
        ]
    for device in settings["devices"]:
        source = device["source"]
        lines += [
            "[[devices]]",
            f'id = "{device["id"]}"',
            f'kind = "{device["kind"]}"',
            f"interval_s = {device['interval_s']}",
            f'source = {{ type = "{source["type"]}", seed = {source["seed"]} }}',
        ]
    return "\n".join(lines) + "\n"
