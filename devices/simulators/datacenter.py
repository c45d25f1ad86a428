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

# The counters: a meter's reading is a function of time, so a gateway restarted (or down for a
# day) reads on where the meter got to. Counting from a fixed date needs every day since, so the
# energy is estimated from a few instants per stretch, coarsely over 32-day periods (a decade
# costs milliseconds), then day by day within the period, then hour by hour within the day; each
# finer level is scaled to land on the coarser one's values, so the counter never jumps.
_REFERENCE_DAY = 19_723  # 2024-01-01 (UTC days since 1970), where hours in service count to
_PERIOD_DAYS = 32
_PERIOD_ESTIMATES = 16
_DAY_ESTIMATES = 4
_HOUR_S = 3_600.0


def _known_circuits(circuits: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [c for c in circuits if c not in CIRCUITS]
    if unknown:
        raise ValueError(f"unknown circuit {', '.join(unknown)}; known: {', '.join(CIRCUITS)}")
    return circuits


def _shares(
    start: dict[str, float], end: dict[str, float], parts: list[dict[str, float]]
) -> list[dict[str, float]]:
    """The counters at the boundaries of consecutive parts of a stretch that runs from ``start``
    to ``end``: each part adds its estimate's share of the stretch's energy."""
    totals = {c: sum(part[c] for part in parts) for c in start}
    done = dict.fromkeys(start, 0.0)
    boundaries = [start]
    for part in parts[:-1]:
        for c in start:
            done[c] += part[c]
        boundaries.append({c: start[c] + (end[c] - start[c]) * done[c] / totals[c] for c in start})
    boundaries.append(end)
    return boundaries


class _Hour:
    """One hour of a counter: the power as it begins and ends (linear in between) and the
    counters when it begins, scaled so the hour ends where the next begins."""

    def __init__(self, begins_kw: dict[str, float], ends_kw: dict[str, float]) -> None:
        self.begins_kw = begins_kw
        self.ends_kw = ends_kw
        self.start: dict[str, float] = {}
        self.scale: dict[str, float] = {}

    def kwh(self, circuit: str, f: float) -> float:
        """Energy of the first fraction ``f`` of the hour, unscaled."""
        a, b = self.begins_kw[circuit], self.ends_kw[circuit]
        return a * f + (b - a) * f * f / 2.0

    def scale_to(self, start: dict[str, float], end: dict[str, float]) -> None:
        self.start = start
        self.scale = {
            c: (end[c] - start[c]) / whole if (whole := self.kwh(c, 1.0)) > 0 else 0.0
            for c in start
        }


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
    and 1.35 in summer. Each counter is a function of time, like a real meter that keeps
    counting while nobody reads it: on 1 January 2024 it stood at the circuit's power times the
    meter's hours in service (2,000-40,000, drawn per device); it rises by the circuit's energy
    since (and reads 0 before the meter was commissioned), so a simulator started later reads
    the same counter at the same instant. Within a day it follows the hourly power; over a day
    it adds the day's energy as estimated from the season and the passing weather, within 1%
    of the power's own for the IT circuits and 5% for cooling and renewables. A sample stamped
    earlier than the latest repeats the latest counter: counters never fall whatever the clock
    does.
    """

    values_model = EnergyMeter
    options_model = EnergyMeterOptions

    def __init__(
        self, device: str, *, seed: int, interval_s: float, options: EnergyMeterOptions
    ) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = Climate(self.noise, **_HUB)
        self.renewable_share = 0.4 + 0.4 * self.noise.unit("renewable")
        hours_in_service = 2_000.0 + 38_000.0 * self.noise.unit("in-service")
        per_hour = {c: kwh / (24.0 * _PERIOD_DAYS) for c, kwh in self._period_kwh(0).items()}
        self._at_reference = {c: kw * hours_in_service for c, kw in per_hour.items()}
        # Where the walk over the periods stands: period and energy since the reference.
        self._walk_period = 0
        self._walk_kwh = dict.fromkeys(self.options.circuits, 0.0)
        self._period: int | None = None
        self._day_starts: list[dict[str, float]] = []  # the counters at each midnight of _period
        self._day: int | None = None
        self._hours: list[_Hour] = []
        self._latest_kwh: dict[str, float] = {}

    def power_kw(self, t: float) -> dict[str, float]:
        """Active power of every circuit the model knows, metered or not."""
        n = self.noise
        it = self._it_kw(t) + self.options.it_load_kw * 0.005 * n.white("it-load", t)
        outdoor = self.climate.sky(t).air_temperature
        office_hours = 1.0 if 8.0 <= local_hour(t) < 18.0 else 0.0
        return self._circuits_kw(t, it, outdoor, office_hours, 1.0 + 0.01 * n.white("cooling", t))

    def _it_kw(self, t: float) -> float:
        return self.options.it_load_kw * (
            1.0
            + 0.04 * math.cos(2.0 * math.pi * (local_hour(t) - 15.0) / 24.0)
            + 0.02 * self.noise.smooth("it-load", t, 6 * 3_600)
        )

    def _circuits_kw(
        self, t: float, it: float, outdoor: float, office_hours: float, cooling_jitter: float
    ) -> dict[str, float]:
        """Every circuit's power from the IT load, the outdoor air temperature and whether the
        offices are lit (0..1)."""
        hour = local_hour(t)
        # Free cooling covers the cold months; chillers take over as the air warms.
        cooling_share = (
            0.11 + 0.005 * max(0.0, outdoor + 10.0) + 0.0003 * max(0.0, outdoor - 15.0) ** 2
        )
        cooling = it * cooling_share * cooling_jitter
        pdu_output = it / _CABLE_EFFICIENCY
        ups_output = pdu_output / _PDU_EFFICIENCY
        lighting = self.options.it_load_kw * (0.004 + 0.003 * office_hours)
        utility = ups_output / _UPS_EFFICIENCY + cooling + lighting
        # Solar by day, wind and hydro around the clock; never more than the site draws.
        sun = max(0.0, math.cos(2.0 * math.pi * (hour - 13.0) / 24.0))
        share = min(
            1.0,
            self.renewable_share
            + (1.0 - self.renewable_share) * sun * (0.5 + 0.5 * annual_wave(t, 172.0) ** 2)
            + 0.1 * self.noise.smooth("wind-power", t, DAY_S),
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

    def _estimated_kwh(self, instants: list[float], span_s: float) -> dict[str, float]:
        """A cheap estimate of each metered circuit's energy over ``span_s``: the mean power at
        ``instants`` (spread over the times of day), the outdoor air as Climate.sky makes it
        (season, passing weather systems, a typical day's range) without cloud and jitter,
        which a day's energy barely notices, and the offices lit 10 hours of every 24."""
        totals = dict.fromkeys(self.options.circuits, 0.0)
        for t in instants:
            outdoor = (
                self.climate.mean_air_temperature
                + 12.5 * annual_wave(t, 201.0)
                + self.climate.synoptic(t)
                + 6.0 * math.cos(2.0 * math.pi * (self.climate.solar_hour(t) - 14.5) / 24.0)
            )
            power = self._circuits_kw(t, self._it_kw(t), outdoor, 10.0 / 24.0, 1.0)
            for circuit in totals:
                totals[circuit] += power[circuit] / len(instants) * span_s / 3_600.0
        return totals

    def _period_kwh(self, period: int) -> dict[str, float]:
        """Estimated energy of a 32-day period (0 starts on the reference date): every second
        day, six hours later in the day each time."""
        start = (_REFERENCE_DAY + period * _PERIOD_DAYS) * DAY_S
        step_s = _PERIOD_DAYS * DAY_S / _PERIOD_ESTIMATES
        instants = [
            start + i * step_s + (i % 4 + 0.5) * DAY_S / 4 for i in range(_PERIOD_ESTIMATES)
        ]
        return self._estimated_kwh(instants, _PERIOD_DAYS * DAY_S)

    def _day_kwh(self, day: int) -> dict[str, float]:
        step_s = DAY_S / _DAY_ESTIMATES
        return self._estimated_kwh(
            [day * DAY_S + (i + 0.5) * step_s for i in range(_DAY_ESTIMATES)], DAY_S
        )

    def _period_start_kwh(self, period: int) -> dict[str, float]:
        """The counters at the start of a period: 0 until the meter was commissioned."""
        while self._walk_period < period:
            for circuit, kwh in self._period_kwh(self._walk_period).items():
                self._walk_kwh[circuit] += kwh
            self._walk_period += 1
        while self._walk_period > period:
            self._walk_period -= 1
            for circuit, kwh in self._period_kwh(self._walk_period).items():
                self._walk_kwh[circuit] -= kwh
        return {
            c: max(0.0, self._at_reference[c] + self._walk_kwh[c]) for c in self.options.circuits
        }

    def _enter_period(self, period: int) -> None:
        """The counters at each midnight of the period: its energy shared by the days' estimates."""
        start, end = self._period_start_kwh(period), self._period_start_kwh(period + 1)
        first_day = _REFERENCE_DAY + period * _PERIOD_DAYS
        days = [self._day_kwh(first_day + i) for i in range(_PERIOD_DAYS)]
        self._day_starts = _shares(start, end, days)
        self._period = period

    def _enter_day(self, day: int) -> None:
        """The day's power hour by hour (just after each hour begins and just before it ends, so
        the offices' lights go on and off on the hour) and the counters at each hour."""
        period, day_in_period = divmod(day - _REFERENCE_DAY, _PERIOD_DAYS)
        if period != self._period:
            self._enter_period(period)
        self._hours = []
        estimates = []
        for h in range(round(DAY_S / _HOUR_S)):
            begins = day * DAY_S + h * _HOUR_S
            hour = _Hour(self.power_kw(begins), self.power_kw(begins + _HOUR_S - 0.001))
            self._hours.append(hour)
            estimates.append({c: hour.kwh(c, 1.0) for c in self.options.circuits})
        starts = _shares(
            self._day_starts[day_in_period], self._day_starts[day_in_period + 1], estimates
        )
        for hour, start, end in zip(self._hours, starts, starts[1:], strict=False):
            hour.scale_to(start, end)
        self._day = day

    def counters_kwh(self, t: float) -> dict[str, float]:
        """Each metered circuit's counter at ``t``, the same whenever the simulator started."""
        day = math.floor(t / DAY_S)
        if day != self._day:
            self._enter_day(day)
        into_day = t - day * DAY_S
        hour = self._hours[min(math.floor(into_day / _HOUR_S), len(self._hours) - 1)]
        f = (into_day % _HOUR_S) / _HOUR_S
        return {c: hour.start[c] + hour.kwh(c, f) * hour.scale[c] for c in self.options.circuits}

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        power = self.power_kw(t)
        for circuit, kwh in self.counters_kwh(t).items():
            self._latest_kwh[circuit] = max(kwh, self._latest_kwh.get(circuit, 0.0))
        return [
            (circuit, {"energy_kwh": self._latest_kwh[circuit], "active_power_kw": power[circuit]})
            for circuit in self.options.circuits
        ]


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
