"""Replay: publish a trace to a broker with its original spacing, faster by a factor, or as fast as possible."""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from collector.config import BrokerSettings
from deploy.traces.broker import MqttVersion, client_tls
from deploy.traces.file_format import TraceRecord
from deploy.traces.frame_publisher import FramePublisher
from deploy.traces.mqtt_properties import properties_from_json
from deploy.traces.rewrite import Rewrite

log = logging.getLogger("ecotel.trace.replay")


@dataclass(frozen=True)
class ReplayOptions:
    speed: float | None = 1.0
    """1 = original spacing, 10 = ten times faster, None = as fast as possible."""
    loops: int = 1
    """How many times to play the trace; 0 = until stopped."""
    rewrite: Rewrite = field(default_factory=Rewrite)
    qos: int | None = None
    """Publish at this QoS instead of each message's recorded one."""
    version: MqttVersion = "5"
    window: int = 1000
    """Publishes awaiting their acknowledgement at most (QoS 1 and 2)."""
    progress_every_s: float = 1.0


@dataclass
class ReplayProgress:
    sent: int = 0
    total: int | None = None
    loop: int = 0
    started: float = field(default_factory=time.monotonic)
    behind_s: float = 0.0
    """How late the last message went out against its schedule."""
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        of = f"/{self.total:,}" if self.total is not None else ""
        return (
            f"replayed {self.sent:,}{of} messages (loop {self.loop + 1}) in {self.elapsed_s:.1f} s, "
            f"{self.rate:,.0f}/s, {self.behind_s:.3f} s behind schedule"
        )


def loop_period_us(records: Sequence[TraceRecord]) -> int:
    """Virtual time from one loop's first message to the next loop's first: span + one mean gap."""
    if len(records) < 2:
        return 1_000_000
    span = records[-1].t_us - records[0].t_us
    return span + max(span // (len(records) - 1), 1)


async def replay(
    broker: BrokerSettings,
    records: Sequence[TraceRecord],
    options: ReplayOptions,
    *,
    source: str = "command line",
    stop: asyncio.Event | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplayProgress:
    """Publish ``records`` (in file order) and return once every publish is acknowledged."""
    if options.speed is None and options.loops == 0 and options.rewrite.restamp:
        # Flat out for ever would stamp readings ever further into the future.
        raise ValueError("re-stamping an endless loop needs a speed, not --max-speed")
    progress = ReplayProgress(total=len(records) * options.loops if options.loops else None)
    if not records:
        progress.finished = time.monotonic()
        return progress
    context = await asyncio.to_thread(client_tls, broker, source)
    async with FramePublisher(
        broker, version=options.version, context=context, window=options.window
    ) as client:
        reporter = asyncio.create_task(_report(progress, options, on_progress))
        try:
            await _publish_all(client, records, options, progress, stop)
        finally:
            progress.finished = time.monotonic()
            reporter.cancel()
    if on_progress is not None:
        on_progress(progress)
    return progress


async def _publish_all(
    client: FramePublisher,
    records: Sequence[TraceRecord],
    options: ReplayOptions,
    progress: ReplayProgress,
    stop: asyncio.Event | None,
) -> None:
    loop = asyncio.get_running_loop()
    rewrite = options.rewrite
    t0 = records[0].t_us
    period = loop_period_us(records)
    total_loops = options.loops
    # As fast as possible with re-stamping: the played trace ends now, so nothing is in the future.
    fast_base_us = time.time_ns() // 1000 - (total_loops or 1) * period
    start_mono = loop.time()
    start_wall_us = time.time_ns() // 1000

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    n = 0
    while (total_loops == 0 or n < total_loops) and not stopped():
        progress.loop = n
        for rec in records:
            if stopped():
                break
            virtual_us = n * period + (rec.t_us - t0)
            if options.speed is not None:
                due = start_mono + virtual_us / 1e6 / options.speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                progress.behind_s = max(0.0, loop.time() - due)
                new_time_us = start_wall_us + int(virtual_us / options.speed)
            else:
                new_time_us = fast_base_us + virtual_us
            payload = rec.payload
            topic = rec.topic
            if not rewrite.empty:
                topic = rewrite.topic(topic)
                shift = timedelta(microseconds=new_time_us - rec.t_us)
                payload = rewrite.payload(payload, shift)
            qos = rec.qos if options.qos is None else options.qos
            props = properties_from_json(rec.props) if options.version == "5" else None
            await client.publish(topic, payload, qos, rec.retain, props)
            if options.speed is not None:
                await client.flush()
            progress.sent += 1
        n += 1
    await client.drain()


async def _report(
    progress: ReplayProgress,
    options: ReplayOptions,
    on_progress: Callable[[ReplayProgress], None] | None,
) -> None:
    if on_progress is None:
        return
    while True:
        await asyncio.sleep(options.progress_every_s)
        on_progress(progress)
