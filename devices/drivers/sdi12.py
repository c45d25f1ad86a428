"""SDI-12 driver: reads hydrology and weather sensors on a shared SDI-12 line (aM!/aMC!, service
request, aD0!..aD9!); the answer and CRC codec is a set of small pure functions."""

import asyncio
import logging
import math
import re
from typing import Final, Literal, Self

from pydantic import Field, field_validator, model_validator

from devices.drivers.base import DeviceError, FieldMap, SourceSettings
from devices.drivers.serial_bus import Parity, SerialBus, SerialExchange

log = logging.getLogger(__name__)

ADDRESS_PATTERN: Final = r"^[0-9A-Za-z]$"
"""0-9 are the standard's addresses; a-z and A-Z its extended ones."""
BREAK_S: Final = 0.012
"""A break of at least 12 ms wakes every sensor on the line."""
MARKING_S: Final = 0.009
"""At least 8.33 ms of marking must follow a break before the command."""
MAX_DATA_COMMANDS: Final = 10
"""aD0! .. aD9!"""
MAX_VALUES: Final = 9
"""An aM! answer announces one digit of values."""
MAX_VALUE_DIGITS: Final = 7
MAX_LINE: Final = 128
"""Longer than any answer the driver asks for (at most 1 + 75 + 3 + 2 characters)."""
CRC_LENGTH: Final = 3

AnswerKind = Literal["measurement", "service_request", "data"]

_VALUE = r"[+-](?:\d+(?:\.\d*)?|\.\d+)"
_VALUES_RE: Final = re.compile(f"(?:{_VALUE})*")
_VALUE_RE: Final = re.compile(_VALUE)
_CRC_RE: Final = re.compile(r"[\x40-\x7f]{3}")
_MEASUREMENT_RE: Final = re.compile(r"(\d{3})(\d)")
_DATA_RE: Final = re.compile(f"(?:{_VALUE})*(?:[\\x40-\\x7f]{{3}})?")


# --- the codec -----------------------------------------------------------------------------


def is_address(char: str) -> bool:
    return len(char) == 1 and char.isascii() and char.isalnum()


def crc16(data: bytes) -> int:
    """CRC-16 of SDI-12 v1.3 section 4.4.12: polynomial 0xA001 (reflected 0x8005), initial 0."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def encode_crc(crc: int) -> bytes:
    """The three printable characters an answer carries its CRC in (6 + 6 + 4 bits, each | 0x40)."""
    if not 0 <= crc <= 0xFFFF:
        raise ValueError(f"a CRC-16 is 0..65535, got {crc}")
    return bytes([0x40 | (crc >> 12), 0x40 | ((crc >> 6) & 0x3F), 0x40 | (crc & 0x3F)])


def decode_crc(chars: bytes) -> int:
    """The CRC-16 in three CRC characters; ValueError if they are not CRC characters."""
    if len(chars) != CRC_LENGTH or any(not 0x40 <= c <= 0x7F for c in chars):
        raise ValueError(f"not three CRC characters: {chars!r}")
    high, middle, low = (c & 0x3F for c in chars)
    if high > 0x0F:
        raise ValueError(f"first CRC character {chars[:1]!r} carries more than 4 bits")
    return (high << 12) | (middle << 6) | low


def with_crc(answer: str) -> str:
    """An answer (address and values, no <CR><LF>) with its CRC characters appended."""
    data = answer.encode("ascii")
    return answer + encode_crc(crc16(data)).decode("ascii")


def format_value(value: float, decimals: int = MAX_VALUE_DIGITS) -> str:
    """``value`` as SDI-12 writes it (pd.d): a sign, at most 7 digits and the decimal point;
    at most ``decimals`` places, fewer where 7 digits do not hold them, trailing zeros dropped.

    ValueError for a value whose integer part alone needs more than 7 digits, or NaN/inf.
    """
    if not math.isfinite(value):
        raise ValueError(f"SDI-12 has no way to write {value}")
    for places in range(min(decimals, MAX_VALUE_DIGITS), -1, -1):
        text = f"{value:+.{places}f}"
        if places:
            text = text.rstrip("0").rstrip(".")
        if sum(c.isdigit() for c in text) <= MAX_VALUE_DIGITS:
            return text
    raise ValueError(f"{value} needs more than {MAX_VALUE_DIGITS} digits")


def parse_values(text: str) -> list[float]:
    """Values written back to back, e.g. '+3.14-0.27+12.5'; DeviceError('bad_response') if the
    text is anything else."""
    if not _VALUES_RE.fullmatch(text):
        raise DeviceError("bad_response", f"not SDI-12 values: {text!r}")
    return [float(v) for v in _VALUE_RE.findall(text)]


def answer_kind(body: str) -> AnswerKind | None:
    """What an answer line (without <CR><LF>) looks like, whoever sent it; None for noise.

    A lone address is a service request, or a data answer without values or CRC: the
    caller knows which it waits for.
    """
    if not body or not is_address(body[0]):
        return None
    rest = body[1:]
    if not rest:
        return "service_request"
    if _MEASUREMENT_RE.fullmatch(rest):
        return "measurement"
    if _DATA_RE.fullmatch(rest):
        return "data"
    return None


def parse_measurement_answer(body: str) -> tuple[int, int]:
    """Seconds until the data is ready and how many values it has, from 'atttn'."""
    match = _MEASUREMENT_RE.fullmatch(body[1:])
    if match is None:
        raise DeviceError("bad_response", f"not a measurement answer (atttn): {body!r}")
    return int(match[1]), int(match[2])


def parse_data_answer(body: str, *, crc: bool) -> list[float]:
    """The values of a data answer 'a+1.5-2.25' (CRC characters after them when ``crc``);
    DeviceError('bad_checksum') for a CRC that does not match, ('bad_response') otherwise."""
    values = body[1:]
    if crc:
        chars = values[-CRC_LENGTH:].encode("ascii")
        values = values[:-CRC_LENGTH]
        if len(body) < 1 + CRC_LENGTH or not _CRC_RE.fullmatch(chars.decode("ascii")):
            raise DeviceError("bad_response", f"data answer without a CRC: {body!r}")
        expected = encode_crc(crc16(body[:-CRC_LENGTH].encode("ascii")))
        if chars != expected:
            raise DeviceError(
                "bad_checksum",
                f"CRC {chars.decode('ascii')!r} in {body!r}, "
                f"the answer's is {expected.decode('ascii')!r}",
            )
    return parse_values(values)


def measurement_command(address: str, measurement: str, *, crc: bool) -> str:
    """aM!, aMC!, aM1! .. aMC9!"""
    return f"{address}M{'C' if crc else ''}{measurement}!"


def data_command(address: str, index: int) -> str:
    """aD0! .. aD9!"""
    return f"{address}D{index}!"


# --- configuration -------------------------------------------------------------------------


class Sdi12Field(FieldMap):
    """A quantity read as one value of one of the sensor's measurements."""

    index: int = Field(
        ge=0,
        lt=MAX_VALUES,
        description="0-based position of the value among the measurement's values "
        "(across aD0!, aD1!, ...)",
    )
    measurement: str = Field(
        default="",
        pattern=r"^[1-9]?$",
        description="Which measurement: '' for aM!, '1'..'9' for aM1!..aM9! "
        "(the sensor's manual lists what each returns)",
    )

    @field_validator("measurement", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # measurement = 1 in TOML means what measurement = "1" does.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Sdi12Source(SourceSettings):
    """An SDI-12 sensor on a serial line; sensors sharing a port share its settings."""

    type: Literal["sdi12"] = Field(description="Selects this driver")
    port: str = Field(description="Serial device of the SDI-12 interface, e.g. /dev/ttyUSB0")
    address: str = Field(
        pattern=ADDRESS_PATTERN,
        description="The sensor's SDI-12 address: 0-9, or a-z / A-Z (extended)",
    )
    crc: bool = Field(
        default=True,
        description="Start measurements with aMC! and check the CRC of every data answer",
    )
    baudrate: int = Field(default=1200, gt=0, description="Line speed; the standard's is 1200")
    bytesize: Literal[7, 8] = Field(default=7, description="Data bits; the standard's is 7")
    parity: Parity = Field(default="E", description="N, E or O; the standard's is E (even)")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits; the standard's is 1")
    fields: list[Sdi12Field] = Field(
        min_length=1,
        description="What to read; each measurement the fields name is taken once per poll",
    )

    @model_validator(mode="after")
    def _fields_distinct(self) -> Self:
        seen: dict[tuple[str, int], int] = {}
        for position, f in enumerate(self.fields):
            first = seen.setdefault((f.measurement, f.index), position)
            if first != position:
                raise ValueError(
                    f"fields.{position}: measurement {f.measurement!r} index {f.index} is "
                    f"already fields.{first}"
                )
        return self


# --- the driver ----------------------------------------------------------------------------


class Sdi12Driver:
    """Reads one sensor's fields over a shared SDI-12 line: one measurement per distinct
    ``measurement`` of the fields, each in one exclusive use of the line."""

    def __init__(self, source: Sdi12Source) -> None:
        self._source = source
        self._address = source.address
        self._bus = SerialBus.shared(
            source.port,
            baudrate=source.baudrate,
            bytesize=source.bytesize,
            parity=source.parity,
            stopbits=source.stopbits,
        )
        needed: dict[str, int] = {}
        for f in source.fields:
            needed[f.measurement] = max(needed.get(f.measurement, 0), f.index + 1)
        self._plan = list(needed.items())
        self._closed = False

    async def read_raw(self) -> list[float]:
        """One raw value per configured field, in order."""
        if self._closed:
            raise DeviceError("io_error", f"sensor {self._address}: driver closed")
        taken = {m: await self._measure(m, needed) for m, needed in self._plan}
        return [taken[f.measurement][f.index] for f in self._source.fields]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._bus.release()

    async def _measure(self, measurement: str, needed: int) -> list[float]:
        crc = self._source.crc
        start = measurement_command(self._address, measurement, crc=crc)
        # The measurement's commands must follow each other on the line: a sensor drops a
        # measurement when it hears a break or another command before its data is read.
        async with self._bus.transaction() as x:
            await self._wake(x)
            ready_s, count = parse_measurement_answer(
                await self._ask(x, start, "measurement", self._source.timeout_s)
            )
            if count < needed:
                raise DeviceError(
                    "bad_response",
                    f"sensor {self._address}: {start} announces {count} values, "
                    f"the fields need {needed}",
                )
            if ready_s > 0 and not await self._service_request(x, start, ready_s):
                # No service request: the data is due all the same, but the sensor may have
                # gone back to sleep meanwhile.
                await self._wake(x)
            values: list[float] = []
            for index in range(MAX_DATA_COMMANDS):
                if len(values) >= count:
                    break
                command = data_command(self._address, index)
                body = await self._ask(x, command, "data", self._source.timeout_s)
                part = parse_data_answer(body, crc=crc)
                if not part:
                    raise DeviceError(
                        "bad_response",
                        f"sensor {self._address}: {command} gave no values, "
                        f"{len(values)} of the {count} {start} announced so far",
                    )
                values.extend(part)
        if len(values) != count:
            raise DeviceError(
                "bad_response",
                f"sensor {self._address}: {len(values)} values, {start} announced {count}",
            )
        return values

    async def _wake(self, x: SerialExchange) -> None:
        """Break, then the marking the standard asks for, spent discarding whatever was still
        arriving: the rest of a garbled answer, or a late answer to an abandoned command."""
        x.send_break(BREAK_S)
        loop = asyncio.get_running_loop()
        end = loop.time() + self._source.timeout_s
        stale = 0
        try:
            while (left := end - loop.time()) > 0:
                await x.read_exactly(1, min(MARKING_S, left))
                stale += 1
        except DeviceError as exc:
            if exc.reason != "timeout":
                raise
        if stale:
            log.debug("%s: discarded %d stale bytes after the break", self._source.port, stale)

    async def _ask(
        self, x: SerialExchange, command: str, awaited: AnswerKind, within_s: float
    ) -> str:
        await x.write(command.encode("ascii"))
        body = await self._answer(x, command, awaited, within_s)
        if body is None:
            raise DeviceError(
                "timeout",
                f"sensor {self._address} on {self._source.port}: no answer to {command} "
                f"within {within_s} s",
            )
        return body

    async def _service_request(self, x: SerialExchange, command: str, ready_s: int) -> bool:
        return (
            await self._answer(x, command, "service_request", ready_s + self._source.timeout_s)
            is not None
        )

    async def _answer(
        self, x: SerialExchange, command: str, awaited: AnswerKind, within_s: float
    ) -> str | None:
        """The line answering ``command`` from this sensor, None if none came in time.

        Lines of another kind (a data answer while a measurement answer is due, a service
        request while data is) are late answers to an abandoned exchange and are skipped;
        only the kind awaited can be mistaken for the answer, and the break before each
        measurement has cleared those.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + within_s
        echo = command.encode("ascii")
        while (left := end - loop.time()) > 0:
            try:
                raw = await x.read_until(b"\n", left, limit=MAX_LINE)
            except DeviceError as exc:
                if exc.reason == "timeout":
                    return None
                raise
            # Single-wire SDI-12 interfaces may hear their own command before the answer.
            if raw.startswith(echo):
                raw = raw[len(echo) :]
            body = self._decode(raw, command)
            kind = answer_kind(body)
            if kind is None:
                raise DeviceError(
                    "bad_response",
                    f"sensor {self._address}: unparsable answer to {command}: {raw!r}",
                )
            fits = kind == awaited or (
                # Without a CRC, a data answer with no values is just the address.
                awaited == "data" and kind == "service_request" and not self._source.crc
            )
            if fits and body[0] == self._address:
                return body
            # Another sensor's service request answers nothing: it is what is left of a
            # measurement abandoned on that sensor, so it is skipped like the other leftovers.
            if fits and awaited != "service_request":
                raise DeviceError(
                    "bad_response",
                    f"answer from sensor {body[0]} to {command}, a command for {self._address}",
                )
            log.debug(
                "%s: skipped %r waiting for the answer to %s", self._source.port, raw, command
            )
        return None

    def _decode(self, raw: bytes, command: str) -> str:
        if not raw.endswith(b"\r\n"):
            raise DeviceError(
                "bad_response",
                f"sensor {self._address}: answer to {command} not ended by <CR><LF>: {raw!r}",
            )
        try:
            return raw[:-2].decode("ascii")
        except UnicodeDecodeError:
            raise DeviceError(
                "bad_response", f"sensor {self._address}: non-ASCII answer to {command}: {raw!r}"
            ) from None
