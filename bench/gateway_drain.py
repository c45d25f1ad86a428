"""How fast a real gateway drains a 24-hour backlog (100 devices at 1 Hz) into Mosquitto, with nothing lost.

The backlog is written through the outbox's own API (``Outbox.add``, as the
gateway's committer writes it) while no broker exists; then Mosquitto, a QoS 1
subscriber and ``ecotel-gateway run`` start, and the subscriber marks every
(device, second) it receives until the whole backlog has arrived.
"""

import asyncio
import contextlib
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from bench.gateway_setup import (
    GATEWAY,
    ReadingSink,
    Received,
    device_ids,
    start_gateway,
    stop_gateway,
    subscribe,
    write_config,
)
from collector.outbox import Outbox
from deploy.servers import MosquittoServer, find_free_port
from devices import Reading
from devices.simulators import make_simulator

RATE_TARGET = 20_000.0
# Simulators cost 30-100 us a sample: sampling each of 8.64 million readings would
# take longer than the drain. Each device is sampled once a minute and its values
# reused for that minute's seconds; every reading still has its own time.
_RESAMPLE_S = 60
_CHUNK_S = 600
_BUDGET_MB = 4_000.0


async def fill_backlog(state_dir: Path, devices: int, start: datetime, seconds: int) -> int:
    """Write ``seconds`` of readings of every device into the gateway's outbox, oldest first."""
    # Devices are polled at slightly different instants within each second.
    sims = [
        (
            make_simulator(kind, device, seed=index, interval_s=1.0),
            timedelta(microseconds=1 + 9_973 * index),
        )
        for index, (device, kind) in enumerate(device_ids(devices))
    ]
    path = state_dir / f"{GATEWAY}.outbox.sqlite3"
    async with Outbox(path, max_bytes=int(_BUDGET_MB * 1e6)) as outbox:
        for chunk in range(0, seconds, _CHUNK_S):
            batch: list[Reading] = []
            for minute in range(chunk, min(chunk + _CHUNK_S, seconds), _RESAMPLE_S):
                at = start + timedelta(seconds=minute)
                samples = [(sim.sample(at)[0], offset) for sim, offset in sims]
                for second in range(minute, min(minute + _RESAMPLE_S, seconds)):
                    at = start + timedelta(seconds=second)
                    batch.extend(r.model_copy(update={"time": at + o}) for r, o in samples)
            dropped = await outbox.add(batch)
            if dropped:
                raise RuntimeError(f"the outbox budget dropped {dropped} readings while filling")
        return outbox.pending


async def _run(devices: int, hours: float, tmp: Path) -> dict[str, float]:
    seconds = round(hours * 3600)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds)
    filling = time.monotonic()
    stored = await fill_backlog(tmp / "state", devices, start, seconds)
    filled_s = time.monotonic() - filling
    outbox_mb = sum(p.stat().st_size for p in (tmp / "state").iterdir()) / 1e6
    port = find_free_port()
    config = write_config(
        tmp / "gateway.toml",
        port=port,
        state_dir=tmp / "state",
        devices=devices,
        outbox_max_mb=_BUDGET_MB,
        # Unlimited: the benchmark measures the most the gateway can do.
        backlog_readings_per_s=1e9,
    )
    sink = ReadingSink([d for d, _ in device_ids(devices)], start, seconds)
    received = Received()
    subscribed = asyncio.Event()
    async with MosquittoServer(tmp / "broker", port=port) as broker:
        observer = asyncio.create_task(subscribe(broker.port, received, subscribed, sink))
        await subscribed.wait()
        loop = asyncio.get_running_loop()
        launched = loop.time()
        gateway = await start_gateway(config, tmp / "gateway.log")
        process = psutil.Process(gateway.pid)
        mosquitto = psutil.Process(broker.pid)
        broker_cpu = sum(mosquitto.cpu_times()[:2])
        # This process is the subscriber: if it were saturated, it would be the limit.
        observer_cpu = sum(psutil.Process().cpu_times()[:2])
        rss: list[int] = []
        try:
            while sink.backlog < sink.expected:
                if gateway.returncode is not None:
                    raise RuntimeError(f"gateway exited: {(tmp / 'gateway.log').read_text()}")
                rss.append(process.memory_info().rss)
                cpu = sum(process.cpu_times()[:2])
                await asyncio.sleep(0.5)
            drained_at = received.last_at or loop.time()
            broker_cpu = sum(mosquitto.cpu_times()[:2]) - broker_cpu
            observer_cpu = sum(psutil.Process().cpu_times()[:2]) - observer_cpu
            await asyncio.sleep(2)  # anything repeated late would show now
        finally:
            code = await stop_gateway(gateway)
            observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await observer
    if code != 0:
        raise RuntimeError(f"the gateway exited with {code}: {(tmp / 'gateway.log').read_text()}")
    async with Outbox(tmp / "state" / f"{GATEWAY}.outbox.sqlite3", max_bytes=1) as outbox:
        left, in_flight, dropped = outbox.pending, await outbox.inflight(), outbox.dropped
    seqs = received.seqs
    first = received.first_at or launched
    return {
        "backlog_readings": stored,
        "fill_s": filled_s,
        "outbox_file_mb": outbox_mb,
        "drain_s_from_gateway_start": drained_at - launched,
        "readings_per_s_from_gateway_start": sink.expected / (drained_at - launched),
        "readings_per_s_first_to_last": sink.expected / max(drained_at - first, 1e-9),
        "rate_target": RATE_TARGET,
        "backlog_missing": sink.missing,
        "backlog_repeated": sink.repeated,
        "live_readings": len(sink.live),
        "live_repeated": sink.live_repeated,
        "messages": received.messages,
        "seq_repeated": len(seqs) - len(set(seqs)),
        "seq_holes": max(seqs) - min(seqs) + 1 - len(set(seqs)) if seqs else 0,
        "left_in_outbox": left + (in_flight is not None),
        "dropped": dropped,
        "gateway_cpu_percent": 100 * cpu / (drained_at - launched),
        "mosquitto_cpu_percent": 100 * broker_cpu / (drained_at - launched),
        "subscriber_cpu_percent": 100 * observer_cpu / (drained_at - launched),
        "gateway_rss_max_mb": max(rss) / 1e6,
        "load_1m": os.getloadavg()[0],
    }


def run(devices: int = 100, hours: float = 24.0) -> dict[str, float]:
    """Fill the outbox with ``hours`` of ``devices`` at 1 Hz, then drain it through a real broker."""
    with tempfile.TemporaryDirectory(prefix="ecotel-gw-drain-") as tmp:
        return asyncio.run(_run(devices, hours, Path(tmp)))
