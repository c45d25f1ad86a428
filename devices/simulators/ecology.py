"""Simulated Sanjiangyuan station devices: weather, hydrology, water quality, the soil and
permafrost profile, and the station's own power and enclosure."""

import math
from typing import Annotated

from pydantic import AfterValidator, Field

from devices.ecology import Hydrology, SoilProfile, StationHealth, WaterQuality, Weather
from devices.simulators.base import (
    DAY_S,
    YEAR_DAYS,
    BaseSimulator,
    Noise,
    Values,
    annual_wave,
    clamp,
    day_of_year,
    distinct,
    periodic_bump,
)
from devices.simulators.climate import SEA_LEVEL_HPA, Climate, SiteOptions, monsoon


class WeatherSimulator(BaseSimulator[SiteOptions]):
    """An automatic weather station. Options: ``altitude_m`` (default 4,500), ``latitude``
    (34.2), ``longitude`` (92.4). Precipitation is what fell over the sampling interval."""

    values_model = Weather
    options_model = SiteOptions

    def __init__(self, device: str, *, seed: int, interval_s: float, options: SiteOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = options.climate(self.noise)

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        sky = self.climate.sky(t)
        return [
            (
                None,
                {
                    "air_temperature": sky.air_temperature,
                    "relative_humidity": sky.relative_humidity,
                    "air_pressure": sky.air_pressure,
                    "wind_speed": sky.wind_speed,
                    "wind_direction": sky.wind_direction,
                    "precipitation": sky.precipitation_rate * self.interval_s / 3_600.0,
                    "solar_radiation": sky.solar_radiation,
                    "snow_depth": self._snow_depth(t),
                },
            )
        ]

    def _snow_depth(self, t: float) -> float:
        """cm; the plateau's cover is thin and patchy, deepest after the spring snows of
        March-April, gone by summer (a function of time, so it stays deterministic)."""
        season = periodic_bump(day_of_year(t), 85.0, 45.0, YEAR_DAYS)
        spells = 0.5 + 0.5 * self.noise.smooth("snow", t, 10 * DAY_S)
        return max(0.0, 12.0 * season * spells)


class River:
    """A plateau river at one gauge: ice-bound winter base flow, a small snowmelt rise in May-June
    and the summer peak of glacier melt and monsoon rain, with storm floods on top."""

    def __init__(self, noise: Noise, climate: Climate) -> None:
        self.noise = noise.child("river")
        self.climate = climate
        self.base_flow = 3.0 + 7.0 * self.noise.unit("base-flow")  # m3/s
        self.peak_flow = 120.0 + 280.0 * self.noise.unit("peak-flow")
        self.peak_water_temperature = clamp(
            10.0 - 0.004 * (climate.altitude_m - 4_500.0), 4.0, 16.0
        )

    def discharge(self, t: float) -> float:
        """m3/s."""
        day = day_of_year(t)
        melt = 0.15 * periodic_bump(day, 150.0, 18.0, YEAR_DAYS) + periodic_bump(
            day, 205.0, 32.0, YEAR_DAYS
        )
        storm = 0.45 * monsoon(t) * max(0.0, self.noise.smooth("storm", t, 3 * DAY_S)) ** 2
        # Melt water of the afternoon reaches the gauge in the evening.
        pulse = 1.0 + 0.08 * melt * math.cos(
            2.0 * math.pi * (self.climate.solar_hour(t) - 21.0) / 24.0
        )
        flow = self.base_flow + self.peak_flow * (melt * pulse + storm)
        return flow * (1.0 + 0.01 * self.noise.white("discharge", t))

    def water_temperature(self, t: float) -> float:
        """C; the river is ice-covered from November to April, so it sits just above freezing."""
        warm = math.pow(max(0.0, annual_wave(t, 205.0)), 1.3)
        diurnal = math.cos(2.0 * math.pi * (self.climate.solar_hour(t) - 16.0) / 24.0)
        temperature = (
            0.05
            + warm * (self.peak_water_temperature + 2.0 * diurnal)
            + 0.4 * warm * self.noise.smooth("water-temperature", t, DAY_S)
        )
        return max(0.0, temperature)


class HydrologySimulator(BaseSimulator[SiteOptions]):
    """A river gauging station. Stage follows discharge through the gauge's rating curve
    Q = a (h - h0)^b, with a, b and h0 drawn per device. Options as WeatherSimulator."""

    values_model = Hydrology
    options_model = SiteOptions

    def __init__(self, device: str, *, seed: int, interval_s: float, options: SiteOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.river = River(self.noise, options.climate(self.noise))
        rating = self.noise.child("rating")
        self.rating_a = 25.0 + 20.0 * rating.unit("a")
        self.rating_b = 1.55 + 0.3 * rating.unit("b")
        self.rating_h0 = 0.3 + 0.5 * rating.unit("h0")  # m: the stage of zero flow

    def stage(self, discharge: float) -> float:
        """The rating curve solved for stage (m)."""
        return self.rating_h0 + math.pow(discharge / self.rating_a, 1.0 / self.rating_b)

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        discharge = self.river.discharge(t)
        return [
            (
                None,
                {
                    "stage": self.stage(discharge),
                    "discharge": discharge,
                    "water_temperature": self.river.water_temperature(t),
                },
            )
        ]


class WaterQualitySimulator(BaseSimulator[SiteOptions]):
    """A multi-parameter sonde in a clean plateau river (GB 3838 class I-II). Options as
    WeatherSimulator; altitude lowers the dissolved oxygen through air pressure."""

    values_model = WaterQuality
    options_model = SiteOptions

    def __init__(self, device: str, *, seed: int, interval_s: float, options: SiteOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = options.climate(self.noise)
        self.river = River(self.noise, self.climate)
        n = self.noise
        self.base_ph = 8.05 + 0.2 * n.unit("ph")
        self.base_conductivity = 300.0 + 150.0 * n.unit("conductivity")  # uS/cm
        self.base_ammonia = 0.03 + 0.05 * n.unit("ammonia")  # mg/L

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        n = self.noise
        sky = self.climate.sky(t)
        water = self.river.water_temperature(t)
        flow = self.river.discharge(t)
        # Flood water dilutes the groundwater-fed winter flow and carries silt.
        flood = flow / self.river.base_flow
        daylight = sky.solar_radiation / 1_000.0
        # Algae photosynthesis by day raises pH and oxygen; the effect needs open, warm water.
        growth = daylight * min(1.0, water / 6.0)
        saturation = (
            0.94 + 0.05 * growth + 0.02 * min(1.0, water / 2.0) + 0.01 * n.white("oxygen", t)
        )
        turbidity = 1.5 + 4.0 * math.pow(max(0.0, flood - 1.0), 1.2) + 0.3 * n.white("turbidity", t)
        return [
            (
                None,
                {
                    "water_temperature": water,
                    "ph": self.base_ph
                    + 0.25 * growth
                    - 0.1 * min(1.0, (flood - 1.0) / 30.0)
                    + 0.02 * n.white("ph", t),
                    "dissolved_oxygen": _oxygen_saturation(water, sky.air_pressure) * saturation,
                    "conductivity": self.base_conductivity * math.pow(3.0 / flood, 0.12)
                    + 3.0 * n.white("conductivity", t),
                    "turbidity": max(0.1, turbidity),
                    "ammonia_nitrogen": self.base_ammonia
                    + 0.02 * n.smooth("ammonia", t, DAY_S)
                    + 0.00004 * turbidity,
                    "permanganate_index": 1.2
                    + 0.3 * n.smooth("cod", t, 2 * DAY_S)
                    + 0.002 * turbidity,
                    "total_phosphorus": 0.012 + 0.0001 * turbidity,  # phosphorus rides on silt
                },
            )
        ]


def _oxygen_saturation(water_c: float, pressure_hpa: float) -> float:
    """mg/L of dissolved oxygen at saturation: a cubic fit to the Benson-Krause table for fresh
    water at 1 atm, scaled by air pressure (Henry's law): about 8.3 mg/L at 0 C and 4,500 m."""
    t = water_c
    at_sea_level = 14.652 - 0.41022 * t + 0.007991 * t * t - 0.000077774 * t * t * t
    return at_sea_level * pressure_hpa / SEA_LEVEL_HPA


class SoilOptions(SiteOptions):
    """Site options plus the probe depths of the profile."""

    depths_cm: Annotated[
        tuple[Annotated[int, Field(ge=5, le=2_000)], ...],
        Field(min_length=1),
        AfterValidator(distinct),
    ] = (10, 40, 80, 160, 320)


class SoilProfileSimulator(BaseSimulator[SoilOptions]):
    """A soil/permafrost temperature profile; one reading per depth, channel = depth in cm.

    Options: ``depths_cm`` (default 10, 40, 80, 160, 320; 5-2,000) and the site options of
    WeatherSimulator. The seasonal and daily waves of the ground surface die away and lag with
    depth (heat conduction); at the default site the layers below about 2 m stay frozen all
    year (permafrost). Probes from 200 cm down carry no moisture sensor.
    """

    values_model = SoilProfile
    options_model = SoilOptions

    # Damping depths (m). The annual one is shorter than dry rock's 3 m because freezing and
    # thawing the ground's water soaks up heat (the "zero curtain").
    _ANNUAL_DEPTH_M = 1.6
    _DAILY_DEPTH_M = 0.16
    _SYNOPTIC_DEPTH_M = 0.4
    _SYNOPTIC_PERIOD_S = 5 * DAY_S

    def __init__(self, device: str, *, seed: int, interval_s: float, options: SoilOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = options.climate(self.noise)
        # Bare sunny ground runs warmer than the air above it.
        self.mean_ground_temperature = (
            self.climate.mean_air_temperature + 1.5 + 0.3 * self.noise.signed("ground")
        )

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        sky = self.climate.sky(t)
        day = day_of_year(t)
        daily_amplitude = 8.0 * (1.0 - 0.5 * sky.cloud)
        readings: list[tuple[str | None, Values]] = []
        for depth_cm in self.options.depths_cm:
            z = depth_cm / 100.0
            annual_lag = z / self._ANNUAL_DEPTH_M
            daily_lag = z / self._DAILY_DEPTH_M
            synoptic_lag_s = z / self._SYNOPTIC_DEPTH_M * self._SYNOPTIC_PERIOD_S / (2 * math.pi)
            temperature = (
                self.mean_ground_temperature
                + 0.03 * z  # geothermal gradient
                + 12.0
                * math.exp(-annual_lag)
                * math.cos(2 * math.pi * (day - 201.0) / YEAR_DAYS - annual_lag)
                + daily_amplitude
                * math.exp(-daily_lag)
                * math.cos(2 * math.pi * (sky.solar_hour - 13.5) / 24.0 - daily_lag)
                # Snow and the ground's own heat soften cold waves at the surface already.
                + 0.5
                * math.exp(-z / self._SYNOPTIC_DEPTH_M)
                * self.climate.synoptic(t - synoptic_lag_s)
                + 0.02 * self.noise.white(f"soil-{depth_cm}", t)
            )
            values: Values = {"soil_temperature": temperature}
            if depth_cm < 200:
                values["soil_moisture"] = self._moisture(t, depth_cm, temperature)
            readings.append((str(depth_cm), values))
        return readings

    def _moisture(self, t: float, depth_cm: int, temperature: float) -> float:
        """Liquid water (% vol): ice does not count, so frozen ground reads only its few percent
        of unfrozen water."""
        total = (
            18.0 + 10.0 * monsoon(t) + 4.0 * self.noise.smooth(f"moisture-{depth_cm}", t, 2 * DAY_S)
        )
        unfrozen = 4.0
        liquid_share = 1.0 / (1.0 + math.exp(-clamp(temperature / 0.3, -50.0, 50.0)))
        return unfrozen + (total - unfrozen) * liquid_share


class StationHealthSimulator(BaseSimulator[SiteOptions]):
    """A solar-powered station's 12 V lead-acid battery, charge controller and enclosure.
    Options as WeatherSimulator.

    The charge climbs through the day while the panel delivers and falls through the night by
    what the load draws; sunny spells keep the battery near full, cloudy winter spells drain it.
    Voltage follows charge (open-circuit 11.75 V empty to 12.7 V full) plus the charging lift.
    """

    values_model = StationHealth
    options_model = SiteOptions

    def __init__(self, device: str, *, seed: int, interval_s: float, options: SiteOptions) -> None:
        super().__init__(device, seed=seed, interval_s=interval_s, options=options)
        self.climate = options.climate(self.noise)
        n = self.noise
        self.panel_w = 120.0 + 180.0 * n.unit("panel")
        self.battery_wh = 12.0 * (100.0 + 60.0 * n.unit("battery"))
        self.load_w = 12.0 + 6.0 * n.unit("load")

    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        sky = self.climate.sky(t)
        sunrise, sunset = self.climate.daylight(t)
        night_h = 24.0 - (sunset - sunrise)
        swing = 100.0 * self.load_w * night_h / self.battery_wh
        reserve = (
            97.0 - 11.0 * (1.0 + self.noise.smooth("reserve", t, 2 * DAY_S)) - 12.0 * sky.winter
        )
        soc = clamp(reserve + swing * _charge_cycle(sky.solar_hour, sunrise, sunset), 5.0, 100.0)
        # The controller tapers the current as the battery fills, down to a float trickle.
        taper = clamp((100.0 - soc) / 4.0, 0.08, 1.0)
        charge_w = self.panel_w * sky.solar_radiation / 1_000.0 * 0.8 * taper
        open_circuit = 11.75 + 0.0095 * soc
        if charge_w > 0.0:
            voltage = min(
                14.6,
                open_circuit + 0.3 + 1.2 * charge_w / self.panel_w + 0.09 * max(0.0, soc - 90.0),
            )
        else:
            voltage = open_circuit - 0.004 * self.load_w
        return [
            (
                None,
                {
                    "battery_voltage": voltage,
                    "battery_soc": soc,
                    "solar_charge_power": charge_w,
                    # Electronics warm the box a few degrees; sun on its walls a few more.
                    "enclosure_temperature": sky.air_temperature
                    + 3.0
                    + 7.0 * sky.solar_radiation / 1_100.0
                    + 0.2 * self.noise.white("enclosure", t),
                },
            )
        ]


def _charge_cycle(solar_hour: float, sunrise: float, sunset: float) -> float:
    """The daily charge pattern, -0.5 at sunrise .. +0.5 at sunset: rising with the cumulative
    sunshine by day, falling linearly by night; continuous across midnight."""
    if sunrise <= solar_hour <= sunset:
        progress = (solar_hour - sunrise) / (sunset - sunrise)
        return -0.5 + (1.0 - math.cos(math.pi * progress)) / 2.0
    since_sunset = (solar_hour - sunset) % 24.0
    return 0.5 - since_sunset / (24.0 - (sunset - sunrise))
