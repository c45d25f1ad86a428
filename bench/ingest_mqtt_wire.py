"""Just enough MQTT 3.1.1 for a load generator that is never the bottleneck: pre-encoded packets on a socket.

A Python client spends tens of microseconds per message; publishing
pre-encoded PUBLISH packets in large writes costs almost nothing, so what
the benchmark measures is the broker and the consumer, not the publisher.
"""

import socket

from pipelines import mqtt_packets as packets

CONNACK_OK = b"\x20\x02\x00\x00"
PUBACK = 0x40
PUBLISH = 0x30
SUBACK = 0x90
# Packet ids are 16 bits and must not be reused while unacknowledged.
MAX_IN_FLIGHT = 20_000


def connect_packet(client_id: str, *, clean: bool = True, keepalive: int = 60) -> bytes:
    return packets.connect_packet(client_id, keepalive, clean=clean)


def subscribe_packet(topic: str, packet_id: int = 1, qos: int = 1) -> bytes:
    return packets.subscribe_packet(topic, packet_id, qos)


DISCONNECT = b"\xe0\x00"


def open_session(port: int, client_id: str) -> socket.socket:
    """Connect to the broker on 127.0.0.1 and return the socket once CONNACK accepted it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    ack = _read_exactly(sock, 4)
    if ack != CONNACK_OK:
        raise ConnectionError(f"broker refused the connection: {ack!r}")
    return sock


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return bytes(data)


class PacketReader:
    """Splits the byte stream from the broker into (first byte, body) packets."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def packets(self) -> list[tuple[int, bytes]]:
        """Every complete packet received so far (blocks until at least some bytes arrive)."""
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        self._buffer += chunk
        found = []
        buf = self._buffer
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            length, multiplier, i = 0, 1, pos + 1
            while True:
                if i >= len(buf):
                    length = -1
                    break
                byte = buf[i]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not byte & 0x80:
                    break
            if length < 0 or len(buf) - i < length:
                break
            found.append((buf[pos], bytes(buf[i : i + length])))
            pos = i + length
        del buf[:pos]
        return found
