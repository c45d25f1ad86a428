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

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import BrokerSettings
from deploy.traces.broker import MqttVersion
from pipelines.mqtt_packets import connect_packet, remaining_length, utf8

_PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _PINGRESP = 4, 5, 6, 7, 13
# Write once this much is queued, so a fast replay makes few large writes.
_WRITE_BYTES = 64 * 1024
_BUFFER_HIGH = 1024 * 1024


class PublishError(Exception):
    """The broker refused the connection, or the link broke during the replay."""


def _packed(props: Properties | None) -> bytes:
    if props is None:
        return b"\x00"
    return bytes(props.pack())  # type: ignore[no-untyped-call]


class FramePublisher:
    """One MQTT connection; at most ``window`` QoS 1/2 publishes unacknowledged."""

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        version: MqttVersion,
        context: ssl.SSLContext | None,
        window: int,
        purpose: str = "replay",
    ) -> None:
        self.broker = broker
        self.version = version
        self.context = context
        self.window = window
        self.client_id = broker.client_id or f"ecotel-trace-{purpose}-{uuid.uuid4().hex[:8]}"
        self.published = 0
        self._unacked: set[int] = set()
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
        async with asyncio.timeout(10):
            kind, body = await self._read_packet()
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
        self._room.set()
        self._idle.set()
        self._tasks = [
            asyncio.create_task(self._read_acks()),
            asyncio.create_task(self._ping()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._flush()
                self._writer.write(b"\xe0\x00")
                await self._writer.drain()
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

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
                elif kind == 14:
                    raise PublishError(f"the broker disconnected us (reason {body[:1].hex()})")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(PublishError(f"the broker link broke: {exc!r}"))
        except PublishError as exc:
            self._fail(exc)

    def _done(self, mid: int, body: bytes) -> None:
        if self.version == "5" and len(body) > 2 and body[2] >= 0x80:
            self._fail(PublishError(f"the broker refused message {mid} (reason {body[2]:#x})"))
            return
        self._unacked.discard(mid)
        self.published += 1
        if len(self._unacked) < self.window:
            self._room.set()
        if not self._unacked:
            self._idle.set()

    def _fail(self, error: PublishError) -> None:
        self._error = error
        self._room.set()
        self._idle.set()

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
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None
    ) -> None:
        """Queue one message; waits while the window is full. Call ``flush`` or ``drain`` after."""
        if self._error is not None:
            raise self._error
        while qos and len(self._unacked) >= self.window:
            self._flush()
            self._room.clear()
            await self._room.wait()
            if self._error is not None:
                raise self._error
        variable = utf8(topic)
        if qos:
            mid = self._packet_id()
            self._unacked.add(mid)
            self._idle.clear()
            variable += struct.pack("!H", mid)
        else:
            self.published += 1
        if self.version == "5":
            variable += _packed(props)
        head = 0x30 | (qos << 1) | (1 if retain else 0)
        length = len(variable) + len(payload)
        self._out.append(bytes([head]) + remaining_length(length) + variable)
        self._out.append(payload)
        self._out_bytes += length + 5
        if self._out_bytes >= _WRITE_BYTES:
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
                await self._writer.drain()
            except OSError as exc:
                self._fail(PublishError(f"the broker link broke: {exc!r}"))
        if self._error is not None:
            raise self._error

    async def drain(self) -> None:
        """Return once every QoS 1/2 message is acknowledged and everything is written."""
        await self.flush()
        await self._idle.wait()
        if self._error is not None:
            raise self._error
