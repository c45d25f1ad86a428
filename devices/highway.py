"""Smart-highway roadside units: per-lane traffic detectors and road-weather stations."""

from typing import ClassVar, Literal, Self

from pydantic import model_validator

from devices.kind import ChannelSpec, Domain, KindValues
from devices.quantity import quantity, state

LANE_CAPACITY_PER_HOUR = 2_400
"""Vehicles per hour one lane carries at capacity (DOMAIN.md)."""

SurfaceState = Literal["dry", "moist", "wet", "slush", "snow", "ice", "frost"]


class TrafficDetector(KindValues):
    """One lane of a radar or loop detector over one counting interval; the lane is the channel."""

    kind: ClassVar[str] = "traffic_detector"
    domain: ClassVar[Domain] = Domain.HIGHWAY
    title: ClassVar[str] = "Traffic detector"
    channel: ClassVar[ChannelSpec | None] = ChannelSpec(tag="lane", title="Lane")

    interval_s: float = quantity("Counting interval", "s", 1, 3_600, grafana_unit="s", decimals=0)
    volume: float = quantity(
        "Volume in the interval", "vehicles", 0, None, grafana_unit="short", decimals=0
    )
    mean_speed: float = quantity("Mean speed", "km/h", 0, 250, grafana_unit="velocitykmh")
    occupancy: float = quantity("Occupancy", "%", 0, 100, grafana_unit="percent")

    @model_validator(mode="after")
    def _volume_within_capacity(self) -> Self:
        # Capacity is ~2,400 veh/h; 25% headroom plus two vehicles for short
        # intervals, so only a physically impossible count is rejected.
        limit = 1.25 * LANE_CAPACITY_PER_HOUR * self.interval_s / 3_600 + 2
        if self.volume > limit:
            raise ValueError(
                f"volume {self.volume:g} in {self.interval_s:g} s exceeds lane capacity "
                f"(at most {limit:.0f})"
            )
        return self


class RoadWeather(KindValues):
    """A road-weather station: surface condition, visibility and the air above the road."""

    kind: ClassVar[str] = "road_weather"
    domain: ClassVar[Domain] = Domain.HIGHWAY
    title: ClassVar[str] = "Road weather"

    surface_temperature: float = quantity(
        "Road surface temperature", "degC", -50, 80, grafana_unit="celsius"
    )
    surface_state: SurfaceState = state("Road surface state")
    water_film: float = quantity(
        "Water film thickness", "mm", 0, 10, grafana_unit="lengthmm", decimals=2
    )
    visibility: float = quantity(
        "Visibility", "m", 0, 20_000, grafana_unit="lengthm", decimals=0, normal=(200, 20_000)
    )
    air_temperature: float = quantity("Air temperature", "degC", -60, 50, grafana_unit="celsius")
    relative_humidity: float = quantity(
        "Relative humidity", "%", 0, 100, grafana_unit="humidity", decimals=0
    )
    wind_speed: float = quantity("Wind speed", "m/s", 0, 75, grafana_unit="velocityms")
    wind_direction: float | None = quantity(
        "Wind direction", "deg", 0, 360, grafana_unit="degree", decimals=0, optional=True
    )
