"""Where a configured device's readings come from: one adapter per source type."""

from datetime import datetime
from typing import Protocol

from collector.config import DeviceSettings, SimulatorSource
from devices import Reading
from devices.simulators import Simulator, make_simulator


class ReadingSource(Protocol):
    """A device the gateway can poll: one call, the readings of that instant."""

    async def read(self, at: datetime) -> list[Reading]: ...


class SimulatedDevice:
    """A device played by the catalog's deterministic simulator."""

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    async def read(self, at: datetime) -> list[Reading]:
        return self._simulator.sample(at)


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
    raise ValueError(f"device {device.id}: unsupported source {source!r}")
