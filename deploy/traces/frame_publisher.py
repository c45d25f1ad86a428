"""The replay's MQTT connection: PUBLISH frames encoded here and written in batches over asyncio.

Why not a client library: measured on this machine (bench/trace_replay.py),
aiomqtt replayed ~3,300 msg/s at QoS 0 and ~4,000 at QoS 1 (a task and a
future per publish), and paho driven from the loop ~12,000-20,000 and
~8,000-9,500 (it builds several objects per packet and sends each packet
with its own syscall). A PUBLISH frame is a few bytes of header before the
topic and payload: encoding it and writing many per syscall leaves the
broker as the limit. Only what a publisher needs is here: CONNECT (3.1.1 or
5, credentials, TLS), PUBLISH at QoS 0/1/2 with the acknowledgements, PING,
DISCONNECT. MQTT 5 properties are packed by paho's Properties.
"""

import asyncio
import contextlib
import ssl
import struct
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.config import BrokerSettings
from deploy.traces.broker import MqttVersion
from pipelines.mqtt_packets import connect_packet, remaining_length, utf8

_PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _PINGRESP = 4, 5, 6, 7, 13
# Write once this much is queued, so a fast replay makes few large writes.
_WRITE_BYTES = 64 * 1024
_BUFFER_HIGH = 1024 * 1024
# How long closing waits for a broker that stopped reading (frozen, overloaded) before aborting.
_CLOSE_S = 2.0
_CONNACK_S = 10.0

T = TypeVar("T")


class PublishError(Exception):
    """The broker refused the connection, or the link broke during the replay."""


class Stopped(Exception):
    """The stop event was set while waiting on the broker (window full, socket not draining)."""


def reason_name(code: int) -> str:
    """An MQTT 5 reason code's name; Mosquitto answers PUBLISH with codes (0x95) that the spec
    lists only for DISCONNECT, so that list is the fallback."""
    for kind in (PacketTypes.PUBACK, PacketTypes.DISCONNECT):
        with contextlib.suppress(ValueError):
            return str(ReasonCode(kind, identifier=code).getName())
    return "unknown reason"


def _packed(props: Properties | None) -> bytes:
    if props is None:
        return b"\x00"
    return bytes(props.pack())  # type: ignore[no-untyped-call]


class FramePublisher:
    """One MQTT connection; at most ``window`` QoS 1/2 publishes unacknowledged.

    Waits on the broker end with ``Stopped`` once ``stop`` is set, however stuck the broker is.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        version: MqttVersion,
        context: ssl.SSLContext | None,
        window: int,
        purpose: str = "replay",
        stop: asyncio.Event | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window {window}: at least 1 message must be allowed in flight")
        self.broker = broker
        self.version = version
        self.context = context
        self.window = window
        self.client_id = broker.client_id or f"ecotel-trace-{purpose}-{uuid.uuid4().hex[:8]}"
        self.published = 0
        self._unacked: set[int] = set()
        # (index, topic, bytes) per packet id in flight: errors name the message, not the id.
        self._names: dict[int, tuple[int, str, int]] = {}
        self.max_packet: int | None = None
        """The broker's MQTT 5 Maximum Packet Size, when its CONNACK gives one."""
        self._stop = stop
        self._stopped = False
        # A QoS 2 message's packet id until its PUBREL is written: the next message waits for it.
        self._releasing: int | None = None
        self._released = asyncio.Event()
        self._next_id = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._error: PublishError | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> "FramePublisher":
        broker = self.broker
        try:
            self._reader, self._writer = await asyncio.open_connection(
                broker.host,
                broker.port,
                ssl=self.context,
                server_hostname=broker.host if self.context is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise PublishError(f"cannot connect to {broker.host}:{broker.port}: {exc}") from None
        # Fewer, larger waits for the socket: a flat-out replay keeps up to 1 MiB queued.
        self._writer.transport.set_write_buffer_limits(high=_BUFFER_HIGH)
        password = broker.password.get_secret_value() if broker.password else None
        self._writer.write(
            connect_packet(
                self.client_id,
                broker.keepalive_s,
                clean=True,
                username=broker.username,
                password=password,
                version=5 if self.version == "5" else 4,
            )
        )
        try:
            async with asyncio.timeout(_CONNACK_S):
                kind, body = await self._read_packet()
        except TimeoutError:
            self._writer.transport.abort()
            raise PublishError(
                f"{broker.host}:{broker.port} did not answer CONNECT within {_CONNACK_S:.0f} s "
                "(not an MQTT broker, or a stuck one?)"
            ) from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._writer.transport.abort()
            raise PublishError(
                f"{broker.host}:{broker.port} closed the link before answering CONNECT ({exc!r})"
            ) from None
        if kind != 2:
            raise PublishError(f"the broker answered CONNECT with packet type {kind}")
        code = body[1]
        if code != 0:
            raise PublishError(f"the broker refused the connection (CONNACK code {code:#x})")
        if self.version == "5" and len(body) > 2:
            props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
            props.unpack(body[2:])  # type: ignore[no-untyped-call]
            limit = getattr(props, "ReceiveMaximum", None)
            if isinstance(limit, int) and limit > 0:
                # An MQTT 5 broker disconnects a client that exceeds its receive maximum.
                self.window = min(self.window, limit)
            biggest = getattr(props, "MaximumPacketSize", None)
            if isinstance(biggest, int) and biggest > 0:
                # ... and one that sends a larger packet: check before sending, naming the message.
                self.max_packet = biggest
        self._room.set()
        self._idle.set()
        self._tasks = [
            asyncio.create_task(self._read_acks()),
            asyncio.create_task(self._ping()),
        ]
        if self._stop is not None:
            self._tasks.append(asyncio.create_task(self._watch_stop(self._stop)))
        return self

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopped = True
        # Wake every wait on the broker; each one then sees _stopped.
        self._room.set()
        self._idle.set()
        self._released.set()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._stopped:
            raise Stopped

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer is not None:
            try:
                # A broker that stopped reading must not hold the exit (Ctrl-C) for ever.
                async with asyncio.timeout(_CLOSE_S):
                    self._flush()
                    self._writer.write(b"\xe0\x00")
                    await self._writer.drain()
                    self._writer.close()
                    await self._writer.wait_closed()
            except Exception:
                self._writer.transport.abort()

    async def _read_packet(self) -> tuple[int, bytes]:
        assert self._reader is not None
        head = await self._reader.readexactly(1)
        length, shift = 0, 0
        while True:
            byte = (await self._reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = await self._reader.readexactly(length) if length else b""
        return head[0] >> 4, body

    async def _read_acks(self) -> None:
        assert self._writer is not None
        try:
            while True:
                kind, body = await self._read_packet()
                if kind in (_PUBACK, _PUBCOMP):
                    self._done(struct.unpack("!H", body[:2])[0], body)
                elif kind == _PUBREC:
                    mid = struct.unpack("!H", body[:2])[0]
                    if len(body) > 2 and body[2] >= 0x80:
                        self._done(mid, body)
                    else:
                        self._writer.write(b"\x62\x02" + body[:2])
                    if mid == self._releasing:
                        self._released.set()
                elif kind == 14:
                    raise PublishError(f"the broker disconnected us (reason {body[:1].hex()})")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(self._broken(exc))
        except PublishError as exc:
            self._fail(exc)

    def _done(self, mid: int, body: bytes) -> None:
        if self.version == "5" and len(body) > 2 and body[2] >= 0x80:
            index, topic, _ = self._names.get(mid, (0, "?", 0))
            code = body[2]
            self._fail(
                PublishError(
                    f"the broker refused message {index} of the trace (topic {topic}, packet id "
                    f"{mid}): reason {code:#x}, {reason_name(code)}"
                )
            )
            return
        self._unacked.discard(mid)
        self._names.pop(mid, None)
        self.published += 1
        if len(self._unacked) < self.window:
            self._room.set()
        if not self._unacked:
            self._idle.set()

    def _broken(self, exc: BaseException) -> PublishError:
        """The link broke: name the largest message in flight, which a broker closes the link on
        when it exceeds its max_packet_size (MQTT 3.1.1 has no way to say so)."""
        text = f"the broker link broke: {exc!r}"
        if self._names:
            index, topic, size = max(self._names.values(), key=lambda name: name[2])
            text += (
                f"; {len(self._names):,} messages unacknowledged, the largest message {index} of "
                f"the trace (topic {topic}, a {size:,}-byte packet): a broker closes the link on "
                "a packet over its size limit"
            )
        return PublishError(text)

    def _fail(self, error: PublishError) -> None:
        if self._error is None:
            self._error = error
        self._room.set()
        self._idle.set()
        self._released.set()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.broker.keepalive_s / 2))
            self._out.append(b"\xc0\x00")
            self._flush()

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65_535 + 1
            if self._next_id not in self._unacked:
                return self._next_id

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Properties | None,
        *,
        index: int = 0,
    ) -> None:
        """Queue one message (``index``: its place in the trace, for errors); waits while the
        window is full. Call ``flush`` or ``drain`` after.

        A QoS 2 message is written and released (PUBREC, PUBREL) before this returns: the broker
        passes it on at PUBREL, so a later message sent earlier would overtake it.
        """
        self._check()
        while qos and len(self._unacked) >= self.window:
            self._flush()
            self._room.clear()
            await self._room.wait()
            self._check()
        variable = utf8(topic)
        mid = 0
        if qos:
            mid = self._packet_id()
            variable += struct.pack("!H", mid)
        if self.version == "5":
            variable += _packed(props)
        head = 0x30 | (qos << 1) | (1 if retain else 0)
        length = len(variable) + len(payload)
        fixed = bytes([head]) + remaining_length(length)
        if self.max_packet is not None and len(fixed) + length > self.max_packet:
            raise PublishError(
                f"message {index} of the trace (topic {topic}) is a {len(fixed) + length:,}-byte "
                f"packet, more than the broker takes (its maximum packet size, "
                f"{self.max_packet:,} bytes); not sent, and nothing after it"
            )
        if qos:
            self._unacked.add(mid)
            self._names[mid] = (index, topic, len(fixed) + length)
            self._idle.clear()
        else:
            self.published += 1
        self._out.append(fixed + variable)
        self._out.append(payload)
        self._out_bytes += length + 5
        if qos == 2:
            self._releasing = mid
            self._released.clear()
            await self.flush()
            await self._released.wait()
            self._releasing = None
            self._check()
        elif self._out_bytes >= _WRITE_BYTES:
            # Let the transport push the bytes before we queue more.
            await self.flush()

    def _flush(self) -> None:
        if self._out and self._writer is not None:
            self._writer.writelines(self._out)
            self._out = []
            self._out_bytes = 0

    async def flush(self) -> None:
        """Write what is queued now (a paced replay calls this after each message)."""
        self._flush()
        if self._writer is not None:
            try:
                low, _ = self._writer.transport.get_write_buffer_limits()
                if self._writer.transport.get_write_buffer_size() <= low:
                    await self._writer.drain()  # not paused: returns at once
                else:
                    await self._unless_stopped(self._writer.drain())
            except OSError as exc:
                self._fail(self._broken(exc))
        self._check()

    async def _unless_stopped(self, waiting: Awaitable[T]) -> T:
        """``waiting``'s result, or ``Stopped`` as soon as the stop event is set."""
        task = asyncio.ensure_future(waiting)
        if self._stop is None:
            return await task
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            raise Stopped
        return task.result()

    async def drain(self) -> None:
        """Return once every QoS 1/2 message is acknowledged and everything is written."""
        await self.flush()
        await self._idle.wait()
        self._check()
