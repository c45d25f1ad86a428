"""The gateway runtime: poll every device on its schedule and publish the readings over MQTT."""

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiomqtt

from collector import wire
from collector.config import DeviceSettings, GatewaySettings
from collector.sequence import SequenceStore
from collector.sources import ReadingSource, open_source
from devices import Reading

log = logging.getLogger("ecotel.gateway")


@dataclass
class GatewayStats:
    """What the gateway has done so far; read by the stack's progress display."""

    polled: int = 0
    published: int = 0
    messages: int = 0
    dropped: int = 0
    reconnects: int = 0
    device_errors: Counter[str] = field(default_factory=Counter)
    connected: bool = False


class Gateway:
    """One field gateway: a poller per device feeding one MQTT publisher.

    Readings wait in a bounded in-memory buffer while the broker is away; when
    it is full the oldest are dropped, counted and logged. (A durable outbox
    replaces this buffer in the store-and-forward work.)
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.stats = GatewayStats()
        ident = settings.gateway
        self._topic = wire.readings_topic(ident.site, ident.id)
        self._status_topic = wire.status_topic(ident.site, ident.id)
        self._buffer: deque[Reading] = deque()
        self._wakeup = asyncio.Event()
        self._stop = asyncio.Event()
        self._sequence = SequenceStore(ident.state_dir / f"{ident.id}.seq")
        self._inflight: wire.ReadingsMessage | None = None
        self._last_drop_log = -math.inf

    def stop(self) -> None:
        """Ask the gateway to stop polling, flush what it holds and go offline."""
        self._stop.set()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Readings taken but not yet acknowledged by the broker."""
        inflight = len(self._inflight.readings) if self._inflight else 0
        return len(self._buffer) + inflight

    async def run(self, *, drain_timeout_s: float = 10.0) -> None:
        """Run until stop() (or cancellation); then flush for at most ``drain_timeout_s``."""
        await self._sequence.open()
        sources = {d.id: open_source(d) for d in self.settings.devices}
        log.info(
            "gateway %s at %s: %d devices, broker %s:%d",
            self.settings.gateway.id,
            self.settings.gateway.site,
            len(sources),
            self.settings.broker.host,
            self.settings.broker.port,
        )
        async with asyncio.TaskGroup() as tasks:
            for device in self.settings.devices:
                tasks.create_task(self._poll(device, sources[device.id]))
            publisher = tasks.create_task(self._publish_until_stopped())
            await self._stop.wait()
            try:
                async with asyncio.timeout(drain_timeout_s):
                    await asyncio.shield(publisher)
            except TimeoutError:
                publisher.cancel()
                if self.pending:
                    log.error(
                        "gateway %s stopped with %d readings unsent (broker unreachable)",
                        self.settings.gateway.id,
                        self.pending,
                    )

    async def _poll(self, device: DeviceSettings, source: ReadingSource) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while not self._stop.is_set():
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow
            # a cancellation that races its timeout, leaving the task unkillable.
            try:
                async with asyncio.timeout(device.interval_s):
                    readings = await source.read(datetime.now(UTC))
            except Exception as exc:
                self.stats.device_errors[device.id] += 1
                log.warning("device %s: read failed: %r", device.id, exc)
            else:
                self._accept(readings)
            # A fixed grid, not sleep(interval): a slow read must not make the
            # schedule drift, and missed ticks are skipped, not bunched.
            tick = max(tick + 1, math.ceil((loop.time() - start) / device.interval_s))
            delay = start + tick * device.interval_s - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0)):
                    await self._stop.wait()

    def _accept(self, readings: list[Reading]) -> None:
        self.stats.polled += len(readings)
        self._buffer.extend(readings)
        overflow = self.pending - self.settings.gateway.buffer_max_readings
        if overflow > 0:
            for _ in range(min(overflow, len(self._buffer))):
                self._buffer.popleft()
            self.stats.dropped += overflow
            now = time.monotonic()
            if now - self._last_drop_log >= 10.0:
                # Once per 10 s at most: a full buffer drops on every poll.
                self._last_drop_log = now
                log.error(
                    "gateway %s: buffer of %d readings full, dropping the oldest "
                    "(%d dropped so far)",
                    self.settings.gateway.id,
                    self.settings.gateway.buffer_max_readings,
                    self.stats.dropped,
                )
        self._wakeup.set()

    async def _publish_until_stopped(self) -> None:
        broker = self.settings.broker
        delay = 0.5
        while True:
            try:
                async with self._client() as client:
                    self.stats.connected = True
                    delay = 0.5
                    await self._announce(client, "online", "connected")
                    log.info(
                        "gateway %s connected to %s:%d",
                        self.settings.gateway.id,
                        broker.host,
                        broker.port,
                    )
                    await self._publish_batches(client)
                    await self._announce(client, "offline", "shutdown")
                    return
            except aiomqtt.MqttError as exc:
                self.stats.connected = False
                self.stats.reconnects += 1
                log.warning(
                    "gateway %s: broker link lost (%s); retrying in %.1f s, %d pending",
                    self.settings.gateway.id,
                    exc,
                    delay,
                    self.pending,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, broker.reconnect_max_s)
            finally:
                self.stats.connected = False

    def _client(self) -> aiomqtt.Client:
        ident = self.settings.gateway
        will = wire.GatewayStatus(
            gateway=ident.id, site=ident.site, state="offline", reason="connection_lost"
        )
        return aiomqtt.Client(
            self.settings.broker.host,
            self.settings.broker.port,
            identifier=self.settings.client_id,
            keepalive=self.settings.broker.keepalive_s,
            will=aiomqtt.Will(self._status_topic, will.encode(), qos=wire.QOS, retain=True),
            timeout=10,
        )

    async def _announce(self, client: aiomqtt.Client, state: str, reason: str) -> None:
        ident = self.settings.gateway
        message = wire.GatewayStatus.model_validate(
            {
                "gateway": ident.id,
                "site": ident.site,
                "state": state,
                "reason": reason,
                "at": datetime.now(UTC),
            }
        )
        await client.publish(self._status_topic, message.encode(), qos=wire.QOS, retain=True)

    async def _publish_batches(self, client: aiomqtt.Client) -> None:
        ident = self.settings.gateway
        while True:
            if self._inflight is None:
                if not self._buffer:
                    if self._stop.is_set():
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if len(self._buffer) < ident.batch_max_readings and not self._stop.is_set():
                    # Let a batch fill for a moment: fewer, larger messages are
                    # where MQTT throughput comes from.
                    await asyncio.sleep(ident.batch_max_delay_s)
                count = min(len(self._buffer), ident.batch_max_readings)
                readings = [self._buffer.popleft() for _ in range(count)]
                self._inflight = wire.ReadingsMessage(
                    gateway=ident.id,
                    site=ident.site,
                    seq=await self._sequence.reserve(),
                    sent_at=datetime.now(UTC),
                    readings=readings,
                )
            # A message that failed is sent again with the same seq: the broker
            # may have had it, and the ingest counts the repeat as a duplicate.
            message = self._inflight
            await client.publish(self._topic, message.encode(), qos=wire.QOS)
            self._inflight = None
            self.stats.messages += 1
            self.stats.published += len(message.readings)
