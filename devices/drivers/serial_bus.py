"""One serial port shared by every device on it: open once, one transaction at a time."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import ClassVar, Literal

import serial
import serial_asyncio_fast

from devices.drivers.base import DeviceError

log = logging.getLogger(__name__)

Parity = Literal["N", "E", "O"]


class SerialBus:
    """An RS-485 / RS-232 / SDI-12 line; devices on it take turns through ``transaction()``."""

    _open: ClassVar[dict[str, "SerialBus"]] = {}

    def __init__(
        self, port: str, *, baudrate: int, bytesize: int, parity: Parity, stopbits: int
    ) -> None:
        self.port = port
        self._baudrate = baudrate
        self._bytesize = bytesize
        self._parity: Parity = parity
        self._stopbits = stopbits
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._users = 0

    @classmethod
    def shared(
        cls, port: str, *, baudrate: int, bytesize: int = 8, parity: Parity = "N", stopbits: int = 1
    ) -> "SerialBus":
        """The bus on ``port``, shared with other devices configured on the same port."""
        bus = cls._open.get(port)
        if bus is None:
            bus = cls._open[port] = cls(
                port, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits
            )
        elif (bus._baudrate, bus._bytesize, bus._parity, bus._stopbits) != (
            baudrate,
            bytesize,
            parity,
            stopbits,
        ):
            raise ValueError(f"serial port {port} is configured twice with different settings")
        bus._users += 1
        return bus

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            try:
                self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.port,
                    baudrate=self._baudrate,
                    bytesize=self._bytesize,
                    parity=self._parity,
                    stopbits=self._stopbits,
                )
            except (OSError, serial.SerialException) as exc:
                raise DeviceError("io_error", f"cannot open {self.port}: {exc}") from exc
        return self._reader, self._writer

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["SerialExchange"]:
        """Exclusive use of the line; bytes left over from an earlier exchange are discarded."""
        async with self._lock:
            reader, writer = await self._connect()
            _discard_buffered(reader)
            try:
                yield SerialExchange(reader, writer, self.port)
            except (OSError, serial.SerialException) as exc:
                self._drop_connection()
                raise DeviceError("io_error", f"{self.port}: {exc}") from exc

    def _drop_connection(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def release(self) -> None:
        """One user is done with the bus; the last one closes the port."""
        self._users -= 1
        if self._users <= 0:
            self._drop_connection()
            type(self)._open.pop(self.port, None)


class SerialExchange:
    """Writes and timed reads within one transaction on the bus."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._port = port

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def send_break(self, duration_s: float = 0.012) -> None:
        """A line break (SDI-12 wakes its sensors with one); ignored where the port has none."""
        transport = self._writer.transport
        port = getattr(transport, "serial", None)
        if port is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                port.send_break(duration_s)

    async def read_until(self, terminator: bytes, timeout_s: float, limit: int = 4096) -> bytes:
        """Bytes up to and including ``terminator``; DeviceError('timeout') if it does not come."""
        try:
            async with asyncio.timeout(timeout_s):
                data = await self._reader.readuntil(terminator)
        except TimeoutError:
            raise DeviceError(
                "timeout", f"no answer on {self._port} within {timeout_s} s"
            ) from None
        except asyncio.LimitOverrunError as exc:
            raise DeviceError("bad_response", f"answer on {self._port} too long") from exc
        if len(data) > limit:
            raise DeviceError("bad_response", f"answer on {self._port} too long")
        return data

    async def read_exactly(self, count: int, timeout_s: float) -> bytes:
        """Exactly ``count`` bytes; DeviceError('timeout') if they do not all come."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._reader.readexactly(count)
        except TimeoutError:
            raise DeviceError(
                "timeout", f"no answer on {self._port} within {timeout_s} s"
            ) from None
        except asyncio.IncompleteReadError as exc:
            raise DeviceError("io_error", f"{self._port} closed mid-answer") from exc


def _discard_buffered(reader: asyncio.StreamReader) -> None:
    # A late answer to a timed-out request must not be taken as the next one's.
    buffer = getattr(reader, "_buffer", None)
    if isinstance(buffer, bytearray) and buffer:
        log.debug("discarding %d stale bytes", len(buffer))
        buffer.clear()
