"""Quality flags for plausible but suspicious values: a stuck sensor, a spike against the previous reading."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from devices import KINDS, KindValues, Role
from pipelines.config import QualitySettings

SeriesId = tuple[str, str, str, str, str | None]
"""site, gateway, device, kind, channel: one series of readings."""

_Plan = tuple[tuple[str, float | None, bool, float | None, float | None], ...]
"""Per numeric quantity: name, spike threshold, judged for stuck, catalog minimum and maximum."""


@dataclass(slots=True)
class _Run:
    """One quantity of a series: its last value, how many readings it has held, since when,
    and the level of an unconfirmed spike."""

    last: float
    start: datetime
    count: int = 1
    spiked: float | None = None


@dataclass(slots=True)
class _Series:
    time: datetime
    # One dict lookup per quantity and reading: four (last, runs, start, spiked) cost
    # ~4 us per reading of the ingest's ~20 (docs/performance.md).
    runs: dict[str, _Run] = field(default_factory=dict)


class QualityChecker:
    """Flags each reading against the previous reading of its series, in arrival order.

    ``check`` returns ``None`` for nothing suspicious, else the flags, e.g.
    ``"spike:stage,stuck:ph"``. A reading not newer than the latest one seen
    of its series (a redelivery, or late) is not judged: it returns None and
    changes nothing, so a redelivered reading never rewrites the flag its
    first copy got. After a spike the series keeps comparing with the value
    before it: a lone outlier flags once, and a reading that stays near the
    new level is a step, not a second spike.
    """

    def __init__(self, settings: QualitySettings) -> None:
        self.settings = settings
        self._series: dict[SeriesId, _Series] = {}
        self._plans: dict[type[KindValues], _Plan] = {}
        self.flagged: dict[str, int] = {"spike": 0, "stuck": 0}

    def check(
        self,
        series: SeriesId,
        time: datetime,
        model: type[KindValues],
        values: Mapping[str, object],
    ) -> str | None:
        """Judge one reading's checked ``values`` of ``model`` (its fields by name)."""
        plan = self._plans.get(model)
        if plan is None:
            plan = self._plans[model] = self._plan(model)
        return self.observe(series, time, values, plan)

    def observe(
        self,
        series: SeriesId,
        time: datetime,
        values: Mapping[str, object],
        plan: _Plan | None = None,
    ) -> str | None:
        """Judge one reading's values; also how stored history is replayed at start."""
        if plan is None:
            plan = self._plan_for_kind(series[3])
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = _Series(time)
            fresh = True
        elif time <= state.time:
            return None
        else:
            fresh = (time - state.time).total_seconds() > self.settings.compare_within_s
            state.time = time
        flags: list[str] = []
        settings = self.settings
        stuck_readings, stuck_min_s = settings.stuck_readings, settings.stuck_min_s
        runs = state.runs
        for name, spike, stuck, low, high in plan:
            value = values.get(name)
            if type(value) is not float:  # the model's floats; else history's or a missing one
                if not isinstance(value, float | int) or isinstance(value, bool):
                    continue
                value = float(value)
            run = runs.get(name)
            if fresh or run is None:
                runs[name] = _Run(value, time)
                continue
            previous = run.last
            if spike is not None and abs(value - previous) > spike:
                spiked = run.spiked
                if spiked is not None and abs(value - spiked) <= spike:
                    # Stayed near the level of the last jump: a step change.
                    run.spiked = None
                else:
                    run.spiked = value
                    flags.append(f"spike:{name}")
                    continue
            else:
                run.spiked = None
            if value == previous:
                run.count += 1
            else:
                run.last = value
                run.count = 1
                run.start = time
            if (
                stuck
                and run.count >= stuck_readings
                and value != low
                and value != high
                and (time - run.start).total_seconds() >= stuck_min_s
            ):
                flags.append(f"stuck:{name}")
        if not flags:
            return None
        for flag in flags:
            self.flagged[flag.partition(":")[0]] += 1
        return ",".join(sorted(flags))

    def _plan_for_kind(self, kind: str) -> _Plan:
        model = KINDS[kind]
        plan = self._plans.get(model)
        if plan is None:
            plan = self._plans[model] = self._plan(model)
        return plan

    def _plan(self, model: type[KindValues]) -> _Plan:
        settings = self.settings
        plan = []
        for spec in model.quantities():
            if spec.role is Role.STATE:
                continue
            spike = settings.spike.get(spec.name)
            if spike is None and spec.minimum is not None and spec.maximum is not None:
                spike = settings.spike_fraction * (spec.maximum - spec.minimum)
            # A counter stands still honestly (no traffic, no energy used).
            stuck = spec.role is Role.GAUGE and spec.name not in settings.stuck_exempt
            if spec.role is Role.COUNTER:
                spike = settings.spike.get(spec.name)
            plan.append((spec.name, spike, stuck, spec.minimum, spec.maximum))
        return tuple(plan)
