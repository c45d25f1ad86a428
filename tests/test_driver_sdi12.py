"""SDI-12: the answer and CRC codec against the standard's example and properties, and the driver
against the byte-level sensor emulator over a real pty."""

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from collector.config import check_field_map
from devices.catalog import check_values
from devices.drivers.base import DeviceError
from devices.drivers.sdi12 import Sdi12Driver as Driver
from devices.drivers.sdi12 import Sdi12Field as F
from devices.drivers.sdi12 import Sdi12Source as Source
from devices.drivers.sdi12 import (
    answer_kind,
    crc16,
    decode_crc,
    encode_crc,
    format_value,
    parse_data_answer,
    parse_measurement_answer,
    parse_values,
    with_crc,
)
from devices.drivers.serial_bus import SerialBus
from devices.emulators.pty_link import PtyLink, open_pty_link
from devices.emulators.sdi12_sensor import (
    EmulatedSensor,
    Sdi12LineEmulator,
    fixed_values,
    main,
    simulated_fields,
    simulated_values,
    split_answers,
)

pytestmark = pytest.mark.timeout(30)

HYDROLOGY = [
    F(field="stage", index=0),
    F(field="discharge", index=1),
    F(field="water_temperature", index=2),
]


# --- the codec -----------------------------------------------------------------------------


def test_crc_matches_the_standards_example() -> None:
    # SDI-12 v1.3 section 4.4.12.3: "0D0!" answered "0+3.14OqZ<CR><LF>".
    assert crc16(b"0+3.14") == 0xFC5A
    assert encode_crc(0xFC5A) == b"OqZ"  # 0x40|0xF, 0x40|0x31, 0x40|0x1A
    assert with_crc("0+3.14") == "0+3.14OqZ"
    assert parse_data_answer("0+3.14OqZ", crc=True) == [3.14]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("+3.14-0.27+12.5", [3.14, -0.27, 12.5]),
        ("", []),
        ("+1", [1.0]),
        ("-0-0.0+.5", [0.0, 0.0, 0.5]),
        ("+1234567-9999", [1234567.0, -9999.0]),
    ],
)
def test_values_parse_exactly(text: str, values: list[float]) -> None:
    assert parse_values(text) == values


@pytest.mark.parametrize("text", ["3.14", "+", "+1..2", "+1e3", "+1 +2", "+1,5", "+-1"])
def test_unparsable_values_are_bad_responses(text: str) -> None:
    with pytest.raises(DeviceError) as caught:
        parse_values(text)
    assert caught.value.reason == "bad_response"


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (3.14, 7, "+3.14"),
        (-0.27, 7, "-0.27"),
        (12.5, 3, "+12.5"),
        (0.0, 3, "+0"),
        (100.0, 7, "+100"),
        (2.0 / 3.0, 7, "+0.666667"),  # 7 digits, the leading zero counts
        (12345.678, 7, "+12345.68"),
        (-1234567.4, 2, "-1234567"),
        (0.1 + 0.2, 7, "+0.3"),
    ],
)
def test_values_are_written_as_the_standard_says(value: float, decimals: int, text: str) -> None:
    assert format_value(value, decimals) == text


@pytest.mark.parametrize("value", [12_345_678.0, float("nan"), float("inf")])
def test_values_sdi12_cannot_write_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"SDI-12|digits"):
        format_value(value)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("00012", "measurement"),
        ("b0009", "measurement"),
        ("0", "service_request"),
        ("0+1.5-2", "data"),
        ("0+3.14OqZ", "data"),
        ("0OqZ", "data"),  # no values, with its CRC
        ("", None),
        ("#", None),
        ("0001", None),
        ("0+1.5 ", None),
        ("000123", None),
    ],
)
def test_answers_are_told_apart(body: str, kind: str | None) -> None:
    assert answer_kind(body) == kind


def test_measurement_answer_says_when_and_how_many() -> None:
    assert parse_measurement_answer("01205") == (120, 5)
    with pytest.raises(DeviceError, match="atttn"):
        parse_measurement_answer("0+1.5")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("0+3.14OqY", "bad_checksum"),
        ("0+3.15OqZ", "bad_checksum"),
        ("1+3.14OqZ", "bad_checksum"),  # the address is covered too
        ("0+3.14", "bad_response"),  # the CRC is missing
        ("0+3.14Oq", "bad_response"),
    ],
)
def test_broken_data_answers_are_detected(body: str, reason: str) -> None:
    with pytest.raises(DeviceError) as caught:
        parse_data_answer(body, crc=True)
    assert caught.value.reason == reason


@st.composite
def value_texts(draw: st.DrawFn) -> str:
    """One value as a sensor may write it: a sign, 1-7 digits, maybe a decimal point."""
    whole = draw(st.integers(1, 7))
    places = draw(st.integers(0, 7 - whole))
    digits = draw(st.text("0123456789", min_size=whole + places, max_size=whole + places))
    point = "." if places else draw(st.sampled_from(["", "."]))
    return draw(st.sampled_from("+-")) + digits[:whole] + point + digits[whole:]


@given(st.lists(value_texts(), max_size=9))
def test_values_round_trip(texts: list[str]) -> None:
    values = parse_values("".join(texts))
    assert values == [float(t) for t in texts]
    assert parse_values("".join(format_value(v) for v in values)) == values


@given(st.integers(0, 0xFFFF))
def test_crc_characters_round_trip(crc: int) -> None:
    chars = encode_crc(crc)
    assert all(0x40 <= c <= 0x7F for c in chars)
    assert decode_crc(chars) == crc


@given(
    st.sampled_from("0123456789abzAZ"),
    st.lists(value_texts(), max_size=9),
    st.data(),
)
def test_any_changed_character_is_detected(
    address: str, texts: list[str], data: st.DataObject
) -> None:
    answer = with_crc(address + "".join(texts))
    assert parse_data_answer(answer, crc=True) == [float(t) for t in texts]
    position = data.draw(st.integers(0, len(answer) - 1))
    replacement = data.draw(st.characters(min_codepoint=0x20, max_codepoint=0x7E))
    if replacement == answer[position]:
        return
    broken = answer[:position] + replacement + answer[position + 1 :]
    # CRC-16 catches every error confined to 16 bits, so no single character slips through.
    with pytest.raises(DeviceError) as caught:
        parse_data_answer(broken, crc=True)
    assert caught.value.reason in ("bad_checksum", "bad_response")


def test_values_are_split_at_35_characters_or_as_asked() -> None:
    texts = ["+1234.567"] * 5  # 9 characters each: 3 fit in 35
    assert split_answers(texts) == ["+1234.567" * 3, "+1234.567" * 2]
    assert split_answers(["+1", "+2", "+3"], per_answer=2) == ["+1+2", "+3"]
    assert split_answers([]) == []


# --- configuration -------------------------------------------------------------------------

SAMPLE = """
[[devices]]
id = "gauge-tuotuohe"
kind = "hydrology"
interval_s = 300

[devices.source]
type = "sdi12"
port = "/dev/ttyUSB0"
address = "0"
timeout_s = 1.0
retries = 2

[[devices.source.fields]]
field = "stage"
index = 0
offset = -0.25        # sensor zero is 0.25 m above the gauge datum

[[devices.source.fields]]
field = "discharge"
index = 1

[[devices.source.fields]]
field = "water_temperature"
measurement = "1"     # aMC1!: the temperature probe
index = 0
"""


def test_the_sample_configuration_is_valid() -> None:
    (device,) = tomllib.loads(SAMPLE)["devices"]
    source = Source.model_validate(device["source"])
    assert (source.baudrate, source.bytesize, source.parity, source.stopbits) == (1200, 7, "E", 1)
    assert source.crc is True
    assert [(f.field, f.measurement, f.index) for f in source.fields] == [
        ("stage", "", 0),
        ("discharge", "", 1),
        ("water_temperature", "1", 0),
    ]
    assert source.fields[0].apply(1.5) == 1.25
    check_field_map(device["kind"], source.fields, None)


def _settings(**overrides: object) -> dict[str, object]:
    return {
        "type": "sdi12",
        "port": "/dev/ttyUSB0",
        "address": "0",
        "fields": [{"field": "stage", "index": 0}],
    } | overrides


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"address": "10"}, "address"),
        ({"address": "?"}, "address"),
        ({"fields": []}, "fields"),
        ({"fields": [{"field": "stage", "index": 9}]}, "fields.0.index"),
        ({"fields": [{"field": "stage", "index": 0, "measurement": "0"}]}, "measurement"),
        (
            {"fields": [{"field": "stage", "index": 0}, {"field": "discharge", "index": 0}]},
            "already fields.0",
        ),
        ({"bytesize": 6}, "bytesize"),
        ({"parity": "X"}, "parity"),
        ({"baud": 9600}, "baud"),
    ],
)
def test_bad_configuration_names_the_key(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Source.model_validate(_settings(**overrides))


def test_a_measurement_number_may_be_written_as_a_number() -> None:
    source = Source.model_validate(
        _settings(fields=[{"field": "stage", "index": 0, "measurement": 3}])
    )
    assert source.fields[0].measurement == "3"


def test_the_cli_describes_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--sensor" in capsys.readouterr().out


# --- the driver against the emulator -------------------------------------------------------


@dataclass
class Line:
    link: PtyLink
    emulator: Sdi12LineEmulator
    drivers: list[Driver] = field(default_factory=list)

    def driver(
        self,
        address: str = "0",
        fields: Sequence[F] = HYDROLOGY,
        *,
        crc: bool = True,
        timeout_s: float = 0.3,
    ) -> Driver:
        driver = Driver(
            Source(
                type="sdi12",
                port=self.link.path,
                address=address,
                crc=crc,
                timeout_s=timeout_s,
                # This kernel's ptys refuse parity and 7 data bits (tcsetattr gives EINVAL),
                # so the tests open the line 8N1 instead of SDI-12's 7E1; the pty ignores speed.
                bytesize=8,
                parity="N",
                fields=list(fields),
            )
        )
        self.drivers.append(driver)
        return driver

    def sensor(self, address: str = "0") -> EmulatedSensor:
        return self.emulator.sensor(address)


@contextlib.asynccontextmanager
async def open_line(*sensors: EmulatedSensor, char_time_s: float = 0.0) -> AsyncIterator[Line]:
    link = open_pty_link()
    emulator = Sdi12LineEmulator(link.master_fd, sensors, char_time_s=char_time_s)
    line = Line(link, emulator)
    try:
        async with emulator:
            yield line
    finally:
        for driver in line.drivers:
            await driver.close()
        link.close()


@pytest_asyncio.fixture
async def line() -> AsyncIterator[Line]:
    """Sensor 0 with stage 3.14 m, discharge -0.27 (a backwater reading), 12.5 degC."""
    async with open_line(EmulatedSensor("0", fixed_values({"": [3.14, -0.27, 12.5]}))) as line:
        yield line


async def _fails(driver: Driver) -> DeviceError:
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    return caught.value


async def test_values_are_read_exactly_with_crc(line: Line) -> None:
    assert await line.driver().read_raw() == [3.14, -0.27, 12.5]
    assert line.sensor().commands == ["0MC!", "0D0!"]


async def test_values_are_read_exactly_without_crc(line: Line) -> None:
    assert await line.driver(crc=False).read_raw() == [3.14, -0.27, 12.5]
    assert line.sensor().commands == ["0M!", "0D0!"]


async def test_fields_take_values_in_any_order_from_several_measurements() -> None:
    values = fixed_values({"": [1.5, 2.5], "2": [-7.0, 8.125, 9.0]})
    async with open_line(EmulatedSensor("0", values)) as line:
        fields = [
            F(field="water_temperature", measurement="2", index=1),
            F(field="stage", index=1),
            F(field="discharge", measurement="2", index=0),
        ]
        assert await line.driver(fields=fields).read_raw() == [8.125, 2.5, -7.0]
        assert line.sensor().commands == ["0MC2!", "0D0!", "0MC!", "0D0!"]


async def test_two_sensors_share_one_line() -> None:
    first = EmulatedSensor("0", fixed_values({"": [1.25, 2.5, 3.75]}))
    second = EmulatedSensor("b", fixed_values({"": [-4.0, 5.5, 6.0625]}))
    async with open_line(first, second) as line:
        one, two = line.driver("0"), line.driver("b", crc=False)
        for _ in range(3):
            assert list(await asyncio.gather(one.read_raw(), two.read_raw())) == [
                [1.25, 2.5, 3.75],
                [-4.0, 5.5, 6.0625],
            ]
        assert first.commands == ["0MC!", "0D0!"] * 3
        assert second.commands == ["bM!", "bD0!"] * 3


async def test_a_measurement_that_takes_time_ends_with_a_service_request(line: Line) -> None:
    line.sensor().ready_after_s = 0.1  # announced as ttt = 001
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await line.driver().read_raw() == [3.14, -0.27, 12.5]
    # The service request, not the announced second, said when to ask for the data.
    assert 0.1 <= loop.time() - started < 0.6
    assert line.sensor().commands == ["0MC!", "0D0!"]


async def test_values_spanning_several_data_answers_are_joined() -> None:
    sensor = EmulatedSensor("0", fixed_values({"": [1.5, -2.25, 3.0]}), values_per_answer=2)
    # Paced like a slow line, so answers arrive a few characters at a time.
    async with open_line(sensor, char_time_s=0.001) as line:
        assert await line.driver().read_raw() == [1.5, -2.25, 3.0]
        assert sensor.commands == ["0MC!", "0D0!", "0D1!"]


async def test_nine_long_values_take_three_data_answers() -> None:
    values = [1234.567 + i for i in range(9)]  # "+1234.567": 3 per 35-character answer
    sensor = EmulatedSensor("0", fixed_values({"": values}))
    async with open_line(sensor) as line:
        fields = [F(field="stage", index=8), F(field="discharge", index=0)]
        assert await line.driver(fields=fields).read_raw() == [1242.567, 1234.567]
        assert sensor.commands == ["0MC!", "0D0!", "0D1!", "0D2!"]


async def test_a_silent_sensor_times_out_and_recovers(line: Line) -> None:
    driver = line.driver(timeout_s=0.2)
    line.emulator.set_fault("0", "silent")
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await _fails(driver)
    elapsed = loop.time() - started
    assert error.reason == "timeout"
    assert "0MC!" in error.detail
    assert 0.2 <= elapsed < 0.45
    line.emulator.set_fault("0", "ok")
    assert await driver.read_raw() == [3.14, -0.27, 12.5]


async def test_a_bad_crc_is_a_bad_checksum(line: Line) -> None:
    driver = line.driver()
    line.emulator.set_fault("0", "bad_crc")
    assert (await _fails(driver)).reason == "bad_checksum"
    line.emulator.set_fault("0", "ok")
    assert await driver.read_raw() == [3.14, -0.27, 12.5]


async def test_a_bad_crc_fault_leaves_answers_without_crc_alone(line: Line) -> None:
    line.emulator.set_fault("0", "bad_crc")
    assert await line.driver(crc=False).read_raw() == [3.14, -0.27, 12.5]


async def test_garbage_is_a_bad_response(line: Line) -> None:
    driver = line.driver()
    line.emulator.set_fault("0", "garbage")
    error = await _fails(driver)
    assert error.reason == "bad_response"
    assert "unparsable" in error.detail
    line.emulator.set_fault("0", "ok")
    assert await driver.read_raw() == [3.14, -0.27, 12.5]


async def test_too_few_values_are_a_bad_response() -> None:
    values = {"": [1.0, 2.0]}
    async with open_line(EmulatedSensor("0", fixed_values(values))) as line:
        error = await _fails(line.driver())
        assert error.reason == "bad_response"
        assert "announces 2 values, the fields need 3" in error.detail
        values[""] = []  # a sensor without the measurement answers 'a0000'
        assert "announces 0 values" in (await _fails(line.driver())).detail


async def test_an_answer_from_the_wrong_address_is_a_bad_response(line: Line) -> None:
    sensor = line.sensor()
    sensor.answer_delay_s = 0.2  # its own answer comes after the stray one

    def values(measurement: str) -> list[float]:
        line.emulator.inject(b"10013\r\n")  # sensor 1 announcing a measurement
        return [3.14, -0.27, 12.5]

    sensor.values = values
    error = await _fails(line.driver(timeout_s=1.0))
    assert error.reason == "bad_response"
    assert "answer from sensor 1 to 0MC!" in error.detail


async def test_a_late_answer_is_not_taken_for_the_next_one(line: Line) -> None:
    driver = line.driver(timeout_s=0.2)
    sensor = line.sensor()
    # The old answer comes 0.1 s after the driver gave up, 0.1 s into the next poll.
    sensor.answer_delay_s = 0.3  # a slow link: each answer comes after the driver gave up
    assert (await _fails(driver)).reason == "timeout"
    sensor.answer_delay_s = 0.0
    fixed = {"": [7.0, 8.5, 9.25]}
    sensor.values = fixed_values(fixed)
    # Asked at once, the old measurement's answer comes first, then the new one's, which
    # then arrives while the driver waits for the data: it must skip it, not parse it.
    assert await driver.read_raw() == [7.0, 8.5, 9.25]
    assert await driver.read_raw() == [7.0, 8.5, 9.25]


async def test_stale_bytes_on_the_line_are_discarded_before_asking(line: Line) -> None:
    driver = line.driver(timeout_s=0.15)
    line.emulator.set_fault("0", "silent")
    assert (await _fails(driver)).reason == "timeout"
    # The answers to the abandoned poll turn up after all, just before the next poll; had
    # they been read, this measurement would have been 6 values of 9.9.
    stale = with_crc("0+9.9+9.9+9.9").encode()
    line.emulator.inject(b"00016\r\n0\r\n" + stale + b"\r\n" + stale + b"\r\n")
    line.emulator.set_fault("0", "ok")
    assert await driver.read_raw() == [3.14, -0.27, 12.5]


async def test_a_cancelled_poll_leaves_the_line_usable(line: Line) -> None:
    driver = line.driver()
    line.sensor().ready_after_s = 0.3
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):  # as the gateway bounds a poll
            await driver.read_raw()
    line.sensor().ready_after_s = 0.0
    assert await driver.read_raw() == [3.14, -0.27, 12.5]
    # The abandoned measurement's service request would have come by now: it did not (the
    # new command aborted that measurement) and nothing is left over for the next poll.
    await asyncio.sleep(0.3)
    assert await driver.read_raw() == [3.14, -0.27, 12.5]


async def test_a_driver_gives_up_the_line_when_closed() -> None:
    async with open_line(EmulatedSensor("0", fixed_values({"": [1.0, 2.0, 3.0]}))) as line:
        driver = line.driver()
        assert await driver.read_raw() == [1.0, 2.0, 3.0]
        await driver.close()
        await driver.close()  # twice is harmless
        assert (await _fails(driver)).reason == "io_error"


async def test_simulated_hydrology_reads_as_the_simulator_says() -> None:
    at = datetime(2026, 7, 15, 6, 0, tzinfo=UTC)
    values = simulated_values("hydrology", "gauge-1", seed=7, clock=lambda: at)
    async with open_line(EmulatedSensor("0", values, ready_after_s=0.05)) as line:
        names = simulated_fields("hydrology")
        assert names == ["stage", "discharge", "water_temperature"]
        fields = [F(field=n, index=i) for i, n in enumerate(names)]
        raw = await line.driver(fields=fields).read_raw()
    expected = values("")
    assert expected is not None
    assert raw == list(expected)
    check_values("hydrology", None, dict(zip(names, raw, strict=True)))


async def test_simulated_weather_reads_all_eight_values() -> None:
    at = datetime(2026, 1, 10, 14, 0, tzinfo=UTC)
    values = simulated_values("weather", "aws-1", clock=lambda: at)
    names = simulated_fields("weather")
    assert len(names) == 8  # all on aM!; nothing on aM1!
    assert values("1") is None
    sensor = EmulatedSensor("0", values, values_per_answer=3)
    async with open_line(sensor) as line:
        fields = [F(field=n, index=i) for i, n in enumerate(names)]
        raw = await line.driver(fields=fields).read_raw()
    assert sensor.commands == ["0MC!", "0D0!", "0D1!", "0D2!"]
    assert raw == list(values("") or ())
    check_values("weather", None, dict(zip(names, raw, strict=True)))


async def test_the_emulator_answers_identification_and_address_commands(line: Line) -> None:
    bus = SerialBus.shared(line.link.path, baudrate=1200, bytesize=8, parity="N")
    try:
        for command, answer in [
            (b"0!", b"0\r\n"),
            (b"?!", b"0\r\n"),
            (b"0I!", b"013ECOTEL  SDI12E100\r\n"),
            (b"0A5!", b"5\r\n"),
            (b"0!", None),  # moved to 5: nobody answers 0 now
            (b"5M!", b"50003\r\n"),
            (b"5D0!", b"5+3.14-0.27+12.5\r\n"),
            (b"5D1!", b"5\r\n"),
            (b"5X!", None),  # unknown commands go unanswered
        ]:
            async with bus.transaction() as x:
                await x.write(command)
                if answer is not None:
                    assert await x.read_until(b"\n", 1.0) == answer
                    continue
                with pytest.raises(DeviceError, match="timeout"):
                    await x.read_until(b"\n", 0.1)
    finally:
        await bus.release()
