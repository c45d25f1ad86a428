"""A gateway polling real field protocols (SDI-12, DL/T 645 and Modbus RTU on pseudo-terminals,
Modbus TCP on loopback), through broker and ingest into InfluxDB."""

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from collector.config import GatewaySettings
from collector.gateway import Gateway
from devices.emulators import dlt645_meter, sdi12_sensor
from devices.emulators.modbus_device import ModbusEmulator, ModbusUnit
from devices.emulators.pty_link import open_pty_link
from pipelines.influx_query import influx_query
from tests.gateway_harness import GATEWAY, SITE, Harness

# This kernel's ptys refuse parity and 7-bit settings (termios EINVAL): the
# lines run 8N1 here; the bytes are the same.
PTY_LINE = {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}


def _config(harness: Harness, state: Path, sdi12_port: str, meter_port: str) -> dict[str, Any]:
    return {
        "gateway": {
            "id": GATEWAY,
            "site": SITE,
            "state_dir": str(state),
            "batch_max_delay_s": 0.1,
        },
        "broker": {"port": harness.broker.port},
        "devices": [
            {
                "id": "stage-1",
                "kind": "hydrology",
                "interval_s": 0.3,
                "source": {
                    "type": "sdi12",
                    "port": sdi12_port,
                    "address": "0",
                    "timeout_s": 0.2,
                    **PTY_LINE,
                    "fields": [
                        {"field": "stage", "index": 0},
                        {"field": "discharge", "index": 1},
                        # The probe reports in tenths of a degree.
                        {"field": "water_temperature", "index": 2, "scale": 0.1},
                    ],
                },
            },
            {
                "id": "meter-it",
                "kind": "energy_meter",
                "interval_s": 0.3,
                "channel": "it_load",
                "source": {
                    "type": "dlt645",
                    "port": meter_port,
                    "address": "202401010001",
                    "timeout_s": 0.2,
                    **PTY_LINE,
                    "fields": [
                        {"field": "energy_kwh", "data_id": "00000000", "scale": 100},
                        {"field": "active_power_kw", "data_id": "02030000", "scale": 100},
                    ],
                },
            },
            {
                "id": "meter-dead",
                "kind": "energy_meter",
                "interval_s": 0.3,
                "channel": "cooling",
                "source": {
                    "type": "dlt645",
                    "port": meter_port,
                    "address": "202401010002",
                    "timeout_s": 0.1,
                    "retries": 1,
                    **PTY_LINE,
                    "fields": [
                        {"field": "energy_kwh", "data_id": "00000000"},
                        {"field": "active_power_kw", "data_id": "02030000"},
                    ],
                },
            },
        ],
    }


async def _values(harness: Harness, query: str) -> list[list[Any]]:
    series = await influx_query(harness.influx_url, query, database=harness.database)
    return [row for s in series for row in s.values]


async def test_field_devices_reach_influxdb_and_a_silent_one_is_counted(
    harness: Harness, tmp_path: Path
) -> None:
    sdi12_link, meter_link = open_pty_link(), open_pty_link()
    sensor = sdi12_sensor.EmulatedSensor(
        "0", sdi12_sensor.fixed_values({"": [2.31, 120.5, 12.0]}), ready_after_s=0.0
    )
    meters = [
        dlt645_meter.EmulatedMeter(
            "202401010001", dlt645_meter.fixed_values({"00000000": 1234.56, "02030000": 8.05})
        ),
        dlt645_meter.EmulatedMeter("202401010002", dlt645_meter.fixed_values({}), fault="silent"),
    ]
    try:
        async with (
            sdi12_sensor.Sdi12LineEmulator(sdi12_link.master_fd, [sensor]),
            dlt645_meter.Dlt645LineEmulator(meter_link.master_fd, meters),
        ):
            settings = GatewaySettings.model_validate(
                _config(harness, tmp_path / "state", sdi12_link.path, meter_link.path)
            )
            gateway = Gateway(settings)
            task = asyncio.create_task(gateway.run())
            await asyncio.sleep(3.0)
            gateway.stop()
            await task
    finally:
        sdi12_link.close()
        meter_link.close()

    await harness.settle(gateway.stats.published)
    hydro = await _values(
        harness, "SELECT stage, discharge, water_temperature, device FROM hydrology"
    )
    meter = await _values(
        harness, "SELECT energy_kwh, active_power_kw, device, circuit FROM energy_meter"
    )
    # A poll every 0.3 s for ~3 s: the live devices kept their schedule beside the dead one.
    assert len(hydro) >= 6
    assert len(meter) >= 6
    assert {(row[1], row[2], row[4]) for row in hydro} == {(2.31, 120.5, "stage-1")}
    assert all(row[3] == pytest.approx(1.2) for row in hydro)
    assert {(row[1], row[3], row[4]) for row in meter} == {(123456.0, "meter-it", "it_load")}
    assert all(row[2] == pytest.approx(805.0) for row in meter)
    assert len(hydro) + len(meter) == gateway.stats.polled
    # Every poll of the silent meter failed (after its retry), counted for it alone.
    assert gateway.stats.device_errors["meter-dead"] >= 6
    assert set(gateway.stats.device_errors) == {"meter-dead"}
    assert meters[1].requests >= 12, "each failed poll was tried twice"


WATER_QUALITY_REGISTERS: list[dict[str, Any]] = [
    # A probe with its values in input registers: temperature and pH as scaled integers.
    {
        "field": "water_temperature",
        "address": 0,
        "table": "input",
        "data_type": "int16",
        "scale": 0.01,
    },
    {"field": "ph", "address": 1, "table": "input", "data_type": "uint16", "scale": 0.01},
    {"field": "dissolved_oxygen", "address": 2, "table": "input", "data_type": "float32"},
    {"field": "conductivity", "address": 4, "table": "input", "data_type": "float32"},
    {"field": "turbidity", "address": 6, "table": "input", "data_type": "float32"},
]


def _modbus_config(harness: Harness, state: Path, tcp_port: int, rtu_port: str) -> dict[str, Any]:
    rtu = {"type": "modbus_rtu", "port": rtu_port, "timeout_s": 1.0, **PTY_LINE}
    return {
        "gateway": {"id": GATEWAY, "site": SITE, "state_dir": str(state), "batch_max_delay_s": 0.1},
        "broker": {"port": harness.broker.port},
        "devices": [
            {
                "id": "pm-it-1",
                "kind": "energy_meter",
                "interval_s": 0.3,
                "channel": "it_load",
                "source": {
                    "type": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": tcp_port,
                    "unit": 1,
                    "timeout_s": 1.0,
                    "fields": [
                        {
                            "field": "energy_kwh",
                            "address": 0,
                            "data_type": "float32",
                            "word_order": "little",
                        },
                        # The meter counts in 100 W.
                        {
                            "field": "active_power_kw",
                            "address": 2,
                            "data_type": "int16",
                            "scale": 0.1,
                        },
                    ],
                },
            },
            {
                "id": "wq-1",
                "kind": "water_quality",
                "interval_s": 0.3,
                "source": rtu | {"unit": 1, "fields": WATER_QUALITY_REGISTERS},
            },
            {
                "id": "wq-dead",
                "kind": "water_quality",
                "interval_s": 0.3,
                "source": rtu
                | {"unit": 2, "timeout_s": 0.1, "retries": 1, "fields": WATER_QUALITY_REGISTERS},
            },
        ],
    }


@pytest.mark.slow
async def test_modbus_devices_reach_influxdb_and_a_silent_one_is_counted(
    harness: Harness, tmp_path: Path
) -> None:
    meter = (
        ModbusUnit(1)
        .set("holding", 0, 98765.5, "float32", "little")
        .set("holding", 2, 8051, "int16")
    )
    probe = (
        ModbusUnit(1)
        .set("input", 0, 1234, "int16")
        .set("input", 1, 815, "uint16")
        .set("input", 2, 7.5, "float32")
        .set("input", 4, 412.0, "float32")
        .set("input", 6, 3.25, "float32")
    )
    dead = ModbusUnit(2, fault="silent").set("input", 0, 0, "int16")
    async with (
        ModbusEmulator([meter]) as tcp,
        ModbusEmulator([probe, dead], transport="rtu") as rtu,
    ):
        settings = GatewaySettings.model_validate(
            _modbus_config(harness, tmp_path / "state", tcp.port, rtu.path)
        )
        gateway = Gateway(settings)
        task = asyncio.create_task(gateway.run())
        await asyncio.sleep(3.0)
        gateway.stop()
        await task

    await harness.settle(gateway.stats.published)
    power = await _values(
        harness, "SELECT energy_kwh, active_power_kw, device, circuit FROM energy_meter"
    )
    water = await _values(
        harness,
        "SELECT water_temperature, ph, dissolved_oxygen, conductivity, turbidity, device "
        "FROM water_quality",
    )
    # A poll every 0.3 s for ~3 s: the live devices kept their schedule beside the dead one.
    assert len(power) >= 6
    assert len(water) >= 6
    assert {(row[1], row[3], row[4]) for row in power} == {(98765.5, "pm-it-1", "it_load")}
    assert all(row[2] == pytest.approx(805.1) for row in power)
    assert {tuple(row[3:]) for row in water} == {(7.5, 412.0, 3.25, "wq-1")}
    assert all(row[1:3] == [pytest.approx(12.34), pytest.approx(8.15)] for row in water)
    assert len(power) + len(water) == gateway.stats.polled
    # Every poll of the silent unit failed (after its retry), counted for it alone.
    assert gateway.stats.device_errors["wq-dead"] >= 6
    assert set(gateway.stats.device_errors) == {"wq-dead"}
    assert dead.requests >= 12, "each failed poll was tried twice"


def _road_weather_source(port: int, unit: int) -> dict[str, Any]:
    # A station with its values as scaled integers and its surface state as a code.
    fields: list[dict[str, Any]] = [
        {"field": "surface_temperature", "address": 0, "data_type": "int16", "scale": 0.1},
        {
            "field": "surface_state",
            "address": 1,
            "states": {0: "dry", 1: "moist", 2: "wet", 3: "slush", 4: "snow", 5: "ice"},
        },
        {"field": "water_film", "address": 2, "scale": 0.01},
        {"field": "visibility", "address": 3},
        {"field": "air_temperature", "address": 4, "data_type": "int16", "scale": 0.1},
        {"field": "relative_humidity", "address": 5},
        {"field": "wind_speed", "address": 6, "scale": 0.1},
    ]
    return {
        "type": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit": unit,
        "timeout_s": 1.0,
        "retries": 1,
        "fields": fields,
    }


def _road_weather_unit(unit: int, surface_code: int) -> ModbusUnit:
    return (
        ModbusUnit(unit)
        .set("holding", 0, -42, "int16")
        .set("holding", 1, surface_code, "uint16")
        .set("holding", 2, 35, "uint16")
        .set("holding", 3, 850, "uint16")
        .set("holding", 4, -61, "int16")
        .set("holding", 5, 93, "uint16")
        .set("holding", 6, 47, "uint16")
    )


@pytest.mark.slow
async def test_a_road_weather_station_reports_its_surface_state_as_a_string(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    icy = _road_weather_unit(1, 5)
    # Code 9 is not in the station's table (a firmware with a new state, say).
    unknown = _road_weather_unit(2, 9)
    caplog.set_level(logging.WARNING, "ecotel.gateway")
    async with ModbusEmulator([icy, unknown]) as emulator:
        settings = GatewaySettings.model_validate(
            {
                "gateway": {
                    "id": GATEWAY,
                    "site": SITE,
                    "state_dir": str(tmp_path / "state"),
                    "batch_max_delay_s": 0.1,
                },
                "broker": {"port": harness.broker.port},
                "devices": [
                    {
                        "id": "rws-1",
                        "kind": "road_weather",
                        "interval_s": 0.3,
                        "source": _road_weather_source(emulator.port, 1),
                    },
                    {
                        "id": "rws-2",
                        "kind": "road_weather",
                        "interval_s": 0.3,
                        "source": _road_weather_source(emulator.port, 2),
                    },
                ],
            }
        )
        gateway = Gateway(settings)
        task = asyncio.create_task(gateway.run())
        await asyncio.sleep(2.0)
        gateway.stop()
        await task

    await harness.settle(gateway.stats.published)
    rows = await _values(
        harness,
        "SELECT surface_state, surface_temperature, water_film, visibility, air_temperature, "
        "relative_humidity, wind_speed, device FROM road_weather",
    )
    assert len(rows) >= 4
    assert len(rows) == gateway.stats.polled
    assert {(row[1], row[4], row[6], row[8]) for row in rows} == {("ice", 850.0, 93.0, "rws-1")}
    assert all(
        row[2:4] == [pytest.approx(-4.2), pytest.approx(0.35)]
        and row[5] == pytest.approx(-6.1)
        and row[7] == pytest.approx(4.7)
        for row in rows
    )
    # Every poll of the station with an unknown code failed; nothing was made up for it.
    assert gateway.stats.device_errors["rws-2"] >= 4
    assert set(gateway.stats.device_errors) == {"rws-2"}
    assert unknown.requests >= 8, "each failed poll was tried twice"
    assert "device rws-2: poll failed (1 in a row): bad_response: surface_state: code 9" in (
        caplog.text
    )
