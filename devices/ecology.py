"""Sanjiangyuan ecological stations: water quality, hydrology, weather, soil/permafrost, station health.

Ranges are the hard plausibility limits of DOMAIN.md; site-specific limits
(a river's stage) narrow them in the ingest's configuration.
"""

from typing import ClassVar

from devices.kind import ChannelSpec, Domain, KindValues
from devices.quantity import quantity


class WaterQuality(KindValues):
    """A multi-parameter water-quality sonde (GB 3838-2002 parameters where fitted)."""

    kind: ClassVar[str] = "water_quality"
    domain: ClassVar[Domain] = Domain.ECOLOGY
    title: ClassVar[str] = "Water quality"

    water_temperature: float = quantity("Water temperature", "degC", -1, 40, grafana_unit="celsius")
    ph: float = quantity("pH", "pH", 0, 14, grafana_unit="none", decimals=2, normal=(6, 9))
    dissolved_oxygen: float = quantity("Dissolved oxygen", "mg/L", 0, 20, decimals=2)
    conductivity: float = quantity("Conductivity", "uS/cm", 0, 10_000, decimals=0)
    turbidity: float = quantity("Turbidity", "NTU", 0, 4_000)
    ammonia_nitrogen: float | None = quantity(
        "Ammonia nitrogen (NH3-N)", "mg/L", 0, 50, decimals=3, optional=True
    )
    permanganate_index: float | None = quantity(
        "Permanganate index (COD_Mn)", "mg/L", 0, 100, decimals=2, optional=True
    )
    total_phosphorus: float | None = quantity(
        "Total phosphorus", "mg/L", 0, 20, decimals=3, optional=True
    )


class Hydrology(KindValues):
    """A river gauging station: stage, discharge and water temperature."""

    kind: ClassVar[str] = "hydrology"
    domain: ClassVar[Domain] = Domain.ECOLOGY
    title: ClassVar[str] = "Hydrology"

    # Stage is relative to each gauge's own datum; this wide hard limit is
    # narrowed per station in configuration.
    stage: float = quantity(
        "Stage (water level)", "m", -10, 100, grafana_unit="lengthm", decimals=3
    )
    discharge: float = quantity("Discharge", "m3/s", 0, 100_000, grafana_unit="flowcms", decimals=2)
    water_temperature: float = quantity("Water temperature", "degC", -1, 40, grafana_unit="celsius")


class Weather(KindValues):
    """An automatic weather station."""

    kind: ClassVar[str] = "weather"
    domain: ClassVar[Domain] = Domain.ECOLOGY
    title: ClassVar[str] = "Weather"

    air_temperature: float = quantity("Air temperature", "degC", -60, 50, grafana_unit="celsius")
    relative_humidity: float = quantity(
        "Relative humidity", "%", 0, 100, grafana_unit="humidity", decimals=0
    )
    air_pressure: float = quantity(
        "Air pressure", "hPa", 400, 1100, grafana_unit="pressurehpa", normal=(550, 700)
    )
    wind_speed: float = quantity("Wind speed", "m/s", 0, 75, grafana_unit="velocityms")
    wind_direction: float = quantity(
        "Wind direction", "deg", 0, 360, grafana_unit="degree", decimals=0
    )
    precipitation: float = quantity(
        "Precipitation in the interval", "mm", 0, 300, grafana_unit="lengthmm"
    )
    solar_radiation: float = quantity("Solar radiation", "W/m2", 0, 1_500, decimals=0)
    snow_depth: float | None = quantity("Snow depth", "cm", 0, 500, optional=True)


class SoilProfile(KindValues):
    """One depth of a soil/permafrost profile; the depth in cm is the reading's channel."""

    kind: ClassVar[str] = "soil_profile"
    domain: ClassVar[Domain] = Domain.ECOLOGY
    title: ClassVar[str] = "Soil and permafrost profile"
    channel: ClassVar[ChannelSpec | None] = ChannelSpec(tag="depth_cm", title="Depth (cm)")

    soil_temperature: float = quantity(
        "Soil temperature", "degC", -40, 60, grafana_unit="celsius", decimals=2
    )
    # Permafrost probes below the active layer often carry no moisture sensor.
    soil_moisture: float | None = quantity(
        "Soil moisture", "% vol", 0, 100, grafana_unit="percent", optional=True
    )


class StationHealth(KindValues):
    """The station's own power and enclosure: what decides whether it survives the night."""

    kind: ClassVar[str] = "station_health"
    domain: ClassVar[Domain] = Domain.ECOLOGY
    title: ClassVar[str] = "Station health"

    battery_voltage: float = quantity(
        "Battery voltage (12 V system)",
        "V",
        0,
        16,
        grafana_unit="volt",
        decimals=2,
        normal=(11.5, 14.8),
    )
    battery_soc: float = quantity(
        "Battery state of charge", "%", 0, 100, grafana_unit="percent", decimals=0, normal=(30, 100)
    )
    solar_charge_power: float = quantity(
        "Solar charge power", "W", 0, 2_000, grafana_unit="watt", decimals=0
    )
    enclosure_temperature: float = quantity(
        "Enclosure temperature", "degC", -60, 70, grafana_unit="celsius"
    )
