"""Modbus: the register codec against hand-worked registers, the read plan, the configuration,
and the driver against pymodbus's own server over TCP on loopback and RTU on a pty pair."""

import asyncio
import logging
import math
import re
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from collector.config import GatewaySettings, check_field_map, load_gateway_config
from collector.field_device import FieldDevice
from collector.settings_loader import ConfigError
from devices.catalog import check_values
from devices.drivers.base import DeviceError, FieldMap
from devices.drivers.dlt645 import Dlt645Field
from devices.drivers.modbus import (
    MAX_READ_REGISTERS,
    REGISTERS,
    DataType,
    ModbusDriver,
    ModbusField,
    ModbusRtuSource,
    ModbusTcpSource,
    ReadBlock,
    WordOrder,
    decode_registers,
    encode_registers,
    exception_text,
    plan_reads,
)
from devices.drivers.sdi12 import Sdi12Field
from devices.emulators.modbus_device import (
    ModbusEmulator,
    ModbusUnit,
    kind_register_map,
    sample_config,
    simulated_unit,
)
from devices.highway import SurfaceState

pytestmark = pytest.mark.timeout(60)

Transport = Literal["tcp", "rtu"]

# --- the codec -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registers", "data_type", "word_order", "value"),
    [
        # 1.5 = 0x3FC00000: sign 0, exponent 127 (0x7F), mantissa .1 binary.
        ([0x3FC0, 0x0000], "float32", "big", 1.5),
        ([0x0000, 0x3FC0], "float32", "little", 1.5),
        # -2.5 = 0xC0200000: sign 1, exponent 128, mantissa .01 binary.
        ([0xC020, 0x0000], "float32", "big", -2.5),
        # 230.5 = 0x43668000
        ([0x8000, 0x4366], "float32", "little", 230.5),
        # 1020.9 is not a float32: the nearest, 0x447F399A, is 1020.9000244140625; the driver
        # gives the shortest decimal that is the same float32, as the device meant it.
        ([0x447F, 0x399A], "float32", "big", 1020.9),
        ([0x3DCC, 0xCCCD], "float32", "big", 0.1),
        ([0xFFF4], "int16", "big", -12.0),
        ([0xFFF4], "uint16", "big", 65524.0),
        ([0x7FFF], "int16", "big", 32767.0),
        # 70000 = 0x00011170
        ([0x0001, 0x1170], "uint32", "big", 70000.0),
        ([0x1170, 0x0001], "uint32", "little", 70000.0),
        ([0xFFFF, 0xFFFE], "int32", "big", -2.0),
        ([0xFFFF, 0xFFFF], "uint32", "big", 4294967295.0),
        # 1.0 = 0x3FF0000000000000
        ([0x3FF0, 0, 0, 0], "float64", "big", 1.0),
        ([0, 0, 0, 0x3FF0], "float64", "little", 1.0),
    ],
)
def test_registers_decode_as_worked_by_hand(
    registers: list[int], data_type: DataType, word_order: WordOrder, value: float
) -> None:
    assert decode_registers(registers, data_type, word_order) == value
    assert encode_registers(value, data_type, word_order) == registers


def test_a_value_that_does_not_fit_its_type_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit int16"):
        encode_registers(40000, "int16", "big")
    with pytest.raises(ValueError, match="does not fit uint32"):
        encode_registers(-1, "uint32", "big")
    with pytest.raises(ValueError, match="spans 2 registers"):
        decode_registers([1], "float32", "big")


def test_exception_codes_are_named() -> None:
    assert exception_text(2) == "illegal data address"
    assert exception_text(0x0B) == "gateway target device failed to respond"
    assert exception_text(0x42) == "unknown exception code"


_LIMITS: dict[DataType, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[DataType, float]:
    data_type: DataType = draw(st.sampled_from(get_args(DataType)))
    if data_type == "float32":
        return data_type, draw(st.floats(width=32, allow_nan=False))
    if data_type == "float64":
        return data_type, draw(st.floats(allow_nan=False))
    low, high = _LIMITS[data_type]
    return data_type, float(draw(st.integers(low, high)))


@given(typed_values(), st.sampled_from(get_args(WordOrder)))
def test_values_round_trip_through_registers(
    typed: tuple[DataType, float], word_order: WordOrder
) -> None:
    data_type, value = typed
    registers = encode_registers(value, data_type, word_order)
    assert len(registers) == REGISTERS[data_type]
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode_registers(registers, data_type, word_order)
    if data_type == "float32":
        # The shortest decimal of the same float32, not necessarily the same float64.
        assert encode_registers(decoded, data_type, word_order) == registers
        assert len(repr(decoded)) <= len(repr(value))
    else:
        assert decoded == value
    other: WordOrder = "little" if word_order == "big" else "big"
    # The word order is the order of whole registers, nothing else.
    assert encode_registers(value, data_type, other) == registers[::-1]


# --- the read plan -------------------------------------------------------------------------


def _field(address: int, data_type: DataType = "uint16", table: str = "holding") -> ModbusField:
    return ModbusField.model_validate(
        {"field": "f", "address": address, "data_type": data_type, "table": table}
    )


def test_adjacent_registers_share_a_read_and_tables_do_not() -> None:
    fields = [
        _field(2, "float32"),  # 2-3
        _field(0, "int16"),  # 0
        _field(1),  # 1
        _field(4, "uint32"),  # 4-5
        _field(10),  # a gap: its own read
        _field(0, "float32", "input"),
    ]
    assert plan_reads(fields) == [
        ReadBlock("holding", 0, 6, ((1, 0), (2, 1), (0, 2), (3, 4))),
        ReadBlock("holding", 10, 1, ((4, 0),)),
        ReadBlock("input", 0, 2, ((5, 0),)),
    ]
    # Allowed to span 4 unused registers, the gap 6-9 joins the two holding reads.
    assert [(b.start, b.count) for b in plan_reads(fields, max_gap=4)][:1] == [(0, 11)]
    assert len(plan_reads(fields, max_gap=3)) == 3


def test_a_read_never_exceeds_its_register_limit() -> None:
    fields = [_field(2 * i, "float32") for i in range(5)]  # registers 0-9
    assert [(b.start, b.count) for b in plan_reads(fields, max_registers=4)] == [
        (0, 4),
        (4, 4),
        (8, 2),
    ]


fields_lists = st.lists(
    st.builds(
        _field,
        st.integers(0, 400),
        st.sampled_from(get_args(DataType)),
        st.sampled_from(["holding", "input"]),
    ),
    min_size=1,
    max_size=30,
)


@given(fields_lists, st.integers(0, 10), st.integers(4, MAX_READ_REGISTERS))
def test_every_field_is_read_once_within_limits(
    fields: list[ModbusField], max_gap: int, max_registers: int
) -> None:
    plan = plan_reads(fields, max_gap=max_gap, max_registers=max_registers)
    placed = sorted(index for block in plan for index, _ in block.fields)
    assert placed == list(range(len(fields)))
    for block in plan:
        assert 1 <= block.count <= max_registers
        for index, offset in block.fields:
            mapping = fields[index]
            assert mapping.table == block.table
            assert block.start + offset == mapping.address
            assert offset + mapping.registers <= block.count
        if max_gap == 0:
            # Every register read belongs to a field: no read over a hole in the map.
            covered = {
                fields[i].address + k for i, _ in block.fields for k in range(fields[i].registers)
            }
            assert covered == set(range(block.start, block.start + block.count))


# --- configuration -------------------------------------------------------------------------

SAMPLE_TOML = """
[[devices]]
id = "pm-it-1"
kind = "energy_meter"
interval_s = 10
channel = "it_load"

[devices.source]
type = "modbus_tcp"
host = "192.0.2.10"          # the meter, or a Modbus TCP gateway in front of RS-485 meters
port = 502
unit = 1
timeout_s = 1.0
retries = 2

[[devices.source.fields]]
field = "energy_kwh"
address = 0                  # 0-based, as on the wire: the manual's 40001
table = "holding"
data_type = "float32"
word_order = "little"        # this vendor sends the low word first

[[devices.source.fields]]
field = "active_power_kw"
address = 2
data_type = "int16"
scale = 0.1                  # the meter counts in 100 W
offset = 0.0
"""

RTU_TOML = """
[[devices]]
id = "wq-1"
kind = "water_quality"
interval_s = 60

[devices.source]
type = "modbus_rtu"
port = "/dev/ttyUSB0"
unit = 3
baudrate = 9600
parity = "N"

[[devices.source.fields]]
field = "water_temperature"
address = 0
table = "input"
data_type = "int16"
scale = 0.01
[[devices.source.fields]]
field = "ph"
address = 1
table = "input"
data_type = "uint16"
scale = 0.01
[[devices.source.fields]]
field = "dissolved_oxygen"
address = 2
table = "input"
data_type = "float32"
[[devices.source.fields]]
field = "conductivity"
address = 4
table = "input"
data_type = "float32"
[[devices.source.fields]]
field = "turbidity"
address = 6
table = "input"
data_type = "float32"
"""


@pytest.mark.parametrize("sample", [SAMPLE_TOML, RTU_TOML])
def test_the_sample_configurations_are_valid(sample: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw-1"\nsite = "site-1"\n' + sample)
    settings = load_gateway_config(path)
    (device,) = settings.devices
    assert isinstance(device.source, ModbusTcpSource | ModbusRtuSource)
    assert len(plan_reads(device.source.fields)) == 1


def _tcp(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "modbus_tcp",
        "host": "127.0.0.1",
        "fields": [{"field": "energy_kwh", "address": 0}],
    }
    return base | overrides


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (_tcp(fields=[]), "fields"),
        (_tcp(unit=256), "unit"),
        (_tcp(port=0), "port"),
        (_tcp(fields=[{"field": "x", "address": 70000}]), "address"),
        (_tcp(fields=[{"field": "x", "address": 0, "data_type": "float16"}]), "data_type"),
        (_tcp(fields=[{"field": "x", "address": 0, "word_order": "middle"}]), "word_order"),
        (_tcp(fields=[{"field": "x", "address": 0, "table": "coil"}]), "table"),
        (_tcp(fields=[{"field": "x", "address": 0, "register": 3}]), "register"),
        (
            _tcp(fields=[{"field": "x", "address": 65535, "data_type": "float32"}]),
            "runs past register 65535",
        ),
        (_tcp(max_registers=126), "max_registers"),
        (_tcp(baudrate=9600), "baudrate"),
        (
            {
                "type": "modbus_rtu",
                "port": "/dev/ttyUSB0",
                "fields": [{"field": "x", "address": 0}],
            },
            "unit",
        ),
        (
            {
                "type": "modbus_rtu",
                "port": "/dev/ttyUSB0",
                "unit": 0,
                "fields": [{"field": "x", "address": 0}],
            },
            "unit",
        ),
    ],
)
def test_bad_configuration_names_the_key(source: dict[str, object], problem: str) -> None:
    model = ModbusTcpSource if source["type"] == "modbus_tcp" else ModbusRtuSource
    with pytest.raises(ValidationError, match=problem):
        model.model_validate(source)


def test_a_gateway_file_with_a_bad_modbus_field_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nid = "gw-1"\nsite = "site-1"\n'
        + SAMPLE_TOML.replace('data_type = "int16"', 'data_type = "int12"')
    )
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "devices.0.source.modbus_tcp.fields.1.data_type" in message


def test_the_field_map_is_checked_against_the_kind() -> None:
    source = ModbusTcpSource.model_validate(
        _tcp(fields=[{"field": "energy_kwh", "address": 0, "data_type": "float32"}])
    )
    with pytest.raises(ValueError, match="active_power_kw missing"):
        check_field_map("energy_meter", source.fields, "it_load")


# --- states: a state quantity's integer codes ------------------------------------------------

SURFACE_STATES: tuple[str, ...] = get_args(SurfaceState)

ROAD_WEATHER_TOML = """
[[devices]]
id = "rws-1"
kind = "road_weather"

[devices.source]
type = "modbus_tcp"
host = "127.0.0.1"
fields = [
    { field = "surface_temperature", address = 0, data_type = "int16", scale = 0.1 },
    { field = "surface_state", address = 1, states = { 0 = "dry", 1 = "moist", 2 = "wet", 5 = "ice" } },
    { field = "water_film", address = 2, scale = 0.01 },
    { field = "visibility", address = 3 },
    { field = "air_temperature", address = 4, data_type = "int16", scale = 0.1 },
    { field = "relative_humidity", address = 5 },
    { field = "wind_speed", address = 6, scale = 0.1 },
]
"""


def test_a_state_field_loads_with_its_codes(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw-1"\nsite = "site-1"\n' + ROAD_WEATHER_TOML)
    (device,) = load_gateway_config(path).devices
    assert isinstance(device.source, ModbusTcpSource)
    assert device.source.fields[1].states == {0: "dry", 1: "moist", 2: "wet", 5: "ice"}


def test_the_commented_road_weather_station_in_the_highway_sample_loads(tmp_path: Path) -> None:
    sample = Path(__file__).parent.parent / "deploy" / "gateway" / "highway.toml"
    # Uncomment the commented-out configuration lines (keys and tables), not the prose.
    text = re.sub(r"(?m)^# (\[|[a-z_]+ = )", r"\1", sample.read_text())
    path = tmp_path / "highway.toml"
    path.write_text(text.replace('state_dir = "gateway-state"', f'state_dir = "{tmp_path}"'))
    station = load_gateway_config(path).devices[-1]
    assert station.kind == "road_weather"
    assert isinstance(station.source, ModbusTcpSource)
    (state,) = (f for f in station.source.fields if f.field == "surface_state")
    assert state.states == dict(enumerate(SURFACE_STATES))


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        (
            ', states = { 0 = "dry", 1 = "moist", 2 = "wet", 5 = "ice" }',
            "",
            "devices.0",
            "source.fields.1.states: 'surface_state' is a state: map the device's codes to "
            "dry, moist, wet, slush, snow, ice, frost",
        ),
        (
            '5 = "ice"',
            '5 = "icy"',
            "devices.0",
            "source.fields.1.states.5: 'icy' is not a state of surface_state; allowed: dry,",
        ),
        (
            "address = 1, states",
            "address = 1, scale = 1.0, states",
            "devices.0.source.modbus_tcp.fields.1.scale",
            "scale does not apply",
        ),
        (
            '5 = "ice" }',
            '5 = "ice" }, offset = -1',
            "devices.0.source.modbus_tcp.fields.1.offset",
            "offset does not apply",
        ),
        (
            "address = 2, scale = 0.01",
            'address = 2, states = { 0 = "dry" }',
            "devices.0",
            "source.fields.2.states: 'water_film' is a number, not a state; use scale and offset",
        ),
        (
            '{ 0 = "dry", 1 = "moist", 2 = "wet", 5 = "ice" }',
            "{}",
            "devices.0.source.modbus_tcp.fields.1.states",
            "at least 1 item",
        ),
        ('2 = "wet"', 'two = "wet"', "devices.0.source.modbus_tcp.fields.1.states.two", "integer"),
    ],
)
def test_a_bad_state_table_names_file_and_key(
    old: str, new: str, key: str, problem: str, tmp_path: Path
) -> None:
    assert old in ROAD_WEATHER_TOML
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nid = "gw-1"\nsite = "site-1"\n' + ROAD_WEATHER_TOML.replace(old, new)
    )
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert problem in message


state_tables = st.dictionaries(
    st.integers(-(2**31), 2**32), st.sampled_from(SURFACE_STATES), min_size=1
)


@given(state_tables, st.one_of(st.integers(-(2**31), 2**32), st.floats(allow_nan=True)))
def test_a_code_becomes_its_state_or_a_bad_response(table: dict[int, str], raw: float) -> None:
    mapping = FieldMap(field="surface_state", states=table)
    code = int(raw) if math.isfinite(raw) and raw == int(raw) else None
    if code in table:
        assert mapping.apply(float(raw)) == table[code]
    else:
        with pytest.raises(DeviceError) as caught:
            mapping.apply(float(raw))
        assert caught.value.reason == "bad_response"
        assert "surface_state" in caught.value.detail


@pytest.mark.parametrize(
    ("model", "address"),
    [
        (ModbusField, {"address": 1}),
        (Sdi12Field, {"index": 1}),
        (Dlt645Field, {"data_id": "00000000"}),
    ],
)
def test_every_protocol_field_takes_a_state_table(
    model: type[FieldMap], address: dict[str, object]
) -> None:
    mapping = model.model_validate({"field": "surface_state", "states": {"4": "snow"}} | address)
    assert mapping.apply(4.0) == "snow"
    with pytest.raises(ValidationError, match="scale does not apply"):
        model.model_validate(
            {"field": "surface_state", "states": {"4": "snow"}, "scale": 2} | address
        )


@given(state_tables)
def test_every_code_of_a_table_maps(table: dict[int, str]) -> None:
    mapping = FieldMap(field="surface_state", states=table)
    assert {code: mapping.apply(float(code)) for code in table} == table


# --- the driver against pymodbus's server ----------------------------------------------------


@dataclass
class Bench:
    """A pymodbus server with units 1 and 2, and the drivers a test made (closed after it)."""

    emulator: ModbusEmulator
    transport: Transport
    drivers: list[ModbusDriver] = field(default_factory=list)

    def source(self, unit: int, fields: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
        where: dict[str, Any]
        if self.transport == "tcp":
            where = {"type": "modbus_tcp", "host": "127.0.0.1", "port": self.emulator.port}
        else:
            # A pty takes no parity setting; a real RS-485 line defaults to 8E1.
            where = {"type": "modbus_rtu", "port": self.emulator.path, "parity": "N"}
        # Generous for answers (a loaded machine is slow); tests of silence set their own.
        return where | {"unit": unit, "timeout_s": 2.0, "fields": fields} | settings

    def driver(self, unit: int, fields: list[dict[str, Any]], **settings: Any) -> ModbusDriver:
        data = self.source(unit, fields, **settings)
        model = ModbusTcpSource if self.transport == "tcp" else ModbusRtuSource
        driver = ModbusDriver(model.model_validate(data))
        self.drivers.append(driver)
        return driver

    def unit(self, unit: int) -> ModbusUnit:
        return self.emulator.unit(unit)


def _units() -> list[ModbusUnit]:
    meter = (
        ModbusUnit(1)
        .set("holding", 0, 230.5, "float32", "big")
        .set("holding", 2, 230.5, "float32", "little")
        .set("holding", 4, -125, "int16")
        .set("holding", 5, 70000, "uint32")
        .set("holding", 7, 1.0 / 3.0, "float64", "little")
        .set("input", 100, 4321, "uint16")
    )
    probe = ModbusUnit(2).set("input", 0, 7.25, "float32")
    return [meter, probe]


@pytest_asyncio.fixture(params=["tcp", "rtu"])
async def bench(request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    transport: Transport = request.param
    async with ModbusEmulator(_units(), transport=transport) as emulator:
        b = Bench(emulator, transport)
        try:
            yield b
        finally:
            for driver in b.drivers:
                await driver.close()


METER_FIELDS: list[dict[str, Any]] = [
    {"field": "big", "address": 0, "data_type": "float32"},
    {"field": "little", "address": 2, "data_type": "float32", "word_order": "little"},
    {"field": "signed", "address": 4, "data_type": "int16"},
    {"field": "count", "address": 5, "data_type": "uint32"},
    {"field": "double", "address": 7, "data_type": "float64", "word_order": "little"},
    {"field": "status", "address": 100, "table": "input"},
]


async def test_reads_every_type_in_both_word_orders_in_two_requests(bench: Bench) -> None:
    driver = bench.driver(1, METER_FIELDS)
    assert await driver.read_raw() == [230.5, 230.5, -125.0, 70000.0, 1.0 / 3.0, 4321.0]
    # Holding registers 0-10 in one read, input register 100 in another.
    assert bench.unit(1).requests == 2


async def test_a_wrong_word_order_gives_a_different_number(bench: Bench) -> None:
    # The check that word order is applied at all: the big-endian 230.5 read as little.
    (value,) = await bench.driver(1, [METER_FIELDS[1] | {"address": 0}]).read_raw()
    assert value != 230.5
    assert value == decode_registers(encode_registers(230.5, "float32", "big"), "float32", "little")


async def test_values_follow_the_device(bench: Bench) -> None:
    driver = bench.driver(
        2, [{"field": "t", "address": 0, "table": "input", "data_type": "float32"}]
    )
    assert await driver.read_raw() == [7.25]
    bench.unit(2).set("input", 0, -3.5, "float32")
    assert await driver.read_raw() == [-3.5]


async def test_scale_and_offset_apply_to_a_signed_register(bench: Bench) -> None:
    # A probe reporting water temperature in hundredths of a degree, 0.5 degrees off.
    bench.unit(1).set("holding", 4, -125, "int16")
    fields: list[dict[str, Any]] = [
        {
            "field": "water_temperature",
            "address": 4,
            "data_type": "int16",
            "scale": 0.01,
            "offset": 0.5,
        }
    ]
    data = bench.source(1, fields)
    model = ModbusTcpSource if bench.transport == "tcp" else ModbusRtuSource
    source = model.model_validate(data)
    driver = ModbusDriver(source)
    bench.drivers.append(driver)
    mappings: list[FieldMap] = list(source.fields)
    device = FieldDevice("probe-1", "water_quality", mappings, None, source, driver)
    (reading,) = await device.read(datetime(2026, 6, 1, tzinfo=UTC))
    assert reading.values == {"water_temperature": pytest.approx(-0.75)}


async def test_an_illegal_address_is_a_named_exception_response(bench: Bench) -> None:
    driver = bench.driver(1, [{"field": "x", "address": 50}])
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    assert caught.value.reason == "exception_response"
    assert "illegal data address (exception code 2)" in caught.value.detail
    assert "holding registers 50-50 of unit 1" in caught.value.detail
    # A read spanning a hole in the map is refused the same way.
    spanning = bench.driver(
        1, [{"field": "x", "address": 9}, {"field": "y", "address": 100}], max_gap=100
    )
    with pytest.raises(DeviceError) as caught:
        await spanning.read_raw()
    assert caught.value.reason == "exception_response"


async def test_a_silent_unit_times_out_and_recovers_without_disturbing_the_other(
    bench: Bench,
) -> None:
    silent = bench.driver(1, METER_FIELDS[:1], timeout_s=0.3)
    other = bench.driver(
        2, [{"field": "t", "address": 0, "table": "input", "data_type": "float32"}]
    )
    bench.unit(1).fault = "silent"
    with pytest.raises(DeviceError) as caught:
        await silent.read_raw()
    assert caught.value.reason == "timeout"
    assert "no answer within 0.3 s" in caught.value.detail
    assert await other.read_raw() == [7.25]
    bench.unit(1).fault = "ok"
    assert await silent.read_raw() == [230.5]


async def test_a_nan_in_a_float_register_is_a_bad_response(bench: Bench) -> None:
    bench.unit(2).set("input", 0, math.nan, "float32")
    driver = bench.driver(
        2, [{"field": "t", "address": 0, "table": "input", "data_type": "float32"}]
    )
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    assert caught.value.reason == "bad_response"
    assert "holds nan" in caught.value.detail


async def test_units_on_one_link_share_it(bench: Bench) -> None:
    first = bench.driver(1, METER_FIELDS)
    second = bench.driver(
        2, [{"field": "t", "address": 0, "table": "input", "data_type": "float32"}]
    )
    for _ in range(3):
        got_1, got_2 = await asyncio.gather(first.read_raw(), second.read_raw())
        assert got_1[0] == 230.5
        assert got_2 == [7.25]
    assert (bench.unit(1).requests, bench.unit(2).requests) == (6, 3)


async def test_close_releases_the_link(bench: Bench) -> None:
    driver = bench.driver(
        2, [{"field": "t", "address": 0, "table": "input", "data_type": "float32"}]
    )
    assert await driver.read_raw() == [7.25]
    await driver.close()
    with pytest.raises(DeviceError) as caught:
        await driver.read_raw()
    assert caught.value.reason == "io_error"
    again = bench.driver(
        2, [{"field": "t", "address": 0, "table": "input", "data_type": "float32"}]
    )
    assert await again.read_raw() == [7.25]


@pytest.mark.parametrize("transport", ["rtu"])
async def test_rtu_wrong_unit_id_times_out(transport: Transport) -> None:
    async with ModbusEmulator(_units(), transport=transport) as emulator:
        b = Bench(emulator, transport)
        try:
            missing = b.driver(9, [{"field": "x", "address": 0}], timeout_s=0.3)
            with pytest.raises(DeviceError) as caught:
                await missing.read_raw()
            assert caught.value.reason == "timeout"
            assert "unit 9" in caught.value.detail
            assert await b.driver(1, METER_FIELDS[:1]).read_raw() == [230.5]
        finally:
            for driver in b.drivers:
                await driver.close()


async def test_rtu_bad_crc_is_a_bad_checksum() -> None:
    async with ModbusEmulator(_units(), transport="rtu") as emulator:
        b = Bench(emulator, "rtu")
        try:
            driver = b.driver(1, METER_FIELDS[:1], timeout_s=0.3)
            b.unit(1).fault = "bad_crc"
            with pytest.raises(DeviceError) as caught:
                await driver.read_raw()
            assert caught.value.reason == "bad_checksum"
            b.unit(1).fault = "ok"
            assert await driver.read_raw() == [230.5]
        finally:
            for driver in b.drivers:
                await driver.close()


async def test_rtu_ports_shared_only_with_the_same_line_settings() -> None:
    async with ModbusEmulator(_units(), transport="rtu") as emulator:
        b = Bench(emulator, "rtu")
        try:
            b.driver(1, METER_FIELDS[:1])
            with pytest.raises(ValueError, match="configured twice"):
                b.driver(2, [{"field": "x", "address": 0}], baudrate=9600)
        finally:
            for driver in b.drivers:
                await driver.close()


async def test_a_tcp_device_that_goes_away_is_an_io_error_until_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ecotel")
    units = _units()
    emulator = ModbusEmulator(units)
    await emulator.start()
    b = Bench(emulator, "tcp")
    driver = b.driver(1, METER_FIELDS[:1])
    try:
        assert await driver.read_raw() == [230.5]
        await emulator.stop()
        # The first poll may still find the old connection open, and wait in vain.
        with pytest.raises(DeviceError) as caught:
            await driver.read_raw()
        assert caught.value.reason in ("io_error", "timeout")
        with pytest.raises(DeviceError) as caught:
            await driver.read_raw()
        assert caught.value.reason == "io_error"
        assert f"cannot connect to 127.0.0.1:{emulator.port}" in caught.value.detail
        # The gateway logs failures at a limited rate; pymodbus would add one at every poll.
        assert not [r for r in caplog.records if r.name.startswith("pymodbus")]
        # Back on the same port: the next poll reconnects.
        emulator = ModbusEmulator(units, port=emulator.port)
        await emulator.start()
        assert await driver.read_raw() == [230.5]
    finally:
        await driver.close()
        await emulator.stop()


async def test_a_field_device_retries_and_counts_each_failed_attempt() -> None:
    async with ModbusEmulator(_units()) as emulator:
        b = Bench(emulator, "tcp")
        try:
            data = b.source(
                1,
                [
                    {"field": "energy_kwh", "address": 0, "data_type": "float32"},
                    {"field": "active_power_kw", "address": 4, "data_type": "int16", "scale": -0.1},
                ],
                timeout_s=1.0,
                retries=1,
            )
            source = ModbusTcpSource.model_validate(data)
            driver = ModbusDriver(source)
            b.drivers.append(driver)
            mappings: list[FieldMap] = list(source.fields)
            meter = FieldDevice("pm-1", "energy_meter", mappings, "it_load", source, driver)
            at = datetime(2026, 6, 1, tzinfo=UTC)
            (reading,) = await meter.read(at)
            assert reading.values == {"energy_kwh": 230.5, "active_power_kw": pytest.approx(12.5)}
            check_values(reading.kind, reading.channel, reading.values)
            b.unit(1).fault = "silent"
            with pytest.raises(DeviceError):
                await meter.read(at)
            assert meter.errors == {"timeout": 2}
        finally:
            for driver in b.drivers:
                await driver.close()


async def test_an_unmapped_state_code_fails_the_poll_as_a_counted_bad_response() -> None:
    station = (
        ModbusUnit(1)
        .set("holding", 0, 2, "uint16")
        .set("holding", 1, -35, "int16")
        .set("holding", 2, 140, "uint16")
    )
    fields: list[dict[str, Any]] = [
        {"field": "surface_state", "address": 0, "states": {0: "dry", 2: "wet", 5: "ice"}},
        {"field": "surface_temperature", "address": 1, "data_type": "int16", "scale": 0.1},
        {"field": "water_film", "address": 2, "scale": 0.01},
    ]
    async with ModbusEmulator([station]) as emulator:
        source = ModbusTcpSource.model_validate(
            Bench(emulator, "tcp").source(1, fields, timeout_s=1.0, retries=1)
        )
        driver = ModbusDriver(source)
        device = FieldDevice("rws-1", "road_weather", list(source.fields), None, source, driver)
        at = datetime(2026, 1, 15, tzinfo=UTC)
        try:
            (reading,) = await device.read(at)
            assert reading.values == {
                "surface_state": "wet",
                "surface_temperature": pytest.approx(-3.5),
                "water_film": pytest.approx(1.4),
            }
            station.set("holding", 0, 3, "uint16")
            with pytest.raises(DeviceError) as caught:
                await device.read(at)
            assert caught.value.reason == "bad_response"
            assert "surface_state: code 3 is not in its states (0, 2, 5)" in str(caught.value)
            assert device.errors == {"bad_response": 2}, "each attempt counted"
            station.set("holding", 0, 5, "uint16")
            (reading,) = await device.read(at)
            assert reading.values["surface_state"] == "ice"
        finally:
            await driver.close()


# --- the emulator's own register layout ----------------------------------------------------


@pytest.mark.parametrize("kind", ["water_quality", "road_weather"])
def test_the_emulator_prints_a_configuration_the_gateway_accepts(kind: str, tmp_path: Path) -> None:
    unit, channel = simulated_unit(4, kind, seed=1)
    text = sample_config(
        4, kind, channel, {"type": "modbus_tcp", "host": "127.0.0.1", "port": 5020}
    )
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw-1"\nsite = "site-1"\n' + text)
    (device,) = load_gateway_config(path).devices
    assert isinstance(device.source, ModbusTcpSource)
    layout = kind_register_map(kind)
    assert [f.field for f in device.source.fields] == [r.name for r in layout]
    assert len(unit.holding) == sum(REGISTERS[r.data_type] for r in layout)
    assert len(plan_reads(device.source.fields)) == 1, "the registers lie without gaps"
    assert tomllib.loads(text)["devices"][0]["source"]["unit"] == 4


async def test_the_emulator_serves_a_state_as_its_code() -> None:
    unit, _ = simulated_unit(1, "road_weather", seed=5)
    async with ModbusEmulator([unit]) as emulator:
        source = ModbusTcpSource.model_validate(
            tomllib.loads(
                sample_config(
                    1,
                    "road_weather",
                    None,
                    {"type": "modbus_tcp", "host": "127.0.0.1", "port": emulator.port},
                )
            )["devices"][0]["source"]
        )
        driver = ModbusDriver(source)
        station = FieldDevice("rws-1", "road_weather", list(source.fields), None, source, driver)
        try:
            (reading,) = await station.read(datetime.now(UTC))
        finally:
            await driver.close()
    code = unit.holding[source.fields[1].address]
    assert source.fields[1].states is not None
    assert reading.values["surface_state"] == source.fields[1].states[code]
    assert source.fields[1].states == dict(enumerate(get_args(SurfaceState)))
    check_values("road_weather", None, reading.values)


async def test_the_emulator_serves_the_simulators_values() -> None:
    unit, channel = simulated_unit(1, "energy_meter", seed=3)
    assert channel is not None
    async with ModbusEmulator([unit]) as emulator:
        source = ModbusTcpSource.model_validate(
            tomllib.loads(
                sample_config(
                    1,
                    "energy_meter",
                    channel,
                    {"type": "modbus_tcp", "host": "127.0.0.1", "port": emulator.port},
                )
            )["devices"][0]["source"]
        )
        driver = ModbusDriver(source)
        try:
            energy, power = await driver.read_raw()
        finally:
            await driver.close()
    assert energy > 0
    assert power > 0
    check_values("energy_meter", channel, {"energy_kwh": energy, "active_power_kw": power})


_METER_RTU: dict[str, Any] = {
    "type": "modbus_rtu",
    "port": "/dev/ttyUSB0",
    "baudrate": 9600,
    "parity": "N",
    "fields": [
        {"field": "energy_kwh", "address": 0, "data_type": "float32"},
        {"field": "active_power_kw", "address": 2, "data_type": "float32"},
    ],
}
_METER_DLT645: dict[str, Any] = {
    "type": "dlt645",
    "port": "/dev/ttyUSB0",
    "address": "202401010001",
    "baudrate": 9600,
    "parity": "N",
    "fields": [
        {"field": "energy_kwh", "data_id": "00000000"},
        {"field": "active_power_kw", "data_id": "02030000"},
    ],
}


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        (_METER_DLT645, "devices.1.source.port: /dev/ttyUSB0 is used by modbus_rtu and dlt645"),
        (_METER_RTU | {"unit": 2, "baudrate": 19200}, "other line settings"),
    ],
)
def test_devices_on_one_serial_port_must_agree_at_load(
    second: dict[str, Any], problem: str
) -> None:
    def device(name: str, source: dict[str, Any]) -> dict[str, Any]:
        return {"id": name, "kind": "energy_meter", "channel": "it_load", "source": source}

    config = {
        "gateway": {"id": "gw-1", "site": "site-1"},
        "devices": [device("pm-1", _METER_RTU | {"unit": 1}), device("pm-2", second)],
    }
    with pytest.raises(ValidationError, match=problem):
        GatewaySettings.model_validate(config)
    # The same line settings and protocol: accepted.
    config["devices"] = [
        device("pm-1", _METER_RTU | {"unit": 1}),
        device("pm-2", _METER_RTU | {"unit": 2}),
    ]
    GatewaySettings.model_validate(config)
