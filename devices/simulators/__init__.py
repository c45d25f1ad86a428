"""Deterministic, seeded simulators with believable values for every kind of the device catalog:
gauges are functions of (seed, device, kind, options, time); energy counters are never-falling functions of time, so a restart reads on where the meter got to."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import TypeAdapter

from devices.identifiers import Identifier
from devices.reading import Reading
from devices.simulators.base import BaseSimulator
from devices.simulators.datacenter import EnergyMeterSimulator, RackEnvironmentSimulator
from devices.simulators.ecology import (
    HydrologySimulator,
    SoilProfileSimulator,
    StationHealthSimulator,
    WaterQualitySimulator,
    WeatherSimulator,
)
from devices.simulators.highway import RoadWeatherSimulator, TrafficDetectorSimulator

__all__ = ["SIMULATORS", "Simulator", "make_simulator"]


class Simulator(Protocol):
    """A simulated device: its readings at any instant, as the real device would report them."""

    kind: str
    device: str

    def sample(self, at: datetime) -> list[Reading]:
        """Readings at the aware datetime ``at``: one per channel (one for kinds without),
        each with time=at (in UTC) and values valid for devices.catalog.check_values."""
        ...


SIMULATORS: Mapping[str, type[BaseSimulator[Any]]] = {
    cls.values_model.kind: cls
    for cls in (
        WaterQualitySimulator,
        HydrologySimulator,
        WeatherSimulator,
        SoilProfileSimulator,
        StationHealthSimulator,
        TrafficDetectorSimulator,
        RoadWeatherSimulator,
        EnergyMeterSimulator,
        RackEnvironmentSimulator,
    )
}
"""The simulator class of each catalog kind; its docstring lists the options."""

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def make_simulator(
    kind: str,
    device: str,
    *,
    seed: int = 0,
    interval_s: float = 10.0,
    options: Mapping[str, object] | None = None,
) -> Simulator:
    """A simulator of ``kind`` for ``device``.

    ``interval_s`` is how often the device will be sampled (what a precipitation amount or a
    traffic count covers). ``options`` are per kind (see each class in SIMULATORS):

    - water_quality, hydrology, weather, station_health, road_weather: ``altitude_m`` (4,500),
      ``latitude`` (34.2), ``longitude`` (92.4)
    - soil_profile: those plus ``depths_cm`` (10, 40, 80, 160, 320)
    - traffic_detector: ``lanes`` ("1".."4"); needs interval_s of 1-3,600 s
    - energy_meter: ``circuits`` (utility, ups_output, it_load, cooling), ``it_load_kw`` (800)
    - rack_environment: ``racks`` ("A01".."A04")

    Raises ValueError for a kind with no simulator or an unusable interval, and pydantic's
    ValidationError (a ValueError too) naming the key for a bad device name or option.
    """
    try:
        cls = SIMULATORS[kind]
    except KeyError:
        raise ValueError(
            f"no simulator for device kind {kind!r}; known: {', '.join(SIMULATORS)}"
        ) from None
    if not 0 < interval_s <= 86_400:
        raise ValueError(f"{kind} simulator: interval_s must be in (0, 86400], got {interval_s!r}")
    _IDENTIFIER.validate_python(device)
    settings = cls.options_model.model_validate(dict(options or {}))
    simulator: Simulator = cls(device, seed=seed, interval_s=interval_s, options=settings)
    return simulator
