"""The weather simulated devices stand in: a Tibetan-plateau climate as a deterministic function of
site and time, calibrated on Tuotuohe (4,533 m, annual mean about -4 C, January -17 C, July +8 C)."""

import math
from dataclasses import dataclass

from pydantic import Field

from devices.simulators.base import (
    DAY_S,
    YEAR_DAYS,
    Noise,
    SimulatorOptions,
    annual_wave,
    clamp,
    day_of_year,
)

_SOLAR_CONSTANT = 1_361.0  # W/m2 at the mean Earth-Sun distance
SEA_LEVEL_HPA = 1_013.25


@dataclass(frozen=True)
class Sky:
    """The weather at one instant."""

    air_temperature: float
    relative_humidity: float
    air_pressure: float
    wind_speed: float
    wind_direction: float
    solar_radiation: float
    cloud: float
    """Cloud cover 0..1."""
    precipitation_rate: float
    """mm/h (water equivalent)."""
    winter: float
    """0 in mid-July .. 1 in mid-January."""
    solar_hour: float
    """Apparent solar time, 0-24: noon is when the sun is highest at the site."""

    @property
    def dew_point(self) -> float:
        """Magnus formula over water; good to a few tenths of a degree from -40 to 50 C."""
        gamma = math.log(
            max(self.relative_humidity, 1.0) / 100.0
        ) + 17.62 * self.air_temperature / (243.12 + self.air_temperature)
        return 243.12 * gamma / (17.62 - gamma)


def monsoon(t: float) -> float:
    """0 outside the summer monsoon .. 1 at its height in late July."""
    return max(0.0, annual_wave(t, 205.0)) ** 2


class Climate:
    """Weather at one site; every value a function of time and the device's noise."""

    def __init__(
        self, noise: Noise, *, altitude_m: float, latitude: float, longitude: float
    ) -> None:
        self.noise = noise.child("climate")
        self.altitude_m = altitude_m
        self.latitude = latitude
        self.longitude = longitude
        # Colder with height (a lapse rate of 5.5 C/km along the plateau surface) and to the north.
        self.mean_air_temperature = -4.0 - 0.0055 * (altitude_m - 4_500.0) - 0.6 * (latitude - 34.2)
        # The barometric formula (standard atmosphere) plus 7 hPa: plateau air columns are warmer
        # than the standard one, so Tuotuohe reads about 584 hPa where the formula says 577.
        self.mean_pressure = SEA_LEVEL_HPA * math.pow(1.0 - 2.25577e-5 * altitude_m, 5.25588) + 7.0

    def solar_hour(self, t: float) -> float:
        """Apparent solar time at the site's longitude (about 13:50 on the UTC+8 clock at 92 E)."""
        b = 2.0 * math.pi * (day_of_year(t) - 81.0) / 364.0
        equation_of_time_min = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
        hours = t / 3_600.0 + self.longitude / 15.0 + equation_of_time_min / 60.0
        return hours % 24.0

    def _declination(self, t: float) -> float:
        return math.radians(23.44) * math.sin(2.0 * math.pi * (day_of_year(t) - 80.0) / YEAR_DAYS)

    def sun_height(self, t: float, solar_hour: float) -> float:
        """Sine of the sun's elevation; negative at night."""
        phi = math.radians(self.latitude)
        delta = self._declination(t)
        hour_angle = math.radians(15.0 * (solar_hour - 12.0))
        return math.sin(phi) * math.sin(delta) + math.cos(phi) * math.cos(delta) * math.cos(
            hour_angle
        )

    def daylight(self, t: float) -> tuple[float, float]:
        """Sunrise and sunset in solar hours for the day of ``t``."""
        phi = math.radians(self.latitude)
        cos_h0 = clamp(-math.tan(phi) * math.tan(self._declination(t)), -1.0, 1.0)
        half_day_h = math.degrees(math.acos(cos_h0)) / 15.0
        return 12.0 - half_day_h, 12.0 + half_day_h

    def synoptic(self, t: float) -> float:
        """Temperature anomaly of passing weather systems (C): cold waves are deeper in winter."""
        winter = (1.0 - annual_wave(t, 201.0)) / 2.0
        return (3.5 + 5.5 * winter) * self.noise.smooth("synoptic", t, 2.5 * DAY_S) + (
            1.5 * self.noise.smooth("mesoscale", t, 9 * 3_600)
        )

    def cloud(self, t: float) -> float:
        """Cloud cover 0..1: clear dry winters, cloudy monsoon summers."""
        return clamp(
            0.22
            + 0.3 * monsoon(t)
            + 0.45 * self.noise.smooth("cloud", t, 7 * 3_600)
            + 0.2 * self.noise.smooth("cloud-days", t, 2 * DAY_S),
            0.0,
            1.0,
        )

    def precipitation_rate(self, t: float, cloud: float | None = None) -> float:
        """mm/h; falls from the thickest cloud only, so it comes in showers (about 300 mm a year,
        most of it from June to September, as at Tuotuohe)."""
        if cloud is None:
            cloud = self.cloud(t)
        if cloud <= 0.75:
            return 0.0
        return (cloud - 0.75) / 0.25 * (0.5 + 2.5 * monsoon(t))

    def sky(self, t: float) -> Sky:
        """All of the weather at ``t``."""
        n = self.noise
        season = annual_wave(t, 201.0)  # +1 in late July, -1 in mid-January
        winter = (1.0 - season) / 2.0
        wet_season = monsoon(t)
        solar_hour = self.solar_hour(t)
        cloud = self.cloud(t)
        # Warmest at 14:30 solar time (about 16:20 UTC+8 on the plateau's west), coldest before dawn;
        # dry winter air and clear skies widen the day's range.
        diurnal = math.cos(2.0 * math.pi * (solar_hour - 14.5) / 24.0)
        day_range = (7.0 + 1.5 * winter) * (1.0 - 0.45 * cloud)
        temperature = (
            self.mean_air_temperature
            + 12.5 * season
            + day_range * diurnal
            + self.synoptic(t)
            + 0.2 * n.white("temperature", t)
        )
        pressure = (
            self.mean_pressure
            + 1.5 * season
            + 4.5 * n.smooth("pressure", t, 3 * DAY_S)
            + 0.8 * math.cos(4.0 * math.pi * (solar_hour - 10.0) / 24.0)  # the semidiurnal tide
            + 0.05 * n.white("pressure", t)
        )
        rain = self.precipitation_rate(t, cloud)
        humidity = (
            40.0
            + 25.0 * wet_season
            - 6.0 * winter
            + 28.0 * (cloud - 0.35)
            - 12.0 * diurnal
            + 6.0 * n.smooth("humidity", t, 5 * 3_600)
            + n.white("humidity", t)
        )
        if rain > 0.0:
            humidity = max(humidity, 93.0 + 5.0 * n.white("rain-humidity", t))
        # The westerly jet sits over the plateau from February to April: its windiest season;
        # afternoon convection stirs the wind every day.
        spring = max(0.0, annual_wave(t, 90.0))
        mean_wind = 3.0 + 2.5 * spring + 2.0 * max(0.0, diurnal)
        wind = (
            mean_wind * (1.0 + 0.6 * n.smooth("wind", t, 6 * 3_600))
            + 2.5 * n.smooth("gust", t, 900)
            + 0.4 * n.white("wind", t)
        )
        direction = (
            265.0
            # Monsoon summers bring easterlies too; the westerlies rule the rest of the year.
            + (45.0 + 90.0 * wet_season) * n.smooth("wind-direction", t, 12 * 3_600)
            + 20.0 * n.smooth("wind-veer", t, 2_400)
            + 8.0 * n.white("wind-direction", t)
        ) % 360.0
        return Sky(
            air_temperature=temperature,
            relative_humidity=clamp(humidity, 3.0, 100.0),
            air_pressure=pressure,
            wind_speed=max(0.0, wind),
            wind_direction=direction,
            solar_radiation=self._solar_radiation(t, solar_hour, pressure, cloud),
            cloud=cloud,
            precipitation_rate=rain,
            winter=winter,
            solar_hour=solar_hour,
        )

    def _solar_radiation(self, t: float, solar_hour: float, pressure: float, cloud: float) -> float:
        height = self.sun_height(t, solar_hour)
        if height <= 0.0:
            return 0.0
        elevation_deg = math.degrees(math.asin(height))
        # Kasten-Young air mass, shortened by the thin air: why plateau noons pass 1,000 W/m2.
        air_mass = (pressure / SEA_LEVEL_HPA) / (
            height + 0.50572 * math.pow(elevation_deg + 6.07995, -1.6364)
        )
        extraterrestrial = _SOLAR_CONSTANT * (
            1.0 + 0.033 * math.cos(2 * math.pi * day_of_year(t) / 365.0)
        )
        clear_sky = extraterrestrial * height * math.pow(0.7, air_mass) * 1.06  # +6% diffuse light
        return clear_sky * (1.0 - 0.72 * math.pow(cloud, 2.2))


class SiteOptions(SimulatorOptions):
    """Where a plateau device stands. The climate model is of the Tibetan plateau and its rim,
    so the site must lie there too (2,500-6,000 m, 25-40 N, 70-125 E)."""

    altitude_m: float = Field(4_500.0, ge=2_500, le=6_000, description="Station altitude (m)")
    latitude: float = Field(34.2, ge=25, le=40, description="Degrees north")
    longitude: float = Field(
        92.4, ge=70, le=125, description="Degrees east: sets solar noon on the UTC+8 clock"
    )

    def climate(self, noise: Noise) -> Climate:
        return Climate(
            noise, altitude_m=self.altitude_m, latitude=self.latitude, longitude=self.longitude
        )
