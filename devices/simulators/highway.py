"""Simulated smart-highway roadside units: per-lane traffic detectors and road-weather stations."""

import math
from dataclasses import dataclass
from statistics import NormalDist

from devices.highway import LANE_CAPACITY_PER_HOUR, RoadWeather, TrafficDetector
from devices.simulators.base import (
    DAY_S,
    BaseSimulator,
    Channels,
    SimulatorOptions,
    Values,
    clamp,
    is_weekend,
    local_hour,
    periodic_bump,
)
from devices.simulators.climate import SiteOptions


class TrafficOptions(SimulatorOptions):
    """The lanes a detector covers, numbered from the median: the first is the fast lane, the
    last the slow lane that the trucks keep to."""

    lanes: Channels = ("1", "2", "3", "4")


class TrafficDetectorSimulator(BaseSimulator[TrafficOptions]):
    """A radar or loop detector counting each lane over the sampling interval (1-3,600 s, rounded
    to whole seconds); channel = lane. Option: ``lanes`` (default "1".."4").

    Demand has a morning rush near 08:00 and a longer evening one near 18:00 (UTC+8), a lighter
    morning at weekends and almost nothing before dawn; counts are Poisson around it. Speed
    falls and occupancy rises as the flow nears the lane's capacity.
    """

    values_model = TrafficDetector
    options_model = TrafficOptions

    def __init__(
        self, device: str, *, seed: int, interval_s: float, options: TrafficOptions
    ) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        counted_s = round(interval_s)
        if not 1 <= counted_s <= 3_600:
            raise ValueError(
                f"{self.kind} counts over 1-3,600 s; a sampling interval of {interval_s:g} s "
                "cannot be one counting interval"
            )
        self.counted_s = float(counted_s)
        # A lane cannot pass more than its capacity, whatever the dice say (the catalog's check
        # allows some headroom above this).
        self.max_volume = math.ceil(LANE_CAPACITY_PER_HOUR * self.counted_s / 3_600)
        self.peak_flow = 600.0 + 900.0 * self.noise.unit("peak-flow")  # veh/h per lane
        last = max(1, len(options.lanes) - 1)
        self.lanes = [
            _Lane(
                name=lane,
                share=0.8 + 0.3 * self.noise.unit("share", lane),
                free_speed=112.0 - 24.0 * i / last + 4.0 * self.noise.signed("free-speed", lane),
                # Effective vehicle plus detector length (m): more trucks further out.
                length_m=5.5 + 4.0 * i / last,
            )
            for i, lane in enumerate(options.lanes)
        ]

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        middle = t - self.counted_s / 2.0  # the count covers the interval ending at t
        demand = _demand(local_hour(middle), is_weekend(middle)) * (
            1.0 + 0.1 * self.noise.smooth("demand", middle, DAY_S)
        )
        readings: list[tuple[str | None, Values]] = []
        for lane in self.lanes:
            flow = self.peak_flow * lane.share * demand  # expected veh/h
            u = self.noise.unit("count", lane.name, round(t * 1_000))
            volume = min(self.max_volume, _poisson(flow * self.counted_s / 3_600.0, u))
            if volume == 0:
                # The catalog requires a speed; with no vehicle there is none to average.
                speed = occupancy = 0.0
            else:
                speed = lane.free_speed * (
                    1.0 - 0.45 * math.pow(flow / LANE_CAPACITY_PER_HOUR, 2.5)
                )
                # The mean of few vehicles scatters more.
                speed += 8.0 / math.sqrt(volume) * self.noise.white(f"speed-{lane.name}", t)
                speed = max(5.0, speed)
                measured_flow = volume * 3_600.0 / self.counted_s
                occupancy = min(100.0, 100.0 * measured_flow * lane.length_m / 1_000.0 / speed)
            readings.append(
                (
                    lane.name,
                    {
                        "interval_s": self.counted_s,
                        "volume": float(volume),
                        "mean_speed": speed,
                        "occupancy": occupancy,
                    },
                )
            )
        return readings


@dataclass(frozen=True)
class _Lane:
    name: str
    share: float
    free_speed: float
    length_m: float


def _demand(hour: float, weekend: bool) -> float:
    """Share of the peak hourly flow at a local hour."""
    morning = (0.4 if weekend else 0.8) * periodic_bump(hour, 8.0, 1.0, 24.0)
    evening = 0.85 * periodic_bump(hour, 18.0, 1.4, 24.0)
    midday = (0.55 if weekend else 0.45) * periodic_bump(hour, 13.0, 3.5, 24.0)
    return 0.04 + morning + evening + midday


def _poisson(mean: float, u: float) -> int:
    """The Poisson count whose cumulative probability first reaches ``u`` (inverse CDF), so one
    hashed uniform gives one count; a normal approximation for large means."""
    if mean <= 0.0:
        return 0
    if mean > 50.0:
        return max(0, round(NormalDist(mean, math.sqrt(mean)).inv_cdf(clamp(u, 1e-12, 1 - 1e-12))))
    k = 0
    term = cumulative = math.exp(-mean)
    while u > cumulative and k < 200:
        k += 1
        term *= mean / k
        cumulative += term
    return k


class RoadWeatherSimulator(BaseSimulator[SiteOptions]):
    """A road-weather station beside a plateau highway (by default G109 at Tuotuohe). Options:
    the site options of the ecology simulators (``altitude_m``, ``latitude``, ``longitude``).

    The surface warms above the air in sunshine and cools below it at night; rain leaves a water
    film that dries within a couple of hours; a wet surface at or below 0 C reads ice. Fog banks
    come before dawn on about one night in four, most thin, some under 200 m.
    """

    values_model = RoadWeather
    options_model = SiteOptions

    def __init__(self, device: str, *, seed: int, interval_s: float, options: SiteOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = options.climate(self.noise)

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        n = self.noise
        sky = self.climate.sky(t)
        # Asphalt soaks up sunshine; at night it radiates to the sky, more so when the sky is
        # clear; wind ties the surface back to the air.
        heating = 16.0 * sky.solar_radiation / 1_100.0
        cooling = (1.0 + 3.0 * (1.0 - sky.cloud)) * max(0.0, 1.0 - sky.solar_radiation / 150.0)
        surface = (
            sky.air_temperature
            + (heating - cooling) / (1.0 + sky.wind_speed / 8.0)
            + 0.1 * n.white("surface", t)
        )
        fog, severity = n.episode(
            "fog",
            t,
            block_days=3,
            probability=0.7,
            start_hours=(1.0, 6.0),
            duration_hours=(2.0, 6.0),
        )
        # Traffic and wind dry the road within a couple of hours after the rain stops.
        rain = self.climate.precipitation_rate
        film = 0.25 * sky.precipitation_rate + 0.35 * rain(t - 1_800) + 0.25 * rain(t - 5_400)
        film += 0.08 * fog  # fog droplets settle on the road
        snowing = sky.precipitation_rate > 0.0 and sky.air_temperature <= 0.5
        visibility = 16_000.0 + 4_000.0 * n.smooth("haze", t, DAY_S)
        if sky.precipitation_rate > 0.0:
            visibility = min(
                visibility,
                (1_500.0 if snowing else 9_000.0) / (0.3 + sky.precipitation_rate),
            )
        if fog > 0.0:
            thickest = 40.0 * math.pow(1_500.0 / 40.0, severity)  # log-uniform 40-1,500 m
            visibility = math.exp(
                math.log(visibility) + fog * (math.log(thickest) - math.log(visibility))
            )
        # The state is judged on the values as reported, so that they never contradict it.
        surface = self.quantize("surface_temperature", surface)
        film = self.quantize("water_film", film)
        return [
            (
                None,
                {
                    "surface_temperature": surface,
                    "surface_state": _surface_state(surface, film, snowing, sky.dew_point),
                    "water_film": film,
                    "visibility": visibility,
                    "air_temperature": sky.air_temperature,
                    "relative_humidity": max(sky.relative_humidity, 90.0 + 10.0 * fog)
                    if fog > 0.0
                    else sky.relative_humidity,
                    "wind_speed": sky.wind_speed,
                    "wind_direction": sky.wind_direction,
                },
            )
        ]


def _surface_state(surface: float, film_mm: float, snowing: bool, dew_point: float) -> str:
    """What a road sensor reports; icing as DOMAIN.md defines the risk (wet at or below 0 C)."""
    if snowing and surface <= 1.0:
        return "snow" if surface <= 0.0 else "slush"
    if film_mm >= 0.05:
        if surface <= 0.0:
            return "ice"
        return "wet" if film_mm >= 0.2 else "moist"
    if surface <= 0.0 and surface <= dew_point:
        return "frost"
    return "dry"
