"""Record: subscribe to topic filters on a broker and stream every message into a trace file."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from collector.config import BrokerSettings
from deploy.traces.broker import MqttVersion, broker_url, client_tls, make_client
from deploy.traces.file_format import (
    PART_DIGITS,
    JsonDict,
    TraceError,
    TraceHeader,
    TraceRecord,
    TraceWriter,
    existing_parts,
    part_path,
)
from deploy.traces.mqtt_properties import properties_to_json

log = logging.getLogger("ecotel.trace.record")


@dataclass(frozen=True)
class RecordOptions:
    filters: list[str]
    out: Path
    version: MqttVersion = "5"
    qos: int = 2
    """Subscription QoS; 2 keeps each message's own QoS (the broker delivers min(publish, sub))."""
    append: bool = False
    rotate_bytes: int | None = None
    rotate_s: float | None = None
    flush_interval_s: float = 1.0
    max_messages: int | None = None
    note: str | None = None


@dataclass
class RecordStats:
    messages: int = 0
    payload_bytes: int = 0
    reconnects: int = 0
    subscribed: int = 0
    """Times the filters were subscribed (1 + successful reconnects)."""
    copies_skipped: int = 0
    """Second copies of a message (overlapping filters) and retained copies after a reconnect."""
    files: list[Path] = field(default_factory=list)


class _RotatingWriter:
    """One TraceWriter at a time; a new numbered part once the current one is big or old enough."""

    def __init__(self, options: RecordOptions, broker: str, stats: RecordStats) -> None:
        self.options = options
        self.broker = broker
        self.stats = stats
        self.rotating = options.rotate_bytes is not None or options.rotate_s is not None
        self.part = 0
        self.digits = PART_DIGITS
        self.writer: TraceWriter | None = None
        self.granted_note: str | None = None
        self._lock = asyncio.Lock()

    def _path(self) -> Path:
        if not self.rotating:
            return self.options.out
        if self.part == 10**self.digits:
            log.warning(
                "part %d: from here on part names no longer sort in recording order "
                "(sort them by number: ls -v)",
                self.part,
            )
        return part_path(self.options.out, self.part, self.digits)

    def _continue_parts(self) -> None:
        """Number after the parts on disk: --append continues them, else they are refused."""
        parts = existing_parts(self.options.out)
        if not parts:
            return
        last, digits, path = parts[-1]
        if not self.options.append:
            raise TraceError(
                f"{path} exists (part {last}); pass --append to continue after it, "
                "or choose another name"
            )
        self.part = last
        # Keep the set's padding (older versions wrote 4 digits) so its names sort.
        self.digits = digits

    def _open(self) -> TraceWriter:
        if self.rotating and self.part == 0:
            self._continue_parts()
        self.part += 1
        header = TraceHeader(
            broker=self.broker,
            filters=self.options.filters,
            started_at=datetime.now(UTC),
            part=self.part if self.rotating else None,
            note="; ".join(n for n in (self.options.note, self.granted_note) if n) or None,
        )
        writer = TraceWriter(self._path(), header, append=self.options.append)
        if writer.repaired_lines is not None:
            log.warning(
                "%s ended in a cut gzip member (recorder killed?): its %d whole lines were "
                "written again as a complete member before appending",
                writer.path,
                writer.repaired_lines,
            )
        self.stats.files.append(writer.path)
        return writer

    async def open(self, granted_note: str | None = None) -> None:
        """The first part; ``granted_note`` (what the broker granted less) goes in every header."""
        self.granted_note = granted_note
        self.writer = await asyncio.to_thread(self._open)

    def write(self, record: TraceRecord) -> None:
        assert self.writer is not None
        self.writer.buffer(record)

    def mark(self, note: str) -> None:
        """A header line in the stream: where the recording resumed, and why."""
        assert self.writer is not None
        self.writer.buffer_header(
            TraceHeader(
                broker=self.broker,
                filters=self.options.filters,
                started_at=datetime.now(UTC),
                part=self.part if self.rotating else None,
                note=note,
            )
        )

    async def flush(self) -> None:
        """Write the buffer as one member (in a thread; the lock keeps members in order); rotate."""
        async with self._lock:
            writer = self.writer
            if writer is None:
                return
            data = writer.take()
            if data:
                await asyncio.to_thread(writer.write_member, data)
            if self.rotating and self._due(writer):
                # Swap first, close after: messages arriving meanwhile go to the new part.
                self.writer = await asyncio.to_thread(self._open)
                await asyncio.to_thread(writer.close)

    def _due(self, writer: TraceWriter) -> bool:
        opts = self.options
        if opts.rotate_bytes is not None and writer.size >= opts.rotate_bytes:
            return True
        age = time.monotonic() - writer.opened_at
        return opts.rotate_s is not None and age >= opts.rotate_s

    async def close(self) -> None:
        async with self._lock:
            if self.writer is not None:
                await asyncio.to_thread(self.writer.close)
                self.writer = None


def to_record(message: aiomqtt.Message, t_us: int) -> TraceRecord:
    payload = message.payload
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes | bytearray):
        payload = str(payload).encode()
    return TraceRecord(
        t_us=t_us,
        topic=str(message.topic),
        payload=bytes(payload),
        qos=message.qos,
        retain=bool(message.retain),
        props=_published_properties(message),
    )


def _published_properties(message: aiomqtt.Message) -> JsonDict | None:
    """The publisher's properties: the subscription identifiers are the recorder's own."""
    props = properties_to_json(message.properties)
    if props is not None:
        props.pop("SubscriptionIdentifier", None)
    return props or None


async def record(
    broker: BrokerSettings,
    options: RecordOptions,
    stop: asyncio.Event,
    *,
    source: str = "command line",
    subscribed: asyncio.Event | None = None,
    on_record: Callable[[TraceRecord], None] | None = None,
    stats: RecordStats | None = None,
) -> RecordStats:
    """Record until ``stop`` is set (or max_messages); the file is complete and valid on return.

    ``stats`` (made here if not given) counts as messages arrive.
    """
    stats = stats if stats is not None else RecordStats()
    context = await asyncio.to_thread(client_tls, broker, source)
    writer = _RotatingWriter(options, broker_url(broker), stats)
    flusher: asyncio.Task[None] | None = None
    delay = 0.5
    try:
        while not stop.is_set():
            try:
                async with make_client(
                    broker, version=options.version, purpose="record", context=context
                ) as client:
                    first = writer.writer is None
                    # Subscribed before any message is consumed: none is lost meanwhile.
                    subs = await _subscribe(client, options, again=not first)
                    if first:
                        # Only once subscribed: a refused connection or filter leaves no
                        # empty trace.
                        await writer.open(subs.note())
                        flusher = asyncio.create_task(
                            _flush_every(writer, options.flush_interval_s)
                        )
                    else:
                        writer.mark(
                            "reconnected after the broker link was lost: messages "
                            "published in between are not in this trace"
                        )
                    stats.subscribed += 1
                    delay = 0.5
                    if subscribed is not None:
                        subscribed.set()
                    log.info(
                        "recording %s from %s into %s",
                        options.filters,
                        broker_url(broker),
                        options.out,
                    )
                    if await _consume_until(client, writer, stats, subs, on_record, stop):
                        break
            except aiomqtt.MqttError as exc:
                if writer.writer is None:
                    raise  # never connected: wrong address, credentials or certificate
                stats.reconnects += 1
                log.warning("recorder: broker link lost (%s); reconnecting in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                delay = min(delay * 2, 30.0)
    finally:
        if flusher is not None:
            flusher.cancel()
        # Also on Ctrl-C: what was received is on disk and the file is valid.
        with contextlib.suppress(Exception):
            await asyncio.shield(writer.flush())
        await asyncio.shield(writer.close())
    return stats


class SubscriptionRefused(Exception):
    """The broker refused a topic filter (ACL, bad filter): recording it would record nothing."""


@dataclass
class _Subscriptions:
    """The filters as the broker granted them, and which delivered copies to keep."""

    version: MqttVersion
    filters: list[str]
    granted: list[int | None]
    """Granted QoS per filter; None where the broker refused it."""
    again: bool
    lowered: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        return "; ".join(self.lowered) or None

    def keep(self, message: aiomqtt.Message) -> bool:
        """One copy per message, and no retained copies a re-subscription brought again."""
        if self.again and self.version == "3.1.1" and message.retain:
            # 3.1.1 sets retain only on what a new subscription delivers (MQTT-3.3.1-9):
            # the broker's stored copy, not traffic (MQTT 5 asks for none: retain handling 2).
            return False
        if self.version != "5":
            return True  # 3.1.1: Mosquitto sends one copy for overlapping filters
        ids = getattr(message.properties, "SubscriptionIdentifier", None) or []
        # MQTT 5 brokers may send one copy per matching subscription, each with its
        # subscription's identifier: keep the one of the first granted filter that matches.
        for number, (topic_filter, qos) in enumerate(zip(self.filters, self.granted, strict=True)):
            if qos is not None and topic_matches_sub(topic_filter, str(message.topic)):
                return not ids or number + 1 in ids
        return True


async def _subscribe(
    client: aiomqtt.Client, options: RecordOptions, *, again: bool
) -> _Subscriptions:
    granted: list[int | None] = []
    refused: list[str] = []
    # A filter given twice is one subscription (the second SUBSCRIBE replaces the first).
    filters = list(dict.fromkeys(options.filters))
    subs = _Subscriptions(options.version, filters, granted, again)
    for number, topic in enumerate(filters, start=1):
        if options.version == "5":
            props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            props.SubscriptionIdentifier = number
            # Retain-as-published: keep the publisher's retain flag, not only the flag of
            # retained messages delivered at subscribe time. After a reconnect, no retained
            # messages at all: they were recorded already, or are in the gap the note marks.
            sub_options = SubscribeOptions(
                qos=options.qos, retainAsPublished=True, retainHandling=2 if again else 0
            )
            codes = await client.subscribe(topic, options=sub_options, properties=props)
        else:
            codes = await client.subscribe(topic, qos=options.qos)
        code = _code(codes[0])
        if code >= 0x80:
            granted.append(None)
            refused.append(f"{topic!r} ({_reason(codes[0])})")
            continue
        granted.append(code)
        if code < options.qos:
            subs.lowered.append(
                f"the broker granted QoS {code} for {topic!r} (asked {options.qos}): "
                f"messages published at a higher QoS are recorded at QoS {code}"
            )
            log.warning("%s", subs.lowered[-1])
    if refused:
        why = f"the broker refused topic filter {', '.join(refused)}"
        if not again:
            raise SubscriptionRefused(f"{why}: nothing would be recorded for it")
        log.error("%s after reconnecting: its messages are no longer recorded", why)
    return subs


def _code(code: ReasonCode | int) -> int:
    return code if isinstance(code, int) else int(code.value)


def _reason(code: ReasonCode | int) -> str:
    return f"0x{_code(code):02X}" + ("" if isinstance(code, int) else f" {code}")


async def _consume_until(
    client: aiomqtt.Client,
    writer: _RotatingWriter,
    stats: RecordStats,
    subs: _Subscriptions,
    on_record: Callable[[TraceRecord], None] | None,
    stop: asyncio.Event,
) -> bool:
    """Consume until stopped or max_messages (True); a lost link raises MqttError."""
    consumer = asyncio.create_task(_consume(client, writer, stats, subs, on_record))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not consumer.done():
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    if consumer.done() and not consumer.cancelled():
        consumer.result()  # the link broke: MqttError
    return True


async def _consume(
    client: aiomqtt.Client,
    writer: _RotatingWriter,
    stats: RecordStats,
    subs: _Subscriptions,
    on_record: Callable[[TraceRecord], None] | None,
) -> None:
    options = writer.options
    async for message in client.messages:
        if not subs.keep(message):
            stats.copies_skipped += 1
            continue
        rec = to_record(message, time.time_ns() // 1000)
        writer.write(rec)
        stats.messages += 1
        stats.payload_bytes += len(rec.payload)
        if on_record is not None:
            on_record(rec)
        if writer.writer is not None and writer.writer.buffered >= writer.writer.member_bytes:
            await writer.flush()
        if options.max_messages is not None and stats.messages >= options.max_messages:
            return


async def _flush_every(writer: _RotatingWriter, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await writer.flush()


@contextlib.asynccontextmanager
async def recording(
    broker: BrokerSettings, options: RecordOptions, *, quiet_s: float = 1.0, timeout_s: float = 60
) -> AsyncIterator[RecordStats]:
    """Record while the body runs; after it, once nothing has arrived for ``quiet_s``, stop.

    For scripts and tests that publish something and want all of it in the trace.
    """
    stop, subscribed = asyncio.Event(), asyncio.Event()
    last = [time.monotonic()]

    def heard(_: TraceRecord) -> None:
        last[0] = time.monotonic()

    stats = RecordStats()
    task = asyncio.create_task(
        record(broker, options, stop, subscribed=subscribed, on_record=heard, stats=stats)
    )
    waiter = asyncio.create_task(subscribed.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        await task  # raises what went wrong (broker unreachable ...)
    try:
        yield stats
        # Quiet from the end of the body on: what it published last is still on its way.
        last[0] = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
