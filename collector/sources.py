"""Where a configured device's readings come from: one adapter per source type."""

from datetime import datetime
from typing import Protocol

from collector.config import DeviceSettings, SimulatorSource
from collector.field_device import FieldDevice
from devices import Reading
from devices.drivers.base import Driver
from devices.drivers.dlt645 import Dlt645Driver, Dlt645Source
from devices.drivers.modbus import ModbusDriver, ModbusRtuSource, ModbusTcpSource
from devices.drivers.sdi12 import Sdi12Driver, Sdi12Source
from devices.simulators import Simulator, make_simulator


class ReadingSource(Protocol):
    """A device the gateway can poll: one call, the readings of that instant."""

    async def read(self, at: datetime) -> list[Reading]: ...

    async def close(self) -> None: ...


class SimulatedDevice:
    """A device played by the catalog's deterministic simulator."""

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    async def read(self, at: datetime) -> list[Reading]:
        return self._simulator.sample(at)

    async def close(self) -> None:
        return None


def open_source(device: DeviceSettings) -> ReadingSource:
    """The reading source a device's configuration describes."""
    source = device.source
    if isinstance(source, SimulatorSource):
        return SimulatedDevice(
            make_simulator(
                device.kind,
                device.id,
                seed=source.seed,
                interval_s=device.interval_s,
                options=source.options,
            )
        )
    driver: Driver
    if isinstance(source, Sdi12Source):
        driver = Sdi12Driver(source)
    elif isinstance(source, Dlt645Source):
        driver = Dlt645Driver(source)
    elif isinstance(source, ModbusTcpSource | ModbusRtuSource):
        driver = ModbusDriver(source)
    else:  # pragma: no cover - the config union and this chain grow together
        raise ValueError(f"device {device.id}: unsupported source {source!r}")
    return FieldDevice(device.id, device.kind, list(source.fields), device.channel, source, driver)
