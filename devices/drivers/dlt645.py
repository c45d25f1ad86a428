"""DL/T 645-2007 driver: reads Chinese electricity meters on an RS-485 line, one data
identifier per request; the frame and value codec is a set of small pure functions."""

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Self

from pydantic import Field, field_validator, model_validator

from devices.drivers.base import DeviceError, FieldMap, SourceSettings
from devices.drivers.serial_bus import Parity, SerialBus, SerialExchange

log = logging.getLogger(__name__)

START: Final = 0x68
END: Final = 0x16
WAKE_UP_BYTE: Final = 0xFE
WAKE_UP: Final = bytes([WAKE_UP_BYTE] * 4)
DATA_OFFSET: Final = 0x33
HEADER_LENGTH: Final = 10
"""68 A0..A5 68 C L: enough to know how long the rest of the frame is."""
MAX_DATA_LENGTH: Final = 200
"""The longest data field the standard allows in a read answer."""
BROADCAST_ADDRESS: Final = "aaaaaaaaaaaa"

READ_DATA: Final = 0x11
READ_ANSWER: Final = 0x91
READ_ANSWER_MORE: Final = 0xB1
"""A normal answer with further frames to follow (fetched with control 0x12)."""
READ_ERROR: Final = 0xD1

ERROR_BITS: Final[Mapping[int, str]] = {
    0x01: "other error",
    0x02: "no requested data",
    0x04: "password error or not authorised",
    0x08: "baud rate cannot be changed",
    0x10: "too many year time zones",
    0x20: "too many day time periods",
    0x40: "too many tariffs",
}
"""The bits of the error-status byte of an error answer (0xD1); bit 7 is reserved."""


@dataclass(frozen=True)
class Frame:
    """One frame as it travels, minus wake-up bytes, checksum and the 0x33 offset of its data."""

    address: str
    """12 hex digits, most significant first, as on the meter's nameplate (BCD: all decimal)."""
    control: int
    data: bytes


@dataclass(frozen=True)
class DataFormat:
    """How a value is written: ``length`` BCD bytes with ``decimals`` implied decimal places;
    ``signed``: the top bit of the most significant byte is the sign (1 = negative)."""

    length: int
    decimals: int
    signed: bool = False


@dataclass(frozen=True)
class DataItem:
    """A data identifier the driver knows without being told its format."""

    name: str
    unit: str
    format: DataFormat


_ENERGY = DataFormat(4, 2)  # XXXXXX.XX kWh
_VOLTAGE = DataFormat(2, 1)  # XXX.X V
_CURRENT = DataFormat(3, 3, signed=True)  # XXX.XXX A
_POWER = DataFormat(3, 4, signed=True)  # XX.XXXX kW / kvar

DATA_IDS: Final[Mapping[int, DataItem]] = {
    0x00000000: DataItem("combined active energy, total", "kWh", _ENERGY),
    0x00010000: DataItem("forward active energy, total", "kWh", _ENERGY),
    0x00020000: DataItem("reverse active energy, total", "kWh", _ENERGY),
    0x02010100: DataItem("phase A voltage", "V", _VOLTAGE),
    0x02010200: DataItem("phase B voltage", "V", _VOLTAGE),
    0x02010300: DataItem("phase C voltage", "V", _VOLTAGE),
    0x02020100: DataItem("phase A current", "A", _CURRENT),
    0x02020200: DataItem("phase B current", "A", _CURRENT),
    0x02020300: DataItem("phase C current", "A", _CURRENT),
    0x02030000: DataItem("active power, total", "kW", _POWER),
    0x02030100: DataItem("phase A active power", "kW", _POWER),
    0x02030200: DataItem("phase B active power", "kW", _POWER),
    0x02030300: DataItem("phase C active power", "kW", _POWER),
    0x02040000: DataItem("reactive power, total", "kvar", _POWER),
    0x02060000: DataItem("power factor, total", "", DataFormat(2, 3, signed=True)),
    0x02800002: DataItem("grid frequency", "Hz", DataFormat(2, 2)),
}
"""Identifiers (DI3 DI2 DI1 DI0 as one number) of the standard's appendix A the driver knows."""


def format_data_id(data_id: int) -> str:
    """DI3 DI2 DI1 DI0 as 8 hex digits, the way the standard's tables write it."""
    return f"{data_id:08X}"


def describe_data_id(data_id: int) -> str:
    item = DATA_IDS.get(data_id)
    text = format_data_id(data_id)
    return text if item is None else f"{text} ({item.name})"


def address_to_wire(address: str) -> bytes:
    """12 hex digits (most significant first) as the 6 bytes sent, lowest byte first."""
    if len(address) != 12:
        raise ValueError(f"a meter address has 12 digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def address_from_wire(wire: bytes) -> str:
    return wire[::-1].hex()


def checksum(data: bytes) -> int:
    return sum(data) % 256


def encode_frame(frame: Frame) -> bytes:
    """The frame's bytes from its first 0x68 to its 0x16; data gets its 0x33 offset here."""
    if len(frame.data) > 255:
        raise ValueError(f"data of {len(frame.data)} bytes does not fit a frame")
    body = (
        bytes([START])
        + address_to_wire(frame.address)
        + bytes([START, frame.control, len(frame.data)])
        + bytes((b + DATA_OFFSET) % 256 for b in frame.data)
    )
    return body + bytes([checksum(body), END])


def frame_length(header: bytes) -> int:
    """Length of a whole frame (from its first 0x68) given its first 10 bytes."""
    if len(header) < HEADER_LENGTH or header[0] != START or header[7] != START:
        raise DeviceError("bad_response", f"not a DL/T 645 frame header: {header.hex(' ')}")
    if header[9] > MAX_DATA_LENGTH:
        raise DeviceError("bad_response", f"data length {header[9]} exceeds {MAX_DATA_LENGTH}")
    return HEADER_LENGTH + header[9] + 2


def decode_frame(raw: bytes) -> Frame:
    """One frame, leading wake-up bytes allowed; DeviceError('bad_response') for bad framing,
    DeviceError('bad_checksum') for a checksum that does not match."""
    raw = raw.lstrip(bytes([WAKE_UP_BYTE]))
    length = frame_length(raw)
    if len(raw) != length:
        raise DeviceError(
            "bad_response", f"frame of {len(raw)} bytes, its length byte says {length}"
        )
    if raw[-1] != END:
        raise DeviceError("bad_response", f"frame ends with 0x{raw[-1]:02X}, not 0x16")
    expected = checksum(raw[:-2])
    if raw[-2] != expected:
        raise DeviceError(
            "bad_checksum", f"checksum 0x{raw[-2]:02X}, frame sums to 0x{expected:02X}"
        )
    return Frame(
        address=address_from_wire(raw[1:7]),
        control=raw[8],
        data=bytes((b - DATA_OFFSET) % 256 for b in raw[HEADER_LENGTH:-2]),
    )


def read_request(address: str, data_id: int) -> bytes:
    """A read-data request (control 0x11) for one identifier, without wake-up bytes."""
    return encode_frame(Frame(address, READ_DATA, data_id.to_bytes(4, "little")))


def read_answer(address: str, data_id: int, value: bytes, *, more: bool = False) -> bytes:
    """A meter's normal answer: the identifier, then the value's bytes."""
    control = READ_ANSWER_MORE if more else READ_ANSWER
    return encode_frame(Frame(address, control, data_id.to_bytes(4, "little") + value))


def error_answer(address: str, status: int, control: int = READ_ERROR) -> bytes:
    """A meter's error answer carrying one error-status byte."""
    return encode_frame(Frame(address, control, bytes([status])))


def error_text(status: int) -> str:
    """The error-status byte's bits in words."""
    names = [name for bit, name in ERROR_BITS.items() if status & bit]
    if status & 0x80:
        names.append("reserved bit 7")
    return ", ".join(names) if names else "no error bit set"


def encode_bcd(number: int, length: int) -> bytes:
    """``number`` as ``length`` BCD bytes, lowest byte first."""
    if not 0 <= number < 10 ** (2 * length):
        raise ValueError(f"{number} does not fit {length} BCD bytes")
    digits = f"{number:0{2 * length}d}"
    return bytes.fromhex(digits)[::-1]


def decode_bcd(data: bytes) -> int:
    """BCD bytes, lowest first; DeviceError('bad_response') for a nibble above 9."""
    text = data[::-1].hex()
    if not text.isdigit():
        raise DeviceError("bad_response", f"not BCD: {data.hex(' ')}")
    return int(text)


def encode_value(value: float, fmt: DataFormat) -> bytes:
    """``value`` in ``fmt``, rounded to its decimals; ValueError if it does not fit."""
    magnitude = round(abs(value) * 10**fmt.decimals)
    negative = value < 0 and magnitude != 0
    if negative and not fmt.signed:
        raise ValueError(f"{value} is negative and the format is unsigned")
    # The sign takes the top bit, so the most significant digit of a signed value stops at 7.
    limit = 8 * 10 ** (2 * fmt.length - 1) if fmt.signed else 10 ** (2 * fmt.length)
    if magnitude >= limit:
        raise ValueError(f"{value} does not fit {fmt}")
    data = bytearray(encode_bcd(magnitude, fmt.length))
    if negative:
        data[-1] |= 0x80
    return bytes(data)


def decode_value(data: bytes, fmt: DataFormat) -> float:
    """A value written in ``fmt``; DeviceError('bad_response') for a wrong length or non-BCD."""
    if len(data) != fmt.length:
        raise DeviceError("bad_response", f"value of {len(data)} bytes, expected {fmt.length}")
    digits = bytearray(data)
    negative = fmt.signed and bool(digits[-1] & 0x80)
    if negative:
        digits[-1] &= 0x7F
    # Division, not multiplication by 10**-n, so 12345678 / 100 is exactly the float 123456.78.
    divisor: int = 10**fmt.decimals
    value = decode_bcd(bytes(digits)) / divisor
    return -value if negative else value


def parse_read_answer(frame: Frame, address: str, data_id: int, fmt: DataFormat) -> float:
    """The value in a meter's answer to a read of ``data_id`` from ``address``; DeviceError
    ('exception_response') for an error answer, ('bad_response') for anything unusable."""
    asked = describe_data_id(data_id)
    if frame.address != address:
        raise DeviceError(
            "bad_response", f"answer from meter {frame.address} to a read of meter {address}"
        )
    if frame.control == READ_ERROR:
        if len(frame.data) != 1:
            raise DeviceError(
                "bad_response", f"error answer with {len(frame.data)} data bytes, expected 1"
            )
        status = frame.data[0]
        raise DeviceError(
            "exception_response",
            f"meter {address} refused {asked}: {error_text(status)} (error status 0x{status:02X})",
        )
    if frame.control not in (READ_ANSWER, READ_ANSWER_MORE):
        raise DeviceError(
            "bad_response", f"control code 0x{frame.control:02X} in answer to a read of {asked}"
        )
    if len(frame.data) < 4:
        raise DeviceError("bad_response", f"answer of {len(frame.data)} data bytes has no DI")
    answered = int.from_bytes(frame.data[:4], "little")
    if answered != data_id:
        raise DeviceError(
            "bad_response", f"answer for {format_data_id(answered)} to a read of {asked}"
        )
    if len(frame.data) != 4 + fmt.length:
        raise DeviceError(
            "bad_response",
            f"{asked}: value of {len(frame.data) - 4} bytes, expected {fmt.length}",
        )
    return decode_value(frame.data[4:], fmt)


class Dlt645Field(FieldMap):
    """A quantity read from one data identifier of the meter."""

    data_id: str = Field(
        pattern=r"^[0-9A-Fa-f]{8}$",
        description="Data identifier DI3 DI2 DI1 DI0 as 8 hex digits, e.g. '00010000' "
        "(forward active energy); a TOML string, so the leading zeros stay",
    )
    length: int | None = Field(
        default=None,
        ge=1,
        le=8,
        description="BCD bytes of the value; required for identifiers the driver does not know",
    )
    decimals: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="Implied decimal places; required for identifiers the driver does not know",
    )
    signed: bool | None = Field(
        default=None,
        description="Top bit of the value's most significant byte is its sign; required for "
        "identifiers the driver does not know",
    )

    @field_validator("data_id")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _format_known(self) -> Self:
        if self.di not in DATA_IDS:
            missing = [k for k in ("length", "decimals", "signed") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"data_id {self.data_id} is not one the driver knows: give "
                    f"{', '.join(missing)}; known: {', '.join(map(format_data_id, DATA_IDS))}"
                )
        fmt = self.data_format
        if fmt.decimals > 2 * fmt.length:
            raise ValueError(
                f"decimals {fmt.decimals} exceed the {2 * fmt.length} digits of {fmt.length} bytes"
            )
        return self

    @property
    def di(self) -> int:
        return int(self.data_id, 16)

    @property
    def data_format(self) -> DataFormat:
        """The table's format with this field's overrides applied."""
        known = DATA_IDS.get(self.di)
        base = known.format if known is not None else DataFormat(1, 0)
        return DataFormat(
            length=self.length if self.length is not None else base.length,
            decimals=self.decimals if self.decimals is not None else base.decimals,
            signed=self.signed if self.signed is not None else base.signed,
        )


class Dlt645Source(SourceSettings):
    """A DL/T 645-2007 meter on a serial line; meters sharing a port share its settings."""

    type: Literal["dlt645"] = Field(description="Selects this driver")
    port: str = Field(description="Serial device of the RS-485 line, e.g. /dev/ttyUSB0")
    address: str = Field(
        pattern=r"^[0-9]{12}$",
        description="The meter's communication address: 12 decimal digits as on its nameplate",
    )
    baudrate: int = Field(default=2400, gt=0, description="Line speed; the standard's is 2400")
    bytesize: int = Field(default=8, ge=5, le=8, description="Data bits")
    parity: Parity = Field(default="E", description="N, E or O; the standard's is E (even)")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits")
    wake_up: bool = Field(
        default=True, description="Send FE FE FE FE before each request to wake the meter"
    )
    fields: list[Dlt645Field] = Field(
        min_length=1, description="What to read: one request per field, in this order"
    )


class _LateAnswers:
    """Requests on one line that were given up (timeout, cancel) and may still be answered.

    Without this, a meter answering after the driver stopped waiting would have its answer
    taken as the answer to whatever is asked next on the line, by any meter's driver.
    """

    WINDOW_S: Final = 30.0
    """Long enough for any meter still working; skipping a frame is never wrong here, since
    only frames that do not answer the current request are looked up."""

    def __init__(self) -> None:
        self._given_up: dict[tuple[str, int], float] = {}

    def expect(self, address: str, data_id: int, now: float) -> None:
        self._given_up[(address, data_id)] = now + self.WINDOW_S

    def claim(self, frame: Frame, now: float) -> bool:
        """Whether ``frame`` answers a request given up earlier (it is then forgotten)."""
        self._given_up = {key: end for key, end in self._given_up.items() if end > now}
        if frame.control in (READ_ANSWER, READ_ANSWER_MORE) and len(frame.data) >= 4:
            key = (frame.address, int.from_bytes(frame.data[:4], "little"))
            return self._given_up.pop(key, None) is not None
        if frame.control == READ_ERROR:
            # An error answer names no identifier: any given-up request to that meter fits.
            same_meter = next((k for k in self._given_up if k[0] == frame.address), None)
            if same_meter is not None:
                del self._given_up[same_meter]
                return True
        return False


_late_answers: weakref.WeakKeyDictionary[SerialBus, _LateAnswers] = weakref.WeakKeyDictionary()


class Dlt645Driver:
    """Reads one meter's fields, one read-data request each, over a shared serial line."""

    def __init__(self, source: Dlt645Source) -> None:
        self._source = source
        self._address = source.address
        self._bus = SerialBus.shared(
            source.port,
            baudrate=source.baudrate,
            bytesize=source.bytesize,
            parity=source.parity,
            stopbits=source.stopbits,
        )
        self._late = _late_answers.setdefault(self._bus, _LateAnswers())
        self._preamble = WAKE_UP if source.wake_up else b""
        self._reads = [
            (f.di, f.data_format, read_request(source.address, f.di)) for f in source.fields
        ]
        # Quiet for ~20 characters (start, data, parity, stop bits each) means the meter is done.
        char_s = (1 + source.bytesize + (source.parity != "N") + source.stopbits) / source.baudrate
        self._quiet_s = max(0.05, 20 * char_s)
        self._closed = False

    async def read_raw(self) -> list[float]:
        """One raw value per configured field, in order."""
        if self._closed:
            raise DeviceError("io_error", f"meter {self._address}: driver closed")
        return [await self._read(di, fmt, request) for di, fmt, request in self._reads]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._bus.release()

    async def _read(self, data_id: int, fmt: DataFormat, request: bytes) -> float:
        loop = asyncio.get_running_loop()
        async with self._bus.transaction() as x:
            answered = False
            try:
                await x.write(self._preamble + request)
                frame = await self._receive(x, data_id, request)
                answered = True
            except DeviceError as exc:
                if exc.reason in ("bad_response", "bad_checksum"):
                    # The rest of a garbled answer may still be arriving; left on the line it
                    # would spoil the next exchange.
                    answered = True
                    await self._drain(x)
                raise
            finally:
                if not answered:
                    # Timed out or cancelled: the meter may still answer, later.
                    self._late.expect(self._address, data_id, loop.time())
        return parse_read_answer(frame, self._address, data_id, fmt)

    async def _receive(self, x: SerialExchange, data_id: int, request: bytes) -> Frame:
        """The frame answering this request, skipping an echo of it and late answers."""
        timeout_s = self._source.timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    raw = await _read_frame(x, timeout_s)
                    if raw == request:
                        continue  # RS-485 adapters with local echo return the request itself
                    frame = decode_frame(raw)
                    if self._answers(frame, data_id):
                        return frame
                    if self._late.claim(frame, loop.time()):
                        log.debug(
                            "%s: skipped a late answer from meter %s to %s",
                            self._source.port,
                            frame.address,
                            frame.data[:4][::-1].hex(),
                        )
                        continue
                    return frame  # parse_read_answer says what is wrong with it
        except TimeoutError:
            raise DeviceError(
                "timeout",
                f"meter {self._address} on {self._source.port}: no answer to "
                f"{describe_data_id(data_id)} within {timeout_s} s",
            ) from None

    def _answers(self, frame: Frame, data_id: int) -> bool:
        if frame.address != self._address:
            return False
        if frame.control == READ_ERROR:
            return True
        return frame.data[:4] == data_id.to_bytes(4, "little")

    async def _drain(self, x: SerialExchange) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self._source.timeout_s
        with contextlib.suppress(DeviceError):  # a quiet line ends the read with "timeout"
            while (left := end - loop.time()) > 0:
                await x.read_exactly(1, min(self._quiet_s, left))


async def _read_frame(x: SerialExchange, timeout_s: float) -> bytes:
    """One frame's bytes from its first 0x68, after any wake-up bytes; not yet checked."""
    while True:
        first = await x.read_exactly(1, timeout_s)
        if first[0] == START:
            break
        if first[0] != WAKE_UP_BYTE:
            raise DeviceError("bad_response", f"byte 0x{first[0]:02X} where a frame should start")
    header = first + await x.read_exactly(HEADER_LENGTH - 1, timeout_s)
    return header + await x.read_exactly(frame_length(header) - HEADER_LENGTH, timeout_s)
