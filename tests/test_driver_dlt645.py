"""DL/T 645-2007: the codec against hand-worked frames and properties, and the driver against
the byte-level meter emulator over a real pty."""

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from collector.config import check_field_map
from collector.field_device import FieldDevice
from devices.catalog import check_values
from devices.drivers.base import DeviceError, FieldMap
from devices.drivers.dlt645 import (
    DATA_IDS,
    WAKE_UP,
    DataFormat,
    Dlt645Driver,
    Dlt645Field,
    Dlt645Source,
    Frame,
    address_from_wire,
    decode_bcd,
    decode_frame,
    decode_value,
    encode_bcd,
    encode_frame,
    encode_value,
    error_answer,
    error_text,
    parse_read_answer,
    read_answer,
    read_request,
)
from devices.emulators.dlt645_meter import (
    Dlt645LineEmulator,
    EmulatedMeter,
    fixed_values,
    simulated_values,
)
from devices.emulators.pty_link import PtyLink, open_pty_link

pytestmark = pytest.mark.timeout(30)

A = "202401010001"
B = "202401010002"
ENERGY, FORWARD, VOLTAGE, CURRENT, POWER, FREQUENCY = (
    "00000000",
    "00010000",
    "02010100",
    "02020100",
    "02030000",
    "02800002",
)
VENDOR_DI = "02800007"  # not in the driver's table: needs length/decimals/signed


# --- the codec -----------------------------------------------------------------------------


def test_read_request_matches_a_frame_worked_by_hand() -> None:
    # Read phase-A voltage (DI 02 01 01 00) from meter 123456789012:
    #   68                     start
    #   12 90 78 56 34 12      address 12 34 56 78 90 12, lowest byte first
    #   68                     start again
    #   11                     control: read data
    #   04                     L: 4 data bytes
    #   33 34 34 35            DI0..DI3 = 00 01 01 02, each + 0x33
    #   CS = 68+12+90+78+56+34+12+68+11+04+33+34+34+35 = 0x36B -> 6B (mod 256)
    #   16                     end
    expected = bytes.fromhex("68 12 90 78 56 34 12 68 11 04 33 34 34 35 6B 16")
    assert read_request("123456789012", 0x02010100) == expected


def test_read_answer_matches_a_frame_worked_by_hand() -> None:
    # The meter's answer, 220.1 V: value 2201 as BCD 22 01, sent lowest byte first (01 22),
    # each byte + 0x33 -> 34 55; data = DI (33 34 34 35) + value, L = 6; control 0x91.
    # CS = 68+12+90+78+56+34+12+68 (0x286) + 91 + 06 + 33+34+34+35 + 34+55 = 0x476 -> 76
    wire = bytes.fromhex("FE FE FE FE 68 12 90 78 56 34 12 68 91 06 33 34 34 35 34 55 76 16")
    frame = decode_frame(wire)
    assert frame == Frame("123456789012", 0x91, bytes.fromhex("00 01 01 02 01 22"))
    assert parse_read_answer(frame, "123456789012", 0x02010100, DATA_IDS[0x02010100].format) == (
        220.1
    )
    assert WAKE_UP + read_answer("123456789012", 0x02010100, bytes.fromhex("01 22")) == wire


@pytest.mark.parametrize(
    ("data", "fmt", "value"),
    [
        (bytes.fromhex("78 56 34 12"), DataFormat(4, 2), 123456.78),
        (bytes.fromhex("45 23 01"), DataFormat(3, 3, signed=True), 12.345),
        (bytes.fromhex("45 23 81"), DataFormat(3, 3, signed=True), -12.345),
        (bytes.fromhex("09 21 83"), DataFormat(3, 4, signed=True), -3.2109),
        (bytes.fromhex("01 50"), DataFormat(2, 2), 50.01),
        # Unsigned: the top nibble is a digit, not a sign.
        (bytes.fromhex("00 00 00 81"), DataFormat(4, 2), 810000.00),
    ],
)
def test_values_decode_exactly(data: bytes, fmt: DataFormat, value: float) -> None:
    assert decode_value(data, fmt) == value
    assert encode_value(value, fmt) == data


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (80.0, DataFormat(3, 4, signed=True)),  # XX.XXXX with a sign stops at 79.9999
        (-1.0, DataFormat(4, 2)),
        (1_000_000.0, DataFormat(4, 2)),
    ],
)
def test_values_that_do_not_fit_are_refused(value: float, fmt: DataFormat) -> None:
    with pytest.raises(ValueError, match=r"fit|negative"):
        encode_value(value, fmt)


def _answer(address: str = A, di: int = 0x02010100, value: bytes = b"\x01\x22") -> Frame:
    return decode_frame(read_answer(address, di, value))


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (_answer(address=B), "answer from meter 202401010002"),
        (_answer(di=0x02010200), "answer for 02010200"),
        (_answer(value=b"\x0a\x22"), "not BCD"),
        (_answer(value=b"\x01\x22\x00"), "value of 3 bytes"),
        (decode_frame(encode_frame(Frame(A, 0x11, b"\x00\x01\x01\x02"))), "control code 0x11"),
        (decode_frame(encode_frame(Frame(A, 0x91, b"\x00"))), "has no DI"),
        (decode_frame(encode_frame(Frame(A, 0xD1, b""))), "error answer with 0 data bytes"),
    ],
)
def test_unusable_answers_are_bad_responses(frame: Frame, problem: str) -> None:
    with pytest.raises(DeviceError, match=problem) as caught:
        parse_read_answer(frame, A, 0x02010100, DataFormat(2, 1))
    assert caught.value.reason == "bad_response"


def test_an_error_answer_names_its_error_bits() -> None:
    frame = decode_frame(error_answer(A, 0x06))
    with pytest.raises(DeviceError) as caught:
        parse_read_answer(frame, A, 0x02010100, DataFormat(2, 1))
    assert caught.value.reason == "exception_response"
    assert "no requested data, password error or not authorised" in caught.value.detail
    assert "0x06" in caught.value.detail
    assert error_text(0x81) == "other error, reserved bit 7"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("68 12 90 78 56 34 12 68 11 04 33 34 34 35 6C 16", "bad_checksum"),
        ("68 12 90 78 56 34 12 68 11 04 33 34 34 35 6B 17", "bad_response"),
        ("68 12 90 78 56 34 12 67 11 04 33 34 34 35 6B 16", "bad_response"),
        ("68 12 90 78 56 34 12 68 11 05 33 34 34 35 6B 16", "bad_response"),
        ("68 12 90 78 56 34 12 68 11", "bad_response"),
    ],
)
def test_broken_frames_are_detected(wire: str, reason: str) -> None:
    with pytest.raises(DeviceError) as caught:
        decode_frame(bytes.fromhex(wire))
    assert caught.value.reason == reason


addresses = st.binary(min_size=6, max_size=6).map(address_from_wire)
frames = st.builds(
    Frame, address=addresses, control=st.integers(0, 255), data=st.binary(max_size=200)
)


@st.composite
def formats_and_values(draw: st.DrawFn) -> tuple[DataFormat, float]:
    # Up to 7 bytes: 14 digits stay exact in a float.
    length = draw(st.integers(1, 7))
    fmt = DataFormat(length, draw(st.integers(0, 2 * length)), draw(st.booleans()))
    limit = 8 * 10 ** (2 * length - 1) if fmt.signed else 10 ** (2 * length)
    magnitude = draw(st.integers(0, limit - 1))
    sign = -1 if fmt.signed and draw(st.booleans()) else 1
    return fmt, sign * magnitude / 10**fmt.decimals


@given(frames, st.integers(0, 4))
def test_frames_round_trip(frame: Frame, wake_ups: int) -> None:
    wire = encode_frame(frame)
    assert decode_frame(b"\xfe" * wake_ups + wire) == frame
    # Every data byte travels + 0x33.
    assert wire[10:-2] == bytes((b + 0x33) % 256 for b in frame.data)


@given(
    st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, 10 ** (2 * n) - 1)))
)
def test_bcd_round_trips(length_and_number: tuple[int, int]) -> None:
    length, number = length_and_number
    encoded = encode_bcd(number, length)
    assert len(encoded) == length
    assert decode_bcd(encoded) == number


@given(formats_and_values())
def test_values_round_trip(format_and_value: tuple[DataFormat, float]) -> None:
    fmt, value = format_and_value
    assert decode_value(encode_value(value, fmt), fmt) == value


@given(frames, st.data())
def test_any_corrupted_byte_is_detected(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(encode_frame(frame))
    position = data.draw(st.integers(0, len(wire) - 1), label="position")
    wire[position] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(DeviceError) as caught:
        decode_frame(bytes(wire))
    assert caught.value.reason in ("bad_checksum", "bad_response")


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_to_a_frame_or_a_device_error(wire: bytes) -> None:
    try:
        frame = decode_frame(wire)
    except DeviceError as exc:
        reason = exc.reason
    else:
        assert encode_frame(frame) == wire.lstrip(b"\xfe")
        return
    assert reason in ("bad_checksum", "bad_response")


# --- configuration -------------------------------------------------------------------------

SAMPLE_TOML = """
[[devices]]
id = "meter-it-load"
kind = "energy_meter"
interval_s = 10

[devices.source]
type = "dlt645"
port = "/dev/ttyUSB0"
address = "202401010001"   # 12 digits from the nameplate, a string
baudrate = 2400
parity = "E"
timeout_s = 1.0
retries = 2
wake_up = true

[[devices.source.fields]]
field = "energy_kwh"
channel = "it_load"
data_id = "00010000"       # forward active energy, XXXXXX.XX kWh
scale = 100.0              # CT ratio 500/5: the meter counts secondary kWh
offset = 0.0

[[devices.source.fields]]
field = "active_power_kw"
channel = "it_load"
data_id = "02030000"       # total active power, XX.XXXX kW
scale = 100.0
offset = 0.0
"""


def test_the_sample_configuration_is_valid() -> None:
    device = tomllib.loads(SAMPLE_TOML)["devices"][0]
    source = Dlt645Source.model_validate(device["source"])
    assert source.address == "202401010001"
    assert [f.di for f in source.fields] == [0x00010000, 0x02030000]
    check_field_map(device["kind"], source.fields, None)


def _source(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "dlt645",
        "port": "/dev/ttyUSB0",
        "address": A,
        "fields": [{"field": "energy_kwh", "data_id": FORWARD}],
    }
    return base | overrides


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"address": "20240101001"}, "address"),
        ({"address": "20240101000A"}, "address"),
        ({"fields": []}, "fields"),
        ({"fields": [{"field": "x", "data_id": "0201010"}]}, "data_id"),
        ({"fields": [{"field": "x", "data_id": "0201010G"}]}, "data_id"),
        ({"fields": [{"field": "x", "data_id": VENDOR_DI}]}, "length, decimals, signed"),
        (
            {"fields": [{"field": "x", "data_id": VENDOR_DI, "length": 2, "decimals": 1}]},
            "give signed",
        ),
        ({"fields": [{"field": "x", "data_id": VOLTAGE, "decimals": 5}]}, "decimals 5 exceed"),
        ({"parity": "X"}, "parity"),
        ({"baud": 9600}, "baud"),
    ],
)
def test_bad_configuration_names_the_key(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Dlt645Source.model_validate(_source(**overrides))


def test_known_identifiers_take_overrides() -> None:
    mapping = Dlt645Field(field="x", data_id="02020100", decimals=2)
    assert mapping.data_format == DataFormat(3, 2, signed=True)
    vendor = Dlt645Field(field="x", data_id="0280000a", length=3, decimals=0, signed=False)
    assert (vendor.data_id, vendor.di) == ("0280000A", 0x0280000A)


# --- the driver against the emulator over a pty --------------------------------------------


@dataclass
class Line:
    """Two emulated meters on one pty; drivers made here are closed after the test."""

    link: PtyLink
    emulator: Dlt645LineEmulator
    values: dict[str, dict[str, float]]
    drivers: list[Dlt645Driver] = field(default_factory=list)

    def driver(self, address: str, *data_ids: str, timeout_s: float = 0.3) -> Dlt645Driver:
        fields: list[dict[str, object]] = [
            {"field": f"f{i}", "data_id": di} for i, di in enumerate(data_ids)
        ]
        return self.driver_for(address, fields, timeout_s=timeout_s)

    def driver_for(
        self,
        address: str,
        fields: list[dict[str, object]],
        *,
        timeout_s: float = 0.3,
        **settings: object,
    ) -> Dlt645Driver:
        source = Dlt645Source.model_validate(
            {
                "type": "dlt645",
                "port": self.link.path,
                "address": address,
                # This kernel's ptys refuse parity settings (tcsetattr gives EINVAL), so
                # the tests run the line at 8N1; real meters use the default 8E1.
                "parity": "N",
                "timeout_s": timeout_s,
                "fields": fields,
            }
            | settings
        )
        driver = Dlt645Driver(source)
        self.drivers.append(driver)
        return driver

    def meter(self, address: str) -> EmulatedMeter:
        return self.emulator.meter(address)


@contextlib.asynccontextmanager
async def open_line(*, wake_up: bool = True) -> AsyncIterator[Line]:
    link = open_pty_link()
    values = {
        A: {
            ENERGY: 123456.78,
            FORWARD: 98765.43,
            VOLTAGE: 220.1,
            CURRENT: 12.345,
            POWER: 3.2109,
            FREQUENCY: 50.01,
            VENDOR_DI: -5.5,
        },
        B: {ENERGY: 42.0, FORWARD: 41.5, VOLTAGE: 231.9, CURRENT: 0.5, POWER: 0.11},
    }
    meters = [
        EmulatedMeter(A, fixed_values(values[A]), formats={0x02800007: DataFormat(2, 1, True)}),
        EmulatedMeter(B, fixed_values(values[B])),
    ]
    emulator = Dlt645LineEmulator(link.master_fd, meters, wake_up=wake_up)
    await emulator.start()
    line = Line(link, emulator, values)
    try:
        yield line
    finally:
        for driver in line.drivers:
            await driver.close()
        await asyncio.sleep(0)  # let the serial transports close before their pty goes
        await emulator.stop()
        link.close()


@pytest_asyncio.fixture
async def line() -> AsyncIterator[Line]:
    async with open_line() as line:
        yield line


async def test_reads_exact_values(line: Line) -> None:
    driver = line.driver(A, ENERGY, FORWARD, VOLTAGE, CURRENT, POWER, FREQUENCY)
    assert await driver.read_raw() == [123456.78, 98765.43, 220.1, 12.345, 3.2109, 50.01]
    assert line.meter(A).requests == 6


async def test_reads_negative_current_and_power(line: Line) -> None:
    driver = line.driver(A, CURRENT, POWER)
    line.values[A][CURRENT] = -12.345
    line.values[A][POWER] = -3.2109
    assert await driver.read_raw() == [-12.345, -3.2109]
    line.values[A][POWER] = 79.9999
    line.values[A][CURRENT] = -799.999
    assert await driver.read_raw() == [-799.999, 79.9999]


async def test_reads_an_identifier_outside_the_table_with_its_format(line: Line) -> None:
    fields: list[dict[str, object]] = [
        {"field": "t", "data_id": VENDOR_DI, "length": 2, "decimals": 1, "signed": True}
    ]
    assert await line.driver_for(A, fields).read_raw() == [-5.5]


async def test_two_meters_share_one_line(line: Line) -> None:
    first = line.driver(A, ENERGY, VOLTAGE, POWER)
    second = line.driver(B, ENERGY, VOLTAGE, POWER)
    for _ in range(3):
        got_a, got_b = await asyncio.gather(first.read_raw(), second.read_raw())
        assert got_a == [123456.78, 220.1, 3.2109]
        assert got_b == [42.0, 231.9, 0.11]
    assert (line.meter(A).requests, line.meter(B).requests) == (9, 9)


async def test_requests_and_answers_without_wake_up_bytes() -> None:
    async with open_line(wake_up=False) as line:
        fields: list[dict[str, object]] = [{"field": "v", "data_id": VOLTAGE}]
        driver = line.driver_for(B, fields, wake_up=False)
        assert await driver.read_raw() == [231.9]


async def test_an_unknown_identifier_is_an_exception_response(line: Line) -> None:
    driver = line.driver(A, "02010200")  # phase-B voltage: in the table, not in this meter
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    assert caught.value.reason == "exception_response"
    assert "no requested data" in caught.value.detail
    assert "02010200 (phase B voltage)" in caught.value.detail


async def test_a_silent_meter_times_out_and_recovers(line: Line) -> None:
    driver = line.driver(A, VOLTAGE, timeout_s=0.3)
    line.meter(A).fault = "silent"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    elapsed = loop.time() - started
    assert caught.value.reason == "timeout"
    assert 0.3 <= elapsed < 0.5
    # The other meter on the line is not affected.
    assert await line.driver(B, VOLTAGE).read_raw() == [231.9]
    line.meter(A).fault = "ok"
    assert await driver.read_raw() == [220.1]


async def test_a_bad_checksum_is_reported_and_the_line_recovers(line: Line) -> None:
    driver = line.driver(A, ENERGY)
    line.meter(A).fault = "bad_checksum"
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    assert caught.value.reason == "bad_checksum"
    line.meter(A).fault = "ok"
    assert await driver.read_raw() == [123456.78]


@pytest.mark.parametrize("char_time_s", [0.0, 0.004])
async def test_garbage_is_a_bad_response_and_the_line_recovers(
    line: Line, char_time_s: float
) -> None:
    # Paced like a real line, the rest of the garbage is still arriving when the driver
    # sees the first bad byte; the next read must not find it.
    line.emulator.char_time_s = char_time_s
    driver = line.driver(A, ENERGY, VOLTAGE)
    line.meter(A).fault = "garbage"
    for _ in range(3):
        with pytest.raises(DeviceError) as caught:
            await driver.read_raw()
        assert caught.value.reason == "bad_response"
    line.meter(A).fault = "ok"
    assert await driver.read_raw() == [123456.78, 220.1]


async def test_answers_arriving_a_byte_at_a_time_are_read(line: Line) -> None:
    line.emulator.char_time_s = 11 / 2400
    # A whole answer takes ~0.1 s at 2400 baud: a generous timeout keeps a loaded machine
    # from turning this reassembly check into a timing test.
    driver = line.driver(A, ENERGY, CURRENT, POWER, timeout_s=3.0)
    line.values[A][POWER] = -3.2109
    assert await driver.read_raw() == [123456.78, 12.345, -3.2109]


async def test_a_late_answer_is_not_taken_for_the_next_one(line: Line) -> None:
    # A answers 0.6 s after each request, after the driver gave up at 0.4 s; its answer then
    # arrives while B is being asked (the emulated line, like a meter, answers in turn).
    slow = line.driver(A, ENERGY, timeout_s=0.4)
    line.meter(A).delay_s = 0.6
    with pytest.raises(DeviceError) as caught:
        await slow.read_raw()
    assert caught.value.reason == "timeout"
    line.meter(A).delay_s = 0.0
    assert await line.driver(B, VOLTAGE, timeout_s=0.4).read_raw() == [231.9]
    assert await line.driver(A, VOLTAGE).read_raw() == [220.1]
    assert await slow.read_raw() == [123456.78]


async def test_a_late_answer_to_the_same_identifier_leaves_no_echo(line: Line) -> None:
    driver = line.driver(A, ENERGY, timeout_s=0.4)
    line.meter(A).delay_s = 0.6
    with pytest.raises(DeviceError):
        await driver.read_raw()
    line.meter(A).delay_s = 0.3
    # The first answer to come is the late one: the same meter and identifier, a valid value.
    assert await driver.read_raw() == [123456.78]
    line.meter(A).delay_s = 0.0
    # The answer to the repeated request comes 0.3 s behind it, while the voltage is being
    # asked for, and must be skipped.
    assert await line.driver(A, VOLTAGE, timeout_s=0.6).read_raw() == [220.1]


async def test_a_cancelled_read_leaves_the_line_usable(line: Line) -> None:
    driver = line.driver(A, ENERGY, timeout_s=1.0)
    line.meter(A).delay_s = 0.3
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await driver.read_raw()
    line.meter(A).delay_s = 0.0
    assert await line.driver(A, VOLTAGE).read_raw() == [220.1]
    assert await line.driver(B, POWER).read_raw() == [0.11]


async def test_close_releases_the_port(line: Line) -> None:
    driver = line.driver(B, VOLTAGE)
    assert await driver.read_raw() == [231.9]
    with pytest.raises(ValueError, match="configured twice"):
        line.driver_for(B, [{"field": "v", "data_id": VOLTAGE}], baudrate=9600)
    await driver.close()
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    assert caught.value.reason == "io_error"
    fields: list[dict[str, object]] = [{"field": "v", "data_id": VOLTAGE}]
    # Released, the port may be opened again with other line settings (a pty ignores baud).
    other = line.driver_for(B, fields, baudrate=9600)
    assert await other.read_raw() == [231.9]


async def test_a_field_device_polls_the_sample_configuration(line: Line) -> None:
    device = tomllib.loads(SAMPLE_TOML)["devices"][0]
    source = Dlt645Source.model_validate(
        device["source"] | {"port": line.link.path, "parity": "N", "timeout_s": 0.2}
    )
    driver = Dlt645Driver(source)
    line.drivers.append(driver)
    fields: list[FieldMap] = list(source.fields)
    meter = FieldDevice(device["id"], device["kind"], fields, None, source, driver)
    at = datetime(2026, 6, 1, tzinfo=UTC)
    (reading,) = await meter.read(at)
    assert reading.channel == "it_load"
    assert reading.values == {
        "energy_kwh": pytest.approx(9876543.0),
        "active_power_kw": pytest.approx(321.09),
    }
    check_values(reading.kind, reading.channel, reading.values)
    # Two attempts go unanswered, the third gets through: counted, and still a reading.
    line.meter(A).drop_next = 2
    (reading,) = await meter.read(at)
    assert reading.values["active_power_kw"] == pytest.approx(321.09)
    assert meter.errors == {"timeout": 2}


def test_a_meter_playing_the_simulator_gives_believable_values() -> None:
    values = simulated_values("meter-1", circuit="it_load", ratio=100.0)
    energy, voltage, power = values(0x00010000), values(0x02010100), values(0x02030000)
    assert energy is not None
    assert 0 < energy < 1_000_000
    assert voltage == 220.0
    assert power is not None
    assert 5 < power < 15  # ~800 kW of IT load behind a 100:1 CT
    assert values(0x04000101) is None
