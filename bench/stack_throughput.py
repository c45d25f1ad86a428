"""Readings per second the whole local stack stores: gateways -> Mosquitto -> ingest -> InfluxDB."""

import asyncio
import tempfile
from pathlib import Path

from deploy.stack import StackOptions, run_stack


async def _run(options: StackOptions) -> dict[str, float]:
    report = await run_stack(options, asyncio.Event())
    stored = sum(v for k, v in report.stored_by_measurement.items() if k != "gateway_status")
    return {
        "published": report.published,
        "written": report.written,
        "stored_in_influxdb": stored,
        "elapsed_s": report.elapsed_s,
        "stored_per_s": report.written / report.elapsed_s,
        "lost_after_publish": report.published - stored,
        "dropped_by_gateway_buffers": report.dropped,
    }


def run(scale: int = 50, interval_s: float = 0.1, duration_s: float = 30.0) -> dict[str, float]:
    """Run the stack with ``scale`` copies of every simulated device polled every ``interval_s``."""
    with tempfile.TemporaryDirectory(prefix="ecotel-bench-") as tmp:
        options = StackOptions(
            data_dir=Path(tmp),
            duration_s=duration_s,
            interval_s=interval_s,
            scale=scale,
            progress_every_s=5,
        )
        return asyncio.run(_run(options))
