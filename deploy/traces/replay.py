"""Replay: publish a trace to a broker with its original spacing, faster by a factor, or as fast as possible."""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from collector.config import BrokerSettings
from deploy.traces.broker import MqttVersion, client_tls
from deploy.traces.file_format import TraceRecord
from deploy.traces.frame_publisher import FramePublisher, Stopped
from deploy.traces.mqtt_properties import properties_from_json
from deploy.traces.rewrite import Rewrite

log = logging.getLogger("ecotel.trace.replay")

# Waits longer than this watch the stop event; shorter ones are plain sleeps (cheaper per message).
_STOP_LATENCY_S = 0.25


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
    due: float | None = None
    """When the message being published now was due (monotonic), while the broker holds it up."""
    acknowledged: int = 0
    """Messages the broker has taken (QoS 1/2 acknowledged, QoS 0 written)."""
    stopped: bool = False
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def late_s(self) -> float:
        """How far behind schedule the replay is now: a broker that holds a message up counts."""
        if self.due is None or self.finished is not None:
            return self.behind_s
        return max(self.behind_s, time.monotonic() - self.due)

    def line(self) -> str:
        of = f"/{self.total:,}" if self.total is not None else ""
        head = "stopped: " if self.stopped else ""
        taken = f" ({self.acknowledged:,} taken by the broker)" if self.stopped else ""
        return (
            f"{head}replayed {self.sent:,}{of} messages{taken} (loop {self.loop + 1}) in "
            f"{self.elapsed_s:.1f} s, {self.rate:,.0f}/s, {self.late_s:.3f} s behind schedule"
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
    sent: list[TraceRecord] | None = None,
) -> ReplayProgress:
    """Publish ``records`` (in file order) and return once every publish is acknowledged.

    Setting ``stop`` ends it promptly, even with the broker not answering (``progress.stopped``).
    ``sent`` collects each message as it went out (rewritten, stamped with its send time).
    """
    if options.speed is None and options.loops == 0 and options.rewrite.restamp:
        # Flat out for ever would stamp readings ever further into the future.
        raise ValueError("re-stamping an endless loop needs a speed, not --max-speed")
    if options.window < 1:
        raise ValueError(f"--window {options.window}: at least 1 message must be in flight")
    if options.speed is not None and not options.speed > 0:
        raise ValueError(f"--speed {options.speed}: must be above 0")
    if options.loops < 0:
        raise ValueError(f"--loop {options.loops}: 0 (until stopped) or more")
    progress = ReplayProgress(total=len(records) * options.loops if options.loops else None)
    if not records:
        progress.finished = time.monotonic()
        return progress
    context = await asyncio.to_thread(client_tls, broker, source)
    async with FramePublisher(
        broker, version=options.version, context=context, window=options.window, stop=stop
    ) as client:
        reporter = asyncio.create_task(_report(progress, options, on_progress))
        try:
            await _publish_all(client, records, options, progress, stop, sent)
        except Stopped:
            progress.stopped = True
        finally:
            progress.acknowledged = client.published
            progress.finished = time.monotonic()
            reporter.cancel()
    if stop is not None and stop.is_set():
        progress.stopped = progress.stopped or progress.sent < (progress.total or 0)
    if on_progress is not None:
        on_progress(progress)
    return progress


async def _publish_all(
    client: FramePublisher,
    records: Sequence[TraceRecord],
    options: ReplayOptions,
    progress: ReplayProgress,
    stop: asyncio.Event | None,
    sent: list[TraceRecord] | None,
) -> None:
    loop = asyncio.get_running_loop()
    rewrite = options.rewrite
    speed = options.speed
    t0 = records[0].t_us
    period = loop_period_us(records)
    total_loops = options.loops
    start_mono = loop.time()
    if speed is None:
        # As fast as possible with re-stamping: the played trace ends now, so nothing is in the future.
        base_us, scale = time.time_ns() // 1000 - (total_loops or 1) * period, 1.0
    else:
        base_us, scale = time.time_ns() // 1000, speed

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    n = 0
    while (total_loops == 0 or n < total_loops) and not stopped():
        progress.loop = n
        retime = _schedule(base_us, n * period - t0, scale)
        for index, rec in enumerate(records, 1):
            if stopped():
                break
            due = start_mono + (n * period + rec.t_us - t0) / 1e6 / scale
            if speed is not None:
                delay = due - loop.time()
                if delay > _STOP_LATENCY_S and stop is not None:
                    # A long gap in the trace: Ctrl-C must not wait for its end.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stopped():
                        break
                elif delay > 0:
                    await asyncio.sleep(delay)
                progress.due = due
            payload = rec.payload
            topic = rec.topic
            if not rewrite.empty:
                topic = rewrite.topic(topic)
                payload = rewrite.payload(payload, retime)
            qos = rec.qos if options.qos is None else options.qos
            props = properties_from_json(rec.props) if options.version == "5" else None
            await client.publish(topic, payload, qos, rec.retain, props, index=index)
            if speed is not None:
                await client.flush()
                # After the publish: a broker holding it up (full window) makes the replay late.
                progress.behind_s = max(0.0, loop.time() - due)
                progress.due = None
            progress.sent += 1
            if sent is not None:
                sent.append(
                    TraceRecord(time.time_ns() // 1000, topic, payload, qos, rec.retain, rec.props)
                )
        n += 1
    await client.drain()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _schedule(base_us: int, offset_us: int, scale: float) -> Callable[[datetime], datetime]:
    """The replay clock of a trace time x: ``base + (offset + x) / scale``, as the schedule.

    One function for every message of a loop: equal times in the trace stay equal (a redelivered
    copy carries its original's times), and a time keeps its place relative to its message's
    send time, whatever the speed.
    """

    def retime(moment: datetime) -> datetime:
        x_us = (moment - _EPOCH) // timedelta(microseconds=1)
        return _EPOCH + timedelta(microseconds=base_us + math.floor((offset_us + x_us) / scale))

    return retime


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
