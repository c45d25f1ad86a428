"""Resident memory and CPU of a real ``ecotel-gateway run`` polling 100 simulated devices every second."""

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

import psutil

from bench.gateway_setup import Received, start_gateway, stop_gateway, subscribe, write_config
from deploy.servers import MosquittoServer

RSS_TARGET_MB = 60.0
CPU_TARGET_PERCENT = 5.0


async def _run(devices: int, warmup_s: float, window_s: float, tmp: Path) -> dict[str, float]:
    async with MosquittoServer(tmp / "broker") as broker:
        config = write_config(
            tmp / "gateway.toml", port=broker.port, state_dir=tmp / "state", devices=devices
        )
        received = Received()
        subscribed = asyncio.Event()
        observer = asyncio.create_task(subscribe(broker.port, received, subscribed))
        await subscribed.wait()
        gateway = await start_gateway(config, tmp / "gateway.log")
        try:
            process = psutil.Process(gateway.pid)
            await asyncio.sleep(warmup_s)
            if gateway.returncode is not None:
                raise RuntimeError(f"the gateway exited: {(tmp / 'gateway.log').read_text()}")
            readings_before = received.readings
            cpu_before = sum(process.cpu_times()[:2])
            started = time.monotonic()
            rss: list[int] = []
            while time.monotonic() - started < window_s:
                rss.append(process.memory_info().rss)
                await asyncio.sleep(1.0)
            cpu = sum(process.cpu_times()[:2]) - cpu_before
            elapsed = time.monotonic() - started
            readings = received.readings - readings_before
            uss = process.memory_full_info().uss
        finally:
            code = await stop_gateway(gateway)
            observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await observer
    if code != 0:
        raise RuntimeError(f"the gateway exited with {code}: {(tmp / 'gateway.log').read_text()}")
    return {
        "devices": devices,
        "window_s": elapsed,
        "readings_received_per_s": readings / elapsed,
        "rss_max_mb": max(rss) / 1e6,
        "rss_mean_mb": sum(rss) / len(rss) / 1e6,
        "uss_mb": uss / 1e6,
        "rss_target_mb": RSS_TARGET_MB,
        "cpu_percent_of_one_core": 100 * cpu / elapsed,
        "cpu_target_percent": CPU_TARGET_PERCENT,
        "load_1m": os.getloadavg()[0],
    }


def run(devices: int = 100, warmup_s: float = 15.0, window_s: float = 60.0) -> dict[str, float]:
    """Start Mosquitto and the gateway, let it warm up, then sample its RSS and CPU time."""
    with tempfile.TemporaryDirectory(prefix="ecotel-gw-footprint-") as tmp:
        return asyncio.run(_run(devices, warmup_s, window_s, Path(tmp)))
