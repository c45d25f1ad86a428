"""Simulated data-center meters: energy counters per circuit and rack inlet conditions."""

import math
from typing import Annotated

from pydantic import AfterValidator, Field

from devices.datacenter import CIRCUITS, EnergyMeter, RackEnvironment
from devices.simulators.base import (
    DAY_S,
    BaseSimulator,
    Channels,
    Noise,
    SimulatorOptions,
    Values,
    annual_wave,
    local_hour,
)
from devices.simulators.climate import Climate

# Outdoor air of a western "East Data, West Computing" hub (Xining, Qinghai): cool enough for
# free cooling most of the year, which is how such sites reach a PUE near 1.2.
_HUB = {"altitude_m": 2_300.0, "latitude": 36.6, "longitude": 101.8}

# Efficiencies along the power chain from the utility feed to the IT equipment.
_UPS_EFFICIENCY = 0.96
_PDU_EFFICIENCY = 0.985  # PDU transformers and distribution
_CABLE_EFFICIENCY = 0.99  # PDU output to the IT equipment's inlets

_MAX_STEP_S = 900.0  # integrate power over at most 15 min at a time
_MAX_STEPS = 2_000


def _known_circuits(circuits: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [c for c in circuits if c not in CIRCUITS]
    if unknown:
        raise ValueError(f"unknown circuit {', '.join(unknown)}; known: {', '.join(CIRCUITS)}")
    return circuits


class EnergyMeterOptions(SimulatorOptions):
    """The metered circuits and the size of the IT load."""

    circuits: Annotated[Channels, AfterValidator(_known_circuits)] = (
        "utility",
        "ups_output",
        "it_load",
        "cooling",
    )
    it_load_kw: float = Field(800.0, gt=0, le=100_000, description="Mean IT power (kW)")


class EnergyMeterSimulator(BaseSimulator[EnergyMeterOptions]):
    """A multi-circuit energy meter; channel = circuit. Options: ``circuits`` (any of
    devices.datacenter.CIRCUITS; default utility, ups_output, it_load, cooling) and
    ``it_load_kw`` (default 800).

    IT power has a mild daily cycle; cooling grows with the outdoor temperature (free cooling in
    the cold months); utility = UPS input + cooling + lighting, so PUE runs about 1.2 in winter
    and 1.35 in summer. Counters start at the first sample's power times the meter's hours in
    service (drawn per device), then add the power integrated over the time since the latest
    sample: one stamped earlier than that adds nothing, so counters never fall whatever the
    clock does, and a clock jumping forward adds the whole gap, as a real meter would have.
    """

    values_model = EnergyMeter
    options_model = EnergyMeterOptions

    def __init__(
        self, device: str, *, seed: int, interval_s: float, options: EnergyMeterOptions
    ) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = Climate(self.noise, **_HUB)
        self.renewable_share = 0.4 + 0.4 * self.noise.unit("renewable")
        self._energy_kwh: dict[str, float] = {}
        self._latest_t: float | None = None

    def power_kw(self, t: float) -> dict[str, float]:
        """Active power of every circuit the model knows, metered or not."""
        n = self.noise
        hour = local_hour(t)
        it = self.options.it_load_kw * (
            1.0
            + 0.04 * math.cos(2.0 * math.pi * (hour - 15.0) / 24.0)
            + 0.02 * n.smooth("it-load", t, 6 * 3_600)
            + 0.005 * n.white("it-load", t)
        )
        outdoor = self.climate.sky(t).air_temperature
        # Free cooling covers the cold months; chillers take over as the air warms.
        cooling_share = (
            0.11 + 0.005 * max(0.0, outdoor + 10.0) + 0.0003 * max(0.0, outdoor - 15.0) ** 2
        )
        cooling = it * cooling_share * (1.0 + 0.01 * n.white("cooling", t))
        pdu_output = it / _CABLE_EFFICIENCY
        ups_output = pdu_output / _PDU_EFFICIENCY
        office_hours = 1.0 if 8.0 <= hour < 18.0 else 0.0
        lighting = self.options.it_load_kw * (0.004 + 0.003 * office_hours)
        utility = ups_output / _UPS_EFFICIENCY + cooling + lighting
        # Solar by day, wind and hydro around the clock; never more than the site draws.
        sun = max(0.0, math.cos(2.0 * math.pi * (hour - 13.0) / 24.0))
        share = min(
            1.0,
            self.renewable_share
            + (1.0 - self.renewable_share) * sun * (0.5 + 0.5 * annual_wave(t, 172.0) ** 2)
            + 0.1 * n.smooth("wind-power", t, DAY_S),
        )
        return {
            "utility": utility,
            "renewable": utility * max(0.0, share),
            "ups_output": ups_output,
            "pdu_output": pdu_output,
            "it_load": it,
            "cooling": cooling,
            "lighting": lighting,
        }

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        power = self.power_kw(t)
        if self._latest_t is None:
            hours_in_service = 2_000.0 + 38_000.0 * self.noise.unit("in-service")
            for circuit in self.options.circuits:
                self._energy_kwh[circuit] = power[circuit] * hours_in_service
            self._latest_t = t
        elif t > self._latest_t:
            for circuit, kwh in self._integrate(self._latest_t, t, power).items():
                self._energy_kwh[circuit] += kwh
            self._latest_t = t
        return [
            (circuit, {"energy_kwh": self._energy_kwh[circuit], "active_power_kw": power[circuit]})
            for circuit in self.options.circuits
        ]

    def _integrate(
        self, start: float, end: float, power_at_end: dict[str, float]
    ) -> dict[str, float]:
        """kWh of each metered circuit from ``start`` to ``end``: trapezoids over steps short
        enough to follow the daily cycle, so a day of hourly samples still adds up right."""
        steps = min(_MAX_STEPS, math.ceil((end - start) / _MAX_STEP_S))
        step_s = (end - start) / steps
        totals = dict.fromkeys(self.options.circuits, 0.0)
        before = self.power_kw(start)
        for i in range(1, steps + 1):
            after = power_at_end if i == steps else self.power_kw(start + i * step_s)
            for circuit in totals:
                totals[circuit] += (before[circuit] + after[circuit]) / 2.0 * step_s / 3_600.0
            before = after
        return totals


class RackOptions(SimulatorOptions):
    """The racks whose inlets are measured."""

    racks: Channels = ("A01", "A02", "A03", "A04")


class RackEnvironmentSimulator(BaseSimulator[RackOptions]):
    """Temperature and humidity at rack inlets; channel = rack. Option: ``racks`` (default
    A01..A04).

    Each rack sits at its own spot in the cold aisle (some run warmer), drifts with the load
    and the air handlers, and about once a month has a few hours' excursion of a few degrees
    (a cooling unit in maintenance). Humidity follows the season: drier winter air outside.
    """

    values_model = RackEnvironment
    options_model = RackOptions

    def __init__(self, device: str, *, seed: int, interval_s: float, options: RackOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.racks: list[tuple[str, Noise, float]] = []
        for rack in options.racks:
            noise = self.noise.child(rack)
            self.racks.append((rack, noise, 21.0 + 3.0 * noise.unit("position")))

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        summer = annual_wave(t, 201.0)
        load = math.cos(2.0 * math.pi * (local_hour(t) - 15.0) / 24.0)
        readings: list[tuple[str | None, Values]] = []
        for rack, noise, setpoint in self.racks:
            excursion, severity = noise.episode(
                "cooling-fault",
                t,
                block_days=28,
                probability=0.8,
                start_hours=(0.0, 24.0),
                duration_hours=(1.0, 4.0),
            )
            temperature = (
                setpoint
                + 0.4 * load
                + 0.7 * noise.smooth("air-handler", t, 3 * 3_600)
                + (1.5 + 3.5 * severity) * excursion
                + 0.1 * noise.white("inlet", t)
            )
            humidity = (
                45.0
                + 7.0 * summer
                + 4.0 * noise.smooth("humidity", t, 12 * 3_600)
                + 2.0 * noise.signed("humidity-offset")
                - 1.5 * excursion  # warmer air holds the same water at lower relative humidity
                + 0.5 * noise.white("humidity", t)
            )
            readings.append(
                (rack, {"inlet_temperature": temperature, "relative_humidity": humidity})
            )
        return readings
