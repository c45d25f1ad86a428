"""The ``[derive]`` section of the ingest configuration: data-center meter maps, windows, delays."""

from datetime import timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from devices.datacenter import CIRCUITS
from devices.identifiers import Identifier
from pipelines.analytics.energy import (
    DEFAULT_MAX_SPLIT,
    IT_CIRCUIT_CATEGORY,
    MeterConfig,
    PueCategory,
    Window,
)
from pipelines.analytics.road_safety import CongestionThresholds


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeterRef(_Section):
    """One circuit of an ``energy_meter`` device: its counter ``energy_kwh``."""

    device: Identifier
    circuit: str
    max_power_kw: float = Field(gt=0, description="The circuit's rating: no interval may exceed it")
    counter_max_kwh: float | None = Field(
        default=None, gt=0, description="Where the counter wraps to 0; unset: it never wraps"
    )

    @field_validator("circuit")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in CIRCUITS:
            raise ValueError(f"unknown circuit {value!r}; one of {', '.join(CIRCUITS)}")
        return value

    @property
    def meter(self) -> MeterConfig:
        return MeterConfig(max_power_kw=self.max_power_kw, counter_max_kwh=self.counter_max_kwh)

    @property
    def label(self) -> str:
        return f"{self.device}:{self.circuit}"


class WaterMeterRef(_Section):
    """A cumulative water counter: any measurement and field (no catalog kind measures water yet)."""

    measurement: Identifier
    device: Identifier
    field: str = Field(min_length=1)
    litres_per_unit: float = Field(default=1.0, gt=0, description="1000 for a counter in m3")
    max_flow_l_per_h: float = Field(gt=0, description="No interval may exceed this flow")
    counter_max: float | None = Field(default=None, gt=0, description="Where the counter wraps")

    @property
    def meter(self) -> MeterConfig:
        # The counter rules are unit-free: "kWh per hour" reads as counter units per hour.
        return MeterConfig(
            max_power_kw=self.max_flow_l_per_h / self.litres_per_unit,
            counter_max_kwh=self.counter_max,
        )

    @property
    def label(self) -> str:
        return f"{self.device}:{self.field}"


def _nonempty_unique(meters: list[MeterRef]) -> list[MeterRef]:
    labels = [m.label for m in meters]
    duplicate = {label for label in labels if labels.count(label) > 1}
    if duplicate:
        raise ValueError(f"meter listed twice: {', '.join(sorted(duplicate))}")
    return meters


class ZoneConfig(_Section):
    """A zone for partial PUE: its IT meters and its own infrastructure (cooling, lighting ...)."""

    name: Identifier
    it: list[MeterRef] = Field(min_length=1)
    infrastructure: list[MeterRef] = Field(min_length=1)

    _unique = field_validator("it", "infrastructure")(_nonempty_unique)


class DatacenterSite(_Section):
    """Which meter is what at one data-center site (its ``site`` tag)."""

    site: Identifier
    utc_offset_h: float = Field(
        default=8.0, ge=-12, le=14, description="Windows align to this local clock (China: 8)"
    )
    facility: list[MeterRef] = Field(
        min_length=1, description="Total facility energy (the utility feed), IT load included"
    )
    it: list[MeterRef] = Field(
        min_length=1,
        description="IT energy; all on one circuit kind, which gives the PUE category: "
        "ups_output 1, pdu_output 2, it_load 3",
    )
    renewable: list[MeterRef] = Field(default=[], description="Clean energy, for REF")
    water: list[WaterMeterRef] = Field(default=[], description="Site water, for WUE")
    zones: list[ZoneConfig] = Field(default=[], description="Zones for partial PUE")

    _unique = field_validator("facility", "it", "renewable")(_nonempty_unique)

    @field_validator("it")
    @classmethod
    def _it_position(cls, value: list[MeterRef]) -> list[MeterRef]:
        for meter in value:
            if meter.circuit not in IT_CIRCUIT_CATEGORY:
                raise ValueError(
                    f"{meter.label}: circuit {meter.circuit!r} does not measure IT energy; "
                    f"one of {', '.join(IT_CIRCUIT_CATEGORY)}"
                )
        positions = {m.circuit for m in value}
        if len(positions) > 1:
            raise ValueError(
                f"IT meters at different positions ({', '.join(sorted(positions))}): "
                "one PUE category needs them all at one"
            )
        return value

    @model_validator(mode="after")
    def _zone_names(self) -> Self:
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ValueError("zones: a zone name is used twice")
        return self

    @property
    def category(self) -> PueCategory:
        return IT_CIRCUIT_CATEGORY[self.it[0].circuit]

    @property
    def tz(self) -> timezone:
        return timezone(timedelta(hours=self.utc_offset_h))

    def energy_meters(self) -> list[MeterRef]:
        """Every energy meter the site's figures use, once each."""
        found: dict[str, MeterRef] = {}
        for meter in [*self.facility, *self.it, *self.renewable]:
            found.setdefault(meter.label, meter)
        for zone in self.zones:
            for meter in [*zone.it, *zone.infrastructure]:
                found.setdefault(meter.label, meter)
        return list(found.values())


class WindowDelays(_Section):
    """How long a touched window waits before it is recomputed: later readings of a backlog
    join the same recomputation, and a day is not recomputed for every reading."""

    quarter_hour_s: float = Field(default=2.0, ge=0)
    hour_s: float = Field(default=10.0, ge=0)
    day_s: float = Field(default=60.0, ge=0)

    def of(self, window: Window) -> timedelta:
        seconds = {
            Window.QUARTER_HOUR: self.quarter_hour_s,
            Window.HOUR: self.hour_s,
            Window.DAY: self.day_s,
        }[window]
        return timedelta(seconds=seconds)


class DeriveSettings(_Section):
    """Derived measurements (docs/analytics.md): per reading as they arrive, per window recomputed."""

    enabled: bool = True
    state_path: Path | None = Field(
        default=None,
        description="Windows waiting for recomputation (SQLite). Default: derive.sqlite3 beside "
        "the dead-letter store, one file for a shared group's workers on this host (each "
        "window claimed by the worker that recomputes it); suffixed -worker<N> for a worker "
        "outside a shared group",
    )
    delays: WindowDelays = Field(default_factory=WindowDelays)
    max_split_s: float = Field(
        default=DEFAULT_MAX_SPLIT.total_seconds(),
        gt=0,
        description="Longest counter interval split across a window edge in proportion to time",
    )
    highway_utc_offset_h: float = Field(default=8.0, ge=-12, le=14)
    congestion: CongestionThresholds = Field(default_factory=CongestionThresholds)
    datacenters: list[DatacenterSite] = Field(default=[])

    @model_validator(mode="after")
    def _one_map_per_site(self) -> Self:
        sites = [d.site for d in self.datacenters]
        if len(set(sites)) != len(sites):
            raise ValueError("datacenters: a site is mapped twice")
        return self

    @cached_property
    def water_kinds(self) -> frozenset[str]:
        """Measurements that hold some site's water counter."""
        return frozenset(w.measurement for d in self.datacenters for w in d.water)

    @property
    def max_split(self) -> timedelta:
        return timedelta(seconds=self.max_split_s)

    @property
    def highway_tz(self) -> timezone:
        return timezone(timedelta(hours=self.highway_utc_offset_h))

    def datacenter(self, site: str) -> DatacenterSite | None:
        for entry in self.datacenters:
            if entry.site == site:
                return entry
        return None

    def state_for(self, worker: int | None, dead_letters: Path) -> Path:
        path = self.state_path or dead_letters.with_name("derive.sqlite3")
        if worker is None:
            return path
        return path.with_name(f"{path.stem}-worker{worker}{path.suffix}")
