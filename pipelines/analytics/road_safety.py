"""Road-weather and traffic rules: dew point, icing risk, low-visibility speed tiers, lane flow and congestion."""

import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from devices.highway import RoadWeather, SurfaceState, TrafficDetector

MAGNUS_A = 17.625
MAGNUS_B_DEGC = 243.04
"""Magnus constants over liquid water, Alduchov & Eskridge (1996), J. Appl. Meteor. 35:601-609.

Used below 0 degC too: hygrometers report relative humidity over water (WMO
convention), so these are the consistent constants; the published fit holds
for -40..+50 degC and only degrades slowly beyond it.
"""

WET_STATES: frozenset[SurfaceState] = frozenset({"wet", "moist", "slush"})
"""Surface states with liquid water that freezes at or below 0 degC."""

ICY_STATES: frozenset[SurfaceState] = frozenset({"ice", "snow", "frost"})
"""Surface states the sensor already reports as frozen."""


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def dew_point(air_temperature: float, relative_humidity: float) -> float:
    """Dew point (degC) from air temperature (degC) and relative humidity (%, over water), by Magnus.

    Raises ValueError for humidity outside (0, 100]: at 0% there is no dew point.
    """
    _finite("air_temperature", air_temperature)
    _finite("relative_humidity", relative_humidity)
    if not 0 < relative_humidity <= 100:
        raise ValueError(f"relative humidity must be in (0, 100] %, got {relative_humidity!r}")
    gamma = math.log(relative_humidity / 100) + MAGNUS_A * air_temperature / (
        MAGNUS_B_DEGC + air_temperature
    )
    return MAGNUS_B_DEGC * gamma / (MAGNUS_A - gamma)


class IcingLevel(IntEnum):
    """Ordered: a larger value is worse."""

    NONE = 0
    RISK = 1
    """The rules say ice can form (or has formed unseen)."""
    ICY = 2
    """The surface sensor already reports ice, snow or frost."""


class IcingReason(StrEnum):
    ICY_SURFACE_STATE = "icy_surface_state"
    FREEZING_WET_SURFACE = "freezing_wet_surface"
    AT_OR_BELOW_DEW_POINT = "at_or_below_dew_point"


# The per-reading results are frozen dataclasses, not pydantic models: built for every
# road-weather reading and never crossing a boundary, the models cost ~2 us a reading.
@dataclass(frozen=True, slots=True)
class IcingRisk:
    """Icing assessment of one road-weather reading; every rule that fired is in ``reasons``."""

    level: IcingLevel
    reasons: tuple[IcingReason, ...]
    dew_point: float | None
    """None when the humidity is 0% (no condensation possible)."""


def icing_risk(
    surface_temperature: float,
    surface_state: SurfaceState,
    air_temperature: float,
    relative_humidity: float,
) -> IcingRisk:
    """Icing risk: surface <= 0 degC and wet/moist/slush, or surface <= dew point; ice/snow/frost is ICY.

    Both comparisons are inclusive (exactly 0 degC, exactly the dew point are at risk).
    The dew-point rule is applied as DOMAIN.md states it, without also
    requiring a freezing surface: above 0 degC it flags condensation (a wet
    road that will freeze if it cools), which the reason code keeps distinct.
    """
    _finite("surface_temperature", surface_temperature)
    reasons: list[IcingReason] = []
    if surface_state in ICY_STATES:
        reasons.append(IcingReason.ICY_SURFACE_STATE)
    if surface_temperature <= 0 and surface_state in WET_STATES:
        reasons.append(IcingReason.FREEZING_WET_SURFACE)
    point = dew_point(air_temperature, relative_humidity) if relative_humidity > 0 else None
    if point is not None and surface_temperature <= point:
        reasons.append(IcingReason.AT_OR_BELOW_DEW_POINT)
    if IcingReason.ICY_SURFACE_STATE in reasons:
        level = IcingLevel.ICY
    elif reasons:
        level = IcingLevel.RISK
    else:
        level = IcingLevel.NONE
    return IcingRisk(level=level, reasons=tuple(reasons), dew_point=point)


def road_icing_risk(reading: RoadWeather) -> IcingRisk:
    """``icing_risk`` of a RoadWeather reading."""
    return icing_risk(
        reading.surface_temperature,
        reading.surface_state,
        reading.air_temperature,
        reading.relative_humidity,
    )


class VisibilityTier(IntEnum):
    """Tiers of art. 81, Road Traffic Safety Law implementing regulations (PRC, 2004); larger is worse."""

    NORMAL = 0
    UNDER_200_M = 1
    UNDER_100_M = 2
    UNDER_50_M = 3


@dataclass(frozen=True, slots=True)
class LowVisibilityRule:
    """What art. 81 requires of expressway drivers at the measured visibility."""

    tier: VisibilityTier
    max_speed_kmh: int | None
    """None: art. 81 sets no limit (the road's own limit applies)."""
    min_gap_m: int | None
    """Following distance to the vehicle ahead in the same lane that art. 81 requires."""
    leave_at_next_exit: bool


# (strictly below this visibility in m, the rule): four fixed rules, built once.
_ART_81 = (
    (50.0, LowVisibilityRule(VisibilityTier.UNDER_50_M, 20, None, True)),
    (100.0, LowVisibilityRule(VisibilityTier.UNDER_100_M, 40, 50, False)),
    (200.0, LowVisibilityRule(VisibilityTier.UNDER_200_M, 60, 100, False)),
)
_NO_ART_81_LIMIT = LowVisibilityRule(VisibilityTier.NORMAL, None, None, False)


def low_visibility_rule(visibility_m: float) -> LowVisibilityRule:
    """The art. 81 tier: < 200 m -> 60 km/h, < 100 m -> 40 km/h, < 50 m -> 20 km/h and leave.

    "Under" is strict: exactly 200 m is not under 200 m. Art. 81 names no
    following distance for the under-50 m tier (the driver must leave).
    """
    _finite("visibility", visibility_m)
    if visibility_m < 0:
        raise ValueError(f"visibility must not be negative, got {visibility_m!r}")
    for below, rule in _ART_81:
        if visibility_m < below:
            return rule
    return _NO_ART_81_LIMIT


def flow_rate_per_hour(volume: float, interval_s: float) -> float:
    """Lane flow rate (vehicles/h) from the count in one interval: volume * 3600 / interval_s."""
    _finite("volume", volume)
    _finite("interval_s", interval_s)
    if volume < 0:
        raise ValueError(f"volume must not be negative, got {volume!r}")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s!r}")
    return volume * 3_600 / interval_s


def lane_flow_rate(reading: TrafficDetector) -> float:
    """``flow_rate_per_hour`` of a TrafficDetector reading."""
    return flow_rate_per_hour(reading.volume, reading.interval_s)


class CongestionLevel(IntEnum):
    """Larger is worse."""

    FREE = 0
    MODERATE = 1
    HEAVY = 2
    JAMMED = 3


class CongestionThresholds(BaseModel):
    """Occupancy (%) boundaries between levels: an ecotel convention, not a standard.

    No Chinese national standard classes congestion by detector occupancy
    (GB/T 33171-2016 uses speed). The defaults follow common freeway practice:
    flow peaks near 15-20% occupancy ("critical occupancy"), beyond it traffic
    is in the congested branch, and above ~40% queues stand over the detector.
    Tune them per site, by detector type and lane.
    """

    model_config = ConfigDict(frozen=True)

    moderate_from: float = 15.0
    heavy_from: float = 25.0
    jammed_above: float = 40.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not 0 <= self.moderate_from <= self.heavy_from <= self.jammed_above <= 100:
            raise ValueError("thresholds must satisfy 0 <= moderate <= heavy <= jammed <= 100")
        return self


DEFAULT_CONGESTION = CongestionThresholds()


def congestion_level(
    occupancy_percent: float, thresholds: CongestionThresholds = DEFAULT_CONGESTION
) -> CongestionLevel:
    """Free < 15% <= moderate < 25% <= heavy <= 40% < jammed (with the default thresholds)."""
    _finite("occupancy", occupancy_percent)
    if not 0 <= occupancy_percent <= 100:
        raise ValueError(f"occupancy must be in 0..100 %, got {occupancy_percent!r}")
    if occupancy_percent > thresholds.jammed_above:
        return CongestionLevel.JAMMED
    if occupancy_percent >= thresholds.heavy_from:
        return CongestionLevel.HEAVY
    if occupancy_percent >= thresholds.moderate_from:
        return CongestionLevel.MODERATE
    return CongestionLevel.FREE


class LaneCount(BaseModel):
    """One lane reading inside a window: its lane key, counting interval, count and occupancy."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    lane: str
    interval_s: float
    volume: float
    occupancy: float


class SiteFlow(BaseModel):
    """Traffic of one site over one window, summed over its lanes."""

    model_config = ConfigDict(frozen=True)

    flow_vph: float
    """Sum over the lanes of each lane's vehicles per hour over the time its readings cover."""
    vehicles: float
    lanes: int
    coverage: float
    """The least lane coverage: counted seconds / window seconds, at most 1."""
    mean_occupancy: float
    """Occupancy averaged over lanes and time, weighted by each reading's interval (%)."""
    congestion_level: CongestionLevel
    complete: bool
    """Every lane's readings cover the window to within half its shortest counting interval."""


class LaneTotals(BaseModel):
    """One lane's readings inside a window, summed: all site_flow needs of them.

    InfluxDB can sum them itself (pipelines/derive_windows.py), so a window
    is recomputed without reading its raw rows back.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    lane: str
    covered_s: float
    """Sum of the readings' counting intervals."""
    vehicles: float
    shortest_s: float
    """The shortest counting interval."""
    occupancy_s: float
    """Sum of occupancy (%) x interval (s): the time-weighted occupancy's numerator."""

    def check(self) -> None:
        """What flow_rate_per_hour and congestion_level check per reading, on the sums."""
        flow_rate_per_hour(self.vehicles, self.covered_s)  # volume >= 0, interval > 0
        if self.shortest_s <= 0:
            raise ValueError(f"lane {self.lane}: interval_s must be positive")
        # Each reading's occupancy is within 0..100 %, so the sum is within 0..100 x time.
        if not 0 <= self.occupancy_s <= 100 * self.covered_s:
            raise ValueError(f"lane {self.lane}: occupancy out of 0..100 %")


def lane_totals(counts: list[LaneCount]) -> list[LaneTotals]:
    """Each lane's readings summed, every reading checked as the rules check it."""
    lanes: dict[str, list[LaneCount]] = {}
    for c in counts:
        flow_rate_per_hour(c.volume, c.interval_s)  # checks volume and interval
        congestion_level(c.occupancy)  # checks occupancy
        lanes.setdefault(c.lane, []).append(c)
    return [
        LaneTotals(
            lane=lane,
            covered_s=math.fsum(c.interval_s for c in rows),
            vehicles=math.fsum(c.volume for c in rows),
            shortest_s=min(c.interval_s for c in rows),
            occupancy_s=math.fsum(c.occupancy * c.interval_s for c in rows),
        )
        for lane, rows in lanes.items()
    ]


def site_flow(
    counts: list[LaneCount],
    window_s: float,
    thresholds: CongestionThresholds = DEFAULT_CONGESTION,
) -> SiteFlow:
    """Per-site flow of one window from the lane readings stamped inside it.

    A lane's rate is its vehicles over the seconds its readings cover, so a
    missing reading lowers coverage (and ``complete``), not the rate.
    """
    if not counts:
        raise ValueError("no lane reading in the window")
    return site_flow_of_totals(lane_totals(counts), window_s, thresholds)


def site_flow_of_totals(
    totals: list[LaneTotals],
    window_s: float,
    thresholds: CongestionThresholds = DEFAULT_CONGESTION,
) -> SiteFlow:
    """``site_flow`` from each lane's sums (``lane_totals``, or InfluxDB's own sums)."""
    if not totals:
        raise ValueError("no lane reading in the window")
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    for lane in totals:
        lane.check()
    flow = math.fsum(t.vehicles * 3_600 / t.covered_s for t in totals)
    occupancy = math.fsum(t.occupancy_s for t in totals) / math.fsum(t.covered_s for t in totals)
    return SiteFlow(
        flow_vph=flow,
        vehicles=math.fsum(t.vehicles for t in totals),
        lanes=len(totals),
        coverage=min(1.0, min(t.covered_s for t in totals) / window_s),
        mean_occupancy=occupancy,
        congestion_level=congestion_level(min(100.0, occupancy), thresholds),
        complete=all(t.covered_s >= window_s - t.shortest_s / 2 for t in totals),
    )
