"""Modbus TCP and RTU driver (pymodbus clients): reads holding or input registers in as few
requests as the register map allows; the register codec and the read plan are pure functions."""

import asyncio
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

import serial
from pydantic import Field, model_validator
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from devices.drivers.base import DeviceError, ErrorReason, FieldMap, SourceSettings
from devices.drivers.serial_bus import Parity

RegisterTable = Literal["holding", "input"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
WordOrder = Literal["big", "little"]

REGISTERS: Final[Mapping[DataType, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}
"""16-bit registers a value of each type spans."""
_STRUCT: Final[Mapping[DataType, str]] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "float64": "d",
}
MAX_READ_REGISTERS: Final = 125
"""The most registers one read (function code 3 or 4) may ask for."""

EXCEPTION_CODES: Final[Mapping[int, str]] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
"""Exception codes of the Modbus application protocol, section 7."""

_CLIENT_TIMEOUT_S: Final = 60.0
"""pymodbus's own wait; each device's ``timeout_s`` is enforced around it, so it never fires."""


def quiet_pymodbus() -> None:
    """Keep pymodbus's own log to critical messages, unless someone set its level.

    Every failure reaches the gateway as a DeviceError, counted and logged at a limited rate;
    pymodbus would also log a warning at every poll of a device that is off.
    """
    library = logging.getLogger("pymodbus")
    if library.level == logging.NOTSET:
        library.setLevel(logging.CRITICAL)


def exception_text(code: int) -> str:
    return EXCEPTION_CODES.get(code, "unknown exception code")


def decode_registers(registers: Sequence[int], data_type: DataType, word_order: WordOrder) -> float:
    """A value from its registers as read; each register is big-endian (the protocol's byte
    order), ``word_order`` says whether the most significant register comes first."""
    if len(registers) != REGISTERS[data_type]:
        raise ValueError(
            f"{data_type} spans {REGISTERS[data_type]} registers, got {len(registers)}"
        )
    words = registers if word_order == "big" else registers[::-1]
    raw = b"".join(word.to_bytes(2, "big") for word in words)
    (value,) = struct.unpack(f">{_STRUCT[data_type]}", raw)
    if data_type == "float32" and math.isfinite(value):
        return _shortest_float32(float(value), raw)
    return float(value)


def _shortest_float32(value: float, raw: bytes) -> float:
    # 1020.9 sent as float32 is 1020.9000244140625 as a float64; the device meant 1020.9, the
    # shortest decimal that is the same float32.
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == raw:
            return candidate
    return value


def encode_registers(value: float, data_type: DataType, word_order: WordOrder) -> list[int]:
    """The registers a device holds for ``value`` (integers rounded); ValueError if it does not
    fit the type."""
    number: float = value if data_type.startswith("float") else round(value)
    try:
        raw = struct.pack(f">{_STRUCT[data_type]}", number)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value} does not fit {data_type}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else words[::-1]


class ModbusField(FieldMap):
    """A quantity held in one or more registers of the device."""

    address: int = Field(
        ge=0,
        le=65_535,
        description="First register, as on the wire: 0-based (a manual's 40001 or 30001 is 0)",
    )
    table: RegisterTable = Field(
        default="holding", description="holding (function code 3) or input (function code 4)"
    )
    data_type: DataType = Field(
        default="uint16", description="int16, uint16, int32, uint32, float32 or float64"
    )
    word_order: WordOrder = Field(
        default="big",
        description="big: the most significant register first (the usual); little: last",
    )

    @model_validator(mode="after")
    def _fits_address_space(self) -> "ModbusField":
        if self.address + REGISTERS[self.data_type] > 65_536:
            raise ValueError(
                f"a {self.data_type} at register {self.address} runs past register 65535"
            )
        return self

    @property
    def registers(self) -> int:
        return REGISTERS[self.data_type]


@dataclass(frozen=True)
class ReadBlock:
    """One read request: ``count`` registers of ``table`` from ``start``; ``fields`` are the
    (index into the field map, offset in the block) of the values it carries."""

    table: RegisterTable
    start: int
    count: int
    fields: tuple[tuple[int, int], ...]


def plan_reads(
    fields: Sequence[ModbusField], *, max_gap: int = 0, max_registers: int = MAX_READ_REGISTERS
) -> list[ReadBlock]:
    """The fewest reads that cover every field: fields of one table whose registers touch or
    overlap (or lie at most ``max_gap`` unused registers apart) share a read of at most
    ``max_registers``. Holding reads come first, each table's in address order."""
    blocks: list[ReadBlock] = []
    for table in ("holding", "input"):
        ordered = sorted(
            (i for i, f in enumerate(fields) if f.table == table),
            key=lambda i: (fields[i].address, i),
        )
        start = end = 0
        members: list[int] = []
        for index in ordered:
            mapping = fields[index]
            field_end = mapping.address + mapping.registers
            joins = (
                members
                and mapping.address <= end + max_gap
                and max(end, field_end) - start <= max_registers
            )
            if members and not joins:
                blocks.append(_block(table, start, end, members, fields))
                members = []
            if not members:
                start, end = mapping.address, field_end
            end = max(end, field_end)
            members.append(index)
        if members:
            blocks.append(_block(table, start, end, members, fields))
    return blocks


def _block(
    table: RegisterTable, start: int, end: int, members: list[int], fields: Sequence[ModbusField]
) -> ReadBlock:
    return ReadBlock(
        table, start, end - start, tuple((i, fields[i].address - start) for i in members)
    )


class _ModbusSource(SourceSettings):
    """What Modbus TCP and RTU sources share: the register map and how to read it."""

    max_gap: int = Field(
        default=0,
        ge=0,
        le=MAX_READ_REGISTERS - 1,
        description="Unused registers one read may span to join two fields; 0: only adjacent "
        "fields share a read (many devices refuse a read over a register they do not have)",
    )
    max_registers: int = Field(
        default=MAX_READ_REGISTERS,
        ge=4,
        le=MAX_READ_REGISTERS,
        description="Most registers per read; some devices take fewer than the protocol's 125",
    )
    fields: list[ModbusField] = Field(
        min_length=1, description="What to read; adjacent registers are read together"
    )


class ModbusTcpSource(_ModbusSource):
    """A Modbus TCP device, or a serial device behind a Modbus TCP gateway."""

    type: Literal["modbus_tcp"] = Field(description="Selects this driver")
    host: str = Field(min_length=1, description="The device's (or TCP gateway's) address")
    port: int = Field(default=502, ge=1, le=65_535)
    unit: int = Field(
        default=1,
        ge=0,
        le=255,
        description="Unit identifier: the serial device behind a TCP gateway; a plain TCP "
        "device often ignores it or wants 1 or 255",
    )


class ModbusRtuSource(_ModbusSource):
    """A Modbus RTU device on an RS-485 line; devices sharing a port share its settings."""

    type: Literal["modbus_rtu"] = Field(description="Selects this driver")
    port: str = Field(description="Serial device of the RS-485 line, e.g. /dev/ttyUSB0")
    unit: int = Field(ge=1, le=247, description="The device's address on the line (1-247)")
    baudrate: int = Field(default=19_200, gt=0, description="Line speed; the standard's is 19200")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits; RTU uses 8")
    parity: Parity = Field(default="E", description="N, E or O; the standard's is E (even)")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits")


ModbusSource = ModbusTcpSource | ModbusRtuSource


class ModbusLink:
    """One pymodbus client per TCP endpoint or serial port, shared by every device behind it;
    devices take turns, one request at a time."""

    _open: ClassVar[dict[str, "ModbusLink"]] = {}

    def __init__(self, key: str, source: ModbusSource) -> None:
        self.key = key
        self._source = source
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._inbound = b""
        self._users = 0

    @classmethod
    def shared(cls, source: ModbusSource) -> "ModbusLink":
        """The link ``source`` is on, shared with other devices configured on it."""
        key = f"{source.host}:{source.port}" if isinstance(source, ModbusTcpSource) else source.port
        link = cls._open.get(key)
        if link is None:
            quiet_pymodbus()
            link = cls._open[key] = cls(key, source)
        elif isinstance(source, ModbusRtuSource) and _line(link._source) != _line(source):
            raise ValueError(f"serial port {key} is configured twice with different settings")
        elif type(source) is not type(link._source):
            raise ValueError(f"{key} is configured as Modbus TCP and Modbus RTU")
        link._users += 1
        return link

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # retries=0 and reconnect_delay=0: the field device retries, and reconnects on demand.
        source = self._source
        if isinstance(source, ModbusTcpSource):
            return AsyncModbusTcpClient(
                source.host,
                port=source.port,
                timeout=_CLIENT_TIMEOUT_S,
                retries=0,
                reconnect_delay=0,
            )
        return AsyncModbusSerialClient(
            source.port,
            baudrate=source.baudrate,
            bytesize=source.bytesize,
            parity=source.parity,
            stopbits=source.stopbits,
            timeout=_CLIENT_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # pymodbus drops a frame with a bad CRC without a word; what arrived tells why a
        # request went unanswered.
        if not sending:
            self._inbound = data
        return data

    async def _connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            self._client = self._new_client()
        if not self._client.connected:
            try:
                connected = await self._client.connect()
            except (OSError, serial.SerialException) as exc:
                raise DeviceError("io_error", f"cannot open {self.key}: {exc}") from exc
            if not connected:
                raise DeviceError("io_error", f"cannot connect to {self.key}")
        return self._client

    async def read(
        self, table: RegisterTable, start: int, count: int, unit: int, timeout_s: float
    ) -> list[int]:
        """``count`` registers from ``start``; DeviceError for anything but those registers."""
        what = f"{table} registers {start}-{start + count - 1} of unit {unit} on {self.key}"
        async with self._lock:
            self._inbound = b""
            try:
                async with asyncio.timeout(timeout_s):
                    client = await self._connected()
                    if table == "holding":
                        response = await client.read_holding_registers(
                            start, count=count, device_id=unit
                        )
                    else:
                        response = await client.read_input_registers(
                            start, count=count, device_id=unit
                        )
            except TimeoutError:
                reason, detail = self._unanswered(unit, timeout_s)
                raise DeviceError(reason, f"{what}: {detail}") from None
            except ConnectionException as exc:
                self._drop()
                raise DeviceError("io_error", f"{what}: {exc}") from exc
            except ModbusException as exc:
                raise DeviceError("bad_response", f"{what}: {exc}") from exc
            except (OSError, serial.SerialException) as exc:
                self._drop()
                raise DeviceError("io_error", f"{what}: {exc}") from exc
        return _registers(response, count, what)

    def _unanswered(self, unit: int, timeout_s: float) -> tuple[ErrorReason, str]:
        data = self._inbound
        if not data or isinstance(self._source, ModbusTcpSource) or data[0] != unit:
            # Nothing, or only another unit's (a late) answer: this unit did not answer.
            return "timeout", f"no answer within {timeout_s} s"
        if len(data) >= 5 and not FramerRTU.check_CRC(data[:-2], int.from_bytes(data[-2:], "big")):
            return "bad_checksum", f"answer with a CRC that does not match ({data.hex(' ')})"
        return "bad_response", f"unusable answer ({data.hex(' ')})"

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    async def release(self) -> None:
        """One user is done with the link; the last one closes it."""
        self._users -= 1
        if self._users <= 0:
            async with self._lock:
                self._drop()
            if type(self)._open.get(self.key) is self:
                del type(self)._open[self.key]


def _line(source: ModbusSource) -> tuple[object, ...]:
    if isinstance(source, ModbusTcpSource):
        return (source.host, source.port)
    return (source.baudrate, source.bytesize, source.parity, source.stopbits)


def _registers(response: ModbusPDU, count: int, what: str) -> list[int]:
    if isinstance(response, ExceptionResponse) or response.isError():
        code = getattr(response, "exception_code", 0)
        raise DeviceError(
            "exception_response", f"{what}: {exception_text(code)} (exception code {code})"
        )
    registers = list(response.registers)
    if len(registers) != count:
        raise DeviceError("bad_response", f"{what}: {len(registers)} registers in the answer")
    return registers


class ModbusDriver:
    """Reads one device's register map, one request per block of adjacent registers."""

    def __init__(self, source: ModbusSource) -> None:
        self._source = source
        self._fields = list(source.fields)
        self._plan = plan_reads(
            self._fields, max_gap=source.max_gap, max_registers=source.max_registers
        )
        self._link = ModbusLink.shared(source)
        self._closed = False

    async def read_raw(self) -> list[float]:
        """One raw value per configured field, in order."""
        if self._closed:
            raise DeviceError("io_error", f"unit {self._source.unit} on {self._link.key}: closed")
        values = [0.0] * len(self._fields)
        for block in self._plan:
            registers = await self._link.read(
                block.table, block.start, block.count, self._source.unit, self._source.timeout_s
            )
            for index, offset in block.fields:
                mapping = self._fields[index]
                value = decode_registers(
                    registers[offset : offset + mapping.registers],
                    mapping.data_type,
                    mapping.word_order,
                )
                if not math.isfinite(value):
                    # Devices put NaN in a float register that has no value yet (warming up).
                    raise DeviceError(
                        "bad_response",
                        f"{mapping.table} register {mapping.address} of unit "
                        f"{self._source.unit} on {self._link.key} holds {value}",
                    )
                values[index] = value
        return values

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._link.release()
