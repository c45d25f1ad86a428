"""The ingest's MQTT 3.1.1 link: a persistent-session subscriber on an asyncio Protocol,
whose caller sends each PUBACK once the message is durable (pipelines/acks.py)."""

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple, Self

from pipelines.mqtt_packets import (
    connect_packet,
    publish_packet,
    subscribe_packet,
    unsubscribe_packet,
)

log = logging.getLogger("ecotel.ingest.mqtt")

# Written by hand because measurement showed the client library was most of the
# per-message cost. At one reading per message (``python -m bench ingest``, and
# cProfile of ``ecotel-ingest run``, 2026-11-28), aiomqtt 2.5 over paho-mqtt 2.2
# cost the ingest 160-180 us of CPU per message in all: paho's packet reading (four
# ``recv`` calls a packet) and callbacks ~11% of the profile, aiomqtt's queue with an
# ``asyncio.wait`` per message and three event-loop turns per message ~20%, against
# ~12-20 us to decode and validate the reading. With this link: ~60 us per message
# in all (later 40-50 us with faster decoding; 11,000-14,800 readings/s against
# 1,600-2,200 before): one ``data_received`` splits every packet of a socket read
# (~2 us a message), the consumer takes them in one wakeup, and the PUBACKs of one
# loop turn go out in one write.
# Only what the ingest needs: CONNECT with clean_session off (and a user name and
# password if set, over TLS if set), SUBSCRIBE, incoming PUBLISH at QoS 0/1, PUBACK,
# PINGREQ/PINGRESP, DISCONNECT; and for retiring a session (docs/ingest.md): UNSUBSCRIBE,
# one outgoing QoS 1 PUBLISH, CONNECT with clean_session on.

# Packet types, and the fixed packets: PINGREQ, DISCONNECT, PUBACK's first two bytes.
_CONNACK, _PUBLISH, _PUBACK, _SUBACK, _UNSUBACK, _PINGRESP = 2, 3, 4, 9, 11, 13
_PING = b"\xc0\x00"
_BYE = b"\xe0\x00"
_PUBACK_HEAD = b"\x40\x02"
# A consumer this far behind stops reading the socket (QoS 0 has no broker window).
_PAUSE_AT = 20_000
_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttLinkError(Exception):
    """The broker link is down, was refused, or broke the protocol: reconnect."""


class MqttRefused(MqttLinkError):
    """Refused for something retrying will not mend: ``credentials`` (CONNACK 4 or 5),
    ``certificate`` (the broker's does not verify) or ``hostname`` (it is not issued for us)."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause

    def setting(self, username: str | None) -> str:
        """Which ingest setting is wrong, and why (for the message that stops the ingest)."""
        if self.cause == "hostname":
            return f"mqtt.host: the broker's certificate is not issued for this name ({self})"
        if self.cause == "certificate":
            return f"mqtt.tls.ca_file: the broker's certificate does not verify against it ({self})"
        who = "mqtt.username / mqtt.password"
        if username is None:
            who += " (none set; the broker wants credentials)"
        return f"{who}: the broker refused them ({self})"


class Message(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int


class _Protocol(asyncio.Protocol):
    """Splits the broker's byte stream into packets; PUBLISHes wait in ``pending``."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.pending: list[Message] = []
        self.wake: asyncio.Future[None] | None = None
        self.connack: asyncio.Future[tuple[int, int]] = loop.create_future()
        # Answers to our SUBSCRIBE, UNSUBSCRIBE and PUBLISH, by packet id.
        self.replies: dict[int, asyncio.Future[bytes]] = {}
        self.lost: MqttLinkError | None = None
        self.paused = False
        # Stopping: the socket is not read again, next_batch() ends with [].
        self.stopped = False
        self.last_heard = time.monotonic()
        # The start of a packet not yet whole, and how long it will be (0: not known yet).
        self._rest = bytearray()
        self._need = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(MqttLinkError(f"connection lost: {exc}" if exc else "broker closed the link"))

    def _fail(self, error: MqttLinkError) -> None:
        if self.lost is None:
            self.lost = error
        futures: list[asyncio.Future[tuple[int, int]] | asyncio.Future[bytes]] = [
            self.connack,
            *self.replies.values(),
        ]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        if self._rest:
            # A large message comes in many reads: gather it, parse it once whole.
            self._rest += data
            if len(self._rest) < self._need:
                return
            data, self._rest = bytes(self._rest), bytearray()
        self._need = 0
        pending = self.pending
        had = len(pending)
        end = len(data)
        pos = 0
        try:
            while end - pos >= 2:
                first = data[pos]
                i = pos + 1
                length = shift = 0
                while True:
                    if i >= end:
                        length = -1
                        break
                    byte = data[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttLinkError("malformed remaining length")
                stop = i + length
                if length < 0 or stop > end:
                    self._need = stop - pos if length >= 0 else 0
                    break
                if first >> 4 == _PUBLISH:
                    qos = (first >> 1) & 3
                    topic_end = i + 2 + ((data[i] << 8) | data[i + 1]) if length >= 2 else stop + 1
                    if topic_end + (2 if qos else 0) > stop:
                        raise MqttLinkError("malformed PUBLISH")
                    topic = data[i + 2 : topic_end].decode(errors="replace")
                    if qos == 0:
                        pending.append(Message(topic, data[topic_end:stop], 0, 0))
                    elif qos == 1:
                        mid = (data[topic_end] << 8) | data[topic_end + 1]
                        pending.append(Message(topic, data[topic_end + 2 : stop], mid, 1))
                    else:
                        # We subscribe at QoS 1, so the broker never sends QoS 2.
                        raise MqttLinkError("QoS 2 PUBLISH on a QoS 1 subscription")
                else:
                    self._control(first >> 4, data[i:stop])
                pos = stop
        except MqttLinkError as exc:
            self._fail(exc)
            return
        if pos < end:
            self._rest += data[pos:]
        if len(pending) != had:
            self._wake()
            if len(pending) >= _PAUSE_AT and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()

    def _control(self, kind: int, body: bytes) -> None:
        if kind == _PINGRESP:
            return
        if kind == _CONNACK and len(body) == 2 and not self.connack.done():
            self.connack.set_result((body[0], body[1]))
            return
        if kind in (_SUBACK, _UNSUBACK, _PUBACK) and len(body) >= 2:
            future = self.replies.pop((body[0] << 8) | body[1], None)
            if future is not None and not future.done():
                future.set_result(body[2:])
            return
        raise MqttLinkError(f"unexpected packet type {kind} from the broker")


class MqttSession:
    """One connection with a persistent session: ``subscribe``, then ``next_batch`` until it raises.

    ``ack(mid)`` queues a PUBACK; those of one event-loop turn go out in one
    write. On a link that has gone, acks do nothing: the broker redelivers
    the unacknowledged messages to the session's next connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        keepalive_s: int,
        timeout_s: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        clean: bool = False,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        # On only to discard the session (a retired worker's): the broker drops it at CONNECT.
        self.clean = clean
        self.username, self._password, self.tls = username, password, tls
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.session_present = False
        self._protocol: _Protocol | None = None
        self._acks = bytearray()
        self._flush_scheduled = False
        self._next_id = 0
        self._keepalive: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                # With a context, the broker's certificate must name self.host.
                transport, protocol = await loop.create_connection(
                    _Protocol, self.host, self.port, ssl=self.tls
                )
                self._protocol = protocol
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # PUBACKs are tiny and the broker's window waits on them.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                transport.write(
                    connect_packet(
                        self.client_id,
                        self.keepalive_s,
                        # Clean session off: the broker keeps our queue while we are away.
                        clean=self.clean,
                        username=self.username,
                        password=self._password,
                    )
                )
                flags, code = await protocol.connack
        except TimeoutError:
            self._close()
            raise MqttLinkError(f"no CONNACK within {self.timeout_s:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            self._close()
            cause = "hostname" if "mismatch" in str(exc.verify_message) else "certificate"
            raise MqttRefused(cause, str(exc)) from exc
        except OSError as exc:
            self._close()
            raise MqttLinkError(str(exc)) from exc
        except BaseException:
            self._close()
            raise
        if code != 0:
            self._close()
            reason = _CONNACK_REASONS.get(code, f"code {code}")
            text = f"broker refused the connection: {reason}"
            raise MqttRefused("credentials", text) if code in (4, 5) else MqttLinkError(text)
        self.session_present = bool(flags & 1)
        self._keepalive = asyncio.create_task(self._keep_alive(), name="mqtt-keepalive")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        protocol = self._protocol
        if protocol is not None and protocol.lost is None and protocol.transport is not None:
            self._flush_acks()
            protocol.transport.write(_BYE)
        self._close()

    def _close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    def _live(self) -> _Protocol:
        protocol = self._protocol
        if protocol is None:
            raise MqttLinkError("not connected")
        if protocol.lost is not None:
            raise protocol.lost
        return protocol

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe and return the granted QoS; a refusal raises MqttLinkError."""
        reply = await self._request(
            lambda mid: subscribe_packet(topic_filter, mid, qos), f"SUBACK for {topic_filter}"
        )
        granted = reply[0] if reply else 0x80
        if granted == 0x80:
            raise MqttLinkError(f"broker refused the subscription to {topic_filter}")
        return granted

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe; from then on the broker queues nothing more for it in this session."""
        await self._request(
            lambda mid: unsubscribe_packet(topic_filter, mid), f"UNSUBACK for {topic_filter}"
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and return once the broker has acknowledged it."""
        await self._request(lambda mid: publish_packet(topic, payload, mid), f"PUBACK on {topic}")

    async def _request(self, make: Callable[[int], bytes], answer: str) -> bytes:
        """Send the packet ``make`` builds for a new packet id; the rest of the broker's answer."""
        protocol = self._live()
        assert protocol.transport is not None
        self._next_id = self._next_id % 0xFFFF + 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        protocol.replies[self._next_id] = future
        protocol.transport.write(make(self._next_id))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise MqttLinkError(f"no {answer} within {self.timeout_s:g} s") from None

    async def next_batch(self) -> list[Message]:
        """Every message received since the last call (waits for at least one).

        Handling them does not hold up the InfluxDB write in flight: the writer lets the
        event loop turn every few hundred points (pipelines/influx_writer.py ``put``).

        Raises MqttLinkError once the link is gone and nothing received is left; returns
        [] once ``stop_reading()`` was called and nothing received is left.
        """
        protocol = self._protocol
        if protocol is None:
            raise MqttLinkError("not connected")
        while not protocol.pending:
            if protocol.stopped:
                return []
            if protocol.lost is not None:
                raise protocol.lost
            protocol.wake = asyncio.get_running_loop().create_future()
            await protocol.wake
        batch, protocol.pending = protocol.pending, []
        if (
            protocol.paused
            and not protocol.stopped
            and protocol.transport is not None
            and protocol.lost is None
        ):
            protocol.paused = False
            protocol.last_heard = time.monotonic()
            protocol.transport.resume_reading()
        return batch

    def stop_reading(self) -> None:
        """Take no more messages from the socket (the ingest is stopping); PUBACKs still go out.

        What the broker sent after this stays unacknowledged: it redelivers it to the
        session's next connection.
        """
        protocol = self._protocol
        if protocol is None or protocol.stopped:
            return
        protocol.stopped = True
        if protocol.transport is not None and not protocol.paused and protocol.lost is None:
            protocol.transport.pause_reading()
        # Paused: the keepalive does not take the broker's silence for a dead link.
        protocol.paused = True
        protocol._wake()

    def ack(self, mid: int) -> None:
        """Queue the PUBACK of a QoS 1 message."""
        self._acks += _PUBACK_HEAD
        self._acks += mid.to_bytes(2, "big")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._flush_scheduled = False
        if not self._acks:
            return
        protocol = self._protocol
        if protocol is not None and protocol.lost is None and protocol.transport is not None:
            protocol.transport.write(bytes(self._acks))
        self._acks.clear()

    async def _keep_alive(self) -> None:
        protocol = self._protocol
        assert protocol is not None
        assert protocol.transport is not None
        interval = self.keepalive_s / 2
        while protocol.lost is None:
            await asyncio.sleep(interval)
            silent = time.monotonic() - protocol.last_heard
            if not protocol.paused and silent > 1.5 * self.keepalive_s:
                protocol._fail(MqttLinkError(f"broker silent for {silent:.0f} s"))
                return
            protocol.transport.write(_PING)
