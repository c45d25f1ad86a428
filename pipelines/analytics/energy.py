"""Energy from cumulative meter counters (rollover, replacement) and ISO/IEC 30134 PUE and REF per window."""

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import IntEnum, StrEnum
from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator


def _utc(value: datetime) -> datetime:
    # Aware datetimes sharing one ZoneInfo subtract by wall clock; UTC avoids DST surprises.
    return value.astimezone(UTC)


class CounterReading(BaseModel):
    """One reading of a cumulative energy counter."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    time: AwareDatetime
    energy_kwh: float = Field(ge=0)

    @field_validator("time")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return _utc(value)


class MeterConfig(BaseModel):
    """What is known of one meter: the power it can never exceed and where its counter wraps."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    max_power_kw: float = Field(gt=0)
    """Upper bound of the circuit's power (breaker or transformer rating): no interval may exceed it."""
    counter_max_kwh: float | None = Field(default=None, gt=0)
    """The wrap modulus: the counter shows [0, counter_max) and wraps to 0 on reaching it
    (a 6-digit register with one decimal: 100000, not 99999.9). None: the counter never wraps."""


class IntervalStatus(StrEnum):
    OK = "ok"
    ROLLOVER = "rollover"
    """The counter wrapped at counter_max; the energy is counted across the wrap."""
    RESET = "reset"
    """The counter dropped and no plausible rollover explains it: a replaced or reset meter."""
    IMPLAUSIBLE = "implausible"
    """The counter rose faster than max_power_kw allows (a replacement starting higher, a bad read)."""


class IntervalEnergy(BaseModel):
    """Energy of one meter between two successive readings; None when it cannot be known."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    start: AwareDatetime
    end: AwareDatetime
    status: IntervalStatus
    energy_kwh: float | None = Field(default=None, ge=0)

    @field_validator("start", "end")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.end <= self.start:
            raise ValueError("an interval must end after it starts")
        if self.complete != (self.energy_kwh is not None):
            raise ValueError(f"status {self.status.value} and energy_kwh disagree")
        return self

    @property
    def complete(self) -> bool:
        return self.status in (IntervalStatus.OK, IntervalStatus.ROLLOVER)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def interval_energy(
    previous: CounterReading, current: CounterReading, meter: MeterConfig
) -> IntervalEnergy:
    """Energy between two successive readings of one meter; never negative, never above max power.

    A rise is the energy if max_power_kw allows it. A drop is a rollover
    (counter_max - previous + current) only when counter_max is configured and
    that energy is within max_power_kw over the interval; otherwise a reset.
    """
    seconds = (current.time - previous.time).total_seconds()
    if seconds <= 0:
        raise ValueError(f"readings out of order: {previous.time} then {current.time}")
    bound = meter.max_power_kw * seconds / 3_600

    def result(status: IntervalStatus, energy: float | None = None) -> IntervalEnergy:
        return IntervalEnergy(
            start=previous.time, end=current.time, status=status, energy_kwh=energy
        )

    delta = current.energy_kwh - previous.energy_kwh
    if delta >= 0:
        return (
            result(IntervalStatus.OK, delta)
            if delta <= bound
            else result(IntervalStatus.IMPLAUSIBLE)
        )
    if meter.counter_max_kwh is not None:
        wrapped = meter.counter_max_kwh - previous.energy_kwh + current.energy_kwh
        # A reading above counter_max means a misconfigured modulus: not a rollover.
        if 0 <= wrapped <= bound:
            return result(IntervalStatus.ROLLOVER, wrapped)
    return result(IntervalStatus.RESET)


def interval_energies(
    readings: Sequence[CounterReading], meter: MeterConfig
) -> list[IntervalEnergy]:
    """``interval_energy`` of each successive pair; readings must be in strictly increasing time."""
    return [interval_energy(a, b, meter) for a, b in itertools.pairwise(readings)]


class Window(StrEnum):
    QUARTER_HOUR = "15min"
    HOUR = "1h"
    DAY = "1d"


_STEP = {Window.QUARTER_HOUR: timedelta(minutes=15), Window.HOUR: timedelta(hours=1)}


def window_bounds(at: datetime, window: Window, tz: tzinfo = UTC) -> tuple[datetime, datetime]:
    """The window (start, end) containing ``at``, aligned to the wall clock of ``tz``, in UTC.

    Chinese sites want ``timezone(timedelta(hours=8))`` so that a day is a local day.
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    local = at.astimezone(tz)
    if window is Window.DAY:
        start = datetime.combine(local.date(), time(0), tzinfo=tz)
        end = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=tz)
        return _utc(start), _utc(end)
    minute = local.minute - local.minute % 15 if window is Window.QUARTER_HOUR else 0
    start = _utc(local.replace(minute=minute, second=0, microsecond=0))
    return start, start + _STEP[window]


def windows_between(
    start: datetime, end: datetime, window: Window, tz: tzinfo = UTC
) -> list[tuple[datetime, datetime]]:
    """Every window that overlaps [start, end), in order."""
    found: list[tuple[datetime, datetime]] = []
    cursor = _utc(start)
    while cursor < _utc(end):
        bounds = window_bounds(cursor, window, tz)
        found.append(bounds)
        cursor = bounds[1]
    return found


class IssueReason(StrEnum):
    NOT_COVERED = "not_covered"
    """No interval covers this span (no reading yet, or a hole in the series)."""
    INCOMPLETE_INTERVAL = "incomplete_interval"
    """A reset or implausible interval overlaps the window."""
    LONG_INTERVAL_ACROSS_BOUNDARY = "long_interval_across_boundary"
    """An interval longer than max_split crosses the window's edge: its share is unknown."""
    ZERO_DENOMINATOR = "zero_denominator"
    RATIO_OUT_OF_RANGE = "ratio_out_of_range"
    """PUE below 1 or REF above 1: the meters do not nest as configured."""


class Issue(BaseModel):
    """Why a window's figure is missing: which meter, what, and over which span."""

    model_config = ConfigDict(frozen=True)

    meter: str
    reason: IssueReason
    start: AwareDatetime
    end: AwareDatetime


class WindowEnergy(BaseModel):
    """One meter's energy over one window; None unless every overlapping interval is usable."""

    model_config = ConfigDict(frozen=True)

    start: AwareDatetime
    end: AwareDatetime
    energy_kwh: float | None
    issues: tuple[Issue, ...]


DEFAULT_MAX_SPLIT = timedelta(minutes=15)
"""Longest interval whose energy is split across a window edge in proportion to time."""


def window_energy(
    intervals: Sequence[IntervalEnergy],
    start: datetime,
    end: datetime,
    *,
    meter: str,
    max_split: timedelta = DEFAULT_MAX_SPLIT,
) -> WindowEnergy:
    """Energy of one meter over [start, end): intervals inside count whole, straddling ones pro rata.

    Pro rata assumes constant power within an interval, so only intervals up to
    ``max_split`` are split; an interval wholly inside the window counts
    whatever its length, since the counter integrated it exactly.
    """
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError("a window must end after it starts")
    issues: list[Issue] = []
    parts: list[float] = []
    cursor = start
    overlapping = sorted(
        (i for i in intervals if i.start < end and i.end > start), key=lambda i: i.start
    )
    for interval in overlapping:
        if interval.start < cursor and cursor > start:
            raise ValueError(f"intervals of meter {meter} overlap at {interval.start}")
        if interval.start > cursor:
            issues.append(
                Issue(meter=meter, reason=IssueReason.NOT_COVERED, start=cursor, end=interval.start)
            )
        cursor = interval.end
        if interval.energy_kwh is None:
            issues.append(
                Issue(
                    meter=meter,
                    reason=IssueReason.INCOMPLETE_INTERVAL,
                    start=interval.start,
                    end=interval.end,
                )
            )
        elif start <= interval.start and interval.end <= end:
            parts.append(interval.energy_kwh)
        elif interval.duration <= max_split:
            overlap = min(end, interval.end) - max(start, interval.start)
            parts.append(interval.energy_kwh * (overlap / interval.duration))
        else:
            issues.append(
                Issue(
                    meter=meter,
                    reason=IssueReason.LONG_INTERVAL_ACROSS_BOUNDARY,
                    start=interval.start,
                    end=interval.end,
                )
            )
    if cursor < end:
        issues.append(Issue(meter=meter, reason=IssueReason.NOT_COVERED, start=cursor, end=end))
    energy = math.fsum(parts) if not issues else None
    return WindowEnergy(start=start, end=end, energy_kwh=energy, issues=tuple(issues))


class PueCategory(IntEnum):
    """ISO/IEC 30134-2 category, by where the IT energy is measured."""

    PUE1 = 1
    """At the UPS output."""
    PUE2 = 2
    """At the PDU output."""
    PUE3 = 3
    """At the IT equipment input."""


IT_CIRCUIT_CATEGORY: dict[str, PueCategory] = {
    "ups_output": PueCategory.PUE1,
    "pdu_output": PueCategory.PUE2,
    "it_load": PueCategory.PUE3,
}


def pue_category(it_circuit: str) -> PueCategory:
    """The PUE category of an IT meter on this circuit; ValueError for a circuit that is not IT energy."""
    try:
        return IT_CIRCUIT_CATEGORY[it_circuit]
    except KeyError:
        raise ValueError(
            f"circuit {it_circuit!r} does not measure IT energy; one of {sorted(IT_CIRCUIT_CATEGORY)}"
        ) from None


class PueResult(BaseModel):
    """PUE of one window: facility (utility) energy / IT energy, or None with the issues."""

    model_config = ConfigDict(frozen=True)

    start: AwareDatetime
    end: AwareDatetime
    window: Window
    category: PueCategory
    facility_kwh: float | None
    it_kwh: float | None
    pue: float | None
    issues: tuple[Issue, ...]

    @property
    def complete(self) -> bool:
        return self.pue is not None


class RefResult(BaseModel):
    """REF (ISO/IEC 30134-3) of one window: renewable energy / facility energy, or None with the issues."""

    model_config = ConfigDict(frozen=True)

    start: AwareDatetime
    end: AwareDatetime
    window: Window
    renewable_kwh: float | None
    facility_kwh: float | None
    ref: float | None
    issues: tuple[Issue, ...]

    @property
    def complete(self) -> bool:
        return self.ref is not None


def total_energy(parts: Sequence[WindowEnergy], *, start: datetime, end: datetime) -> WindowEnergy:
    """Sum of several meters' energy over one window (several PDUs, a zone's circuits); None if any is."""
    if not parts:
        raise ValueError("no meter to sum")
    issues = tuple(issue for part in parts for issue in part.issues)
    known = [p.energy_kwh for p in parts if p.energy_kwh is not None]
    energy = math.fsum(known) if not issues and len(known) == len(parts) else None
    return WindowEnergy(start=_utc(start), end=_utc(end), energy_kwh=energy, issues=issues)


def efficiency_ratio(
    numerator: WindowEnergy,
    denominator: WindowEnergy,
    *,
    denominator_meter: str,
    low: float,
    high: float,
) -> tuple[float | None, tuple[Issue, ...]]:
    """numerator / denominator energy when both are known and the ratio lies in [low, high]."""
    issues = numerator.issues + denominator.issues
    if issues or numerator.energy_kwh is None or denominator.energy_kwh is None:
        return None, issues
    span = {"start": numerator.start, "end": numerator.end}
    if denominator.energy_kwh <= 0:
        return None, (Issue(meter=denominator_meter, reason=IssueReason.ZERO_DENOMINATOR, **span),)
    ratio = numerator.energy_kwh / denominator.energy_kwh
    if not low <= ratio <= high:
        return None, (Issue(meter="all", reason=IssueReason.RATIO_OUT_OF_RANGE, **span),)
    return ratio, ()


def pue_for_window(
    facility: Sequence[IntervalEnergy],
    it: Sequence[IntervalEnergy],
    *,
    at: datetime,
    window: Window,
    it_circuit: str,
    tz: tzinfo = UTC,
    max_split: timedelta = DEFAULT_MAX_SPLIT,
) -> PueResult:
    """PUE of the window containing ``at``; only when both meters are complete over all of it.

    ``facility`` are the utility meter's intervals (the total facility energy,
    which includes the IT load); ``it`` the IT meter's, on ``it_circuit``.
    A PUE below 1 is refused: it means the meters do not nest as assumed.
    """
    category = pue_category(it_circuit)
    start, end = window_bounds(at, window, tz)
    total = window_energy(facility, start, end, meter="utility", max_split=max_split)
    it_energy = window_energy(it, start, end, meter=it_circuit, max_split=max_split)
    pue, issues = efficiency_ratio(
        total, it_energy, denominator_meter=it_circuit, low=1.0, high=math.inf
    )
    return PueResult(
        start=start,
        end=end,
        window=window,
        category=category,
        facility_kwh=total.energy_kwh,
        it_kwh=it_energy.energy_kwh,
        pue=pue,
        issues=issues,
    )


def ref_for_window(
    renewable: Sequence[IntervalEnergy],
    facility: Sequence[IntervalEnergy],
    *,
    at: datetime,
    window: Window,
    tz: tzinfo = UTC,
    max_split: timedelta = DEFAULT_MAX_SPLIT,
) -> RefResult:
    """REF of the window containing ``at``: renewable / facility energy, in 0..1.

    Assumes the renewable meter measures a part of what the utility meter
    counts (a green feed behind it); a REF above 1 is refused as inconsistent.
    """
    start, end = window_bounds(at, window, tz)
    green = window_energy(renewable, start, end, meter="renewable", max_split=max_split)
    total = window_energy(facility, start, end, meter="utility", max_split=max_split)
    ref, issues = efficiency_ratio(green, total, denominator_meter="utility", low=0.0, high=1.0)
    return RefResult(
        start=start,
        end=end,
        window=window,
        renewable_kwh=green.energy_kwh,
        facility_kwh=total.energy_kwh,
        ref=ref,
        issues=issues,
    )


def pue_series(
    facility: Sequence[IntervalEnergy],
    it: Sequence[IntervalEnergy],
    *,
    start: datetime,
    end: datetime,
    window: Window,
    it_circuit: str,
    tz: tzinfo = UTC,
    max_split: timedelta = DEFAULT_MAX_SPLIT,
) -> list[PueResult]:
    """``pue_for_window`` for every window overlapping [start, end)."""
    return [
        pue_for_window(
            facility,
            it,
            at=w_start,
            window=window,
            it_circuit=it_circuit,
            tz=tz,
            max_split=max_split,
        )
        for w_start, _ in windows_between(start, end, window, tz)
    ]
