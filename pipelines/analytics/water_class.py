"""Surface-water quality class of one sample under GB 3838-2002, from the five parameters ecotel's sondes carry."""

import math
from enum import IntEnum, StrEnum
from typing import Literal, NamedTuple

from devices.ecology import WaterQuality


class WaterClass(IntEnum):
    """GB 3838-2002 class; a larger value is worse water, so ``max()`` is the sample's class."""

    I = 1  # noqa: E741 - the standard's own name for the class
    II = 2
    III = 3
    IV = 4
    V = 5
    INFERIOR_V = 6
    """Worse than V ("劣V类")."""

    @property
    def label(self) -> str:
        return "inferior V" if self is WaterClass.INFERIOR_V else self.name


class Parameter(StrEnum):
    """The GB 3838-2002 basic items classed here; values are the WaterQuality field names."""

    PH = "ph"
    DISSOLVED_OXYGEN = "dissolved_oxygen"
    PERMANGANATE_INDEX = "permanganate_index"
    AMMONIA_NITROGEN = "ammonia_nitrogen"
    TOTAL_PHOSPHORUS = "total_phosphorus"


WaterBody = Literal["river", "lake"]
"""Total phosphorus has separate limits for lakes and reservoirs."""

PH_RANGE = (6.0, 9.0)
"""Same for classes I to V; outside it the sample is inferior V."""

DO_AT_LEAST = (7.5, 6.0, 5.0, 3.0, 2.0)
"""Dissolved oxygen (mg/L), classes I..V."""

DO_SATURATION_CLASS_I_PERCENT = 90.0
"""Class I alternative for dissolved oxygen: at least 90% saturation."""

AT_MOST: dict[Parameter, tuple[float, float, float, float, float]] = {
    Parameter.PERMANGANATE_INDEX: (2.0, 4.0, 6.0, 10.0, 15.0),
    Parameter.AMMONIA_NITROGEN: (0.15, 0.5, 1.0, 1.5, 2.0),
    Parameter.TOTAL_PHOSPHORUS: (0.02, 0.1, 0.2, 0.3, 0.4),
}
"""Upper limits (mg/L), classes I..V; total phosphorus as for rivers."""

TOTAL_PHOSPHORUS_LAKE_AT_MOST = (0.01, 0.025, 0.05, 0.1, 0.2)
"""Total phosphorus (mg/L) for lakes and reservoirs, classes I..V."""

_CLASSES = (WaterClass.I, WaterClass.II, WaterClass.III, WaterClass.IV, WaterClass.V)
_PARAMETERS = tuple(Parameter)
"""In the order of ``classify``'s arguments."""


# Results are named tuples, not pydantic models or frozen dataclasses: they are built for
# every water-quality reading the ingest writes and never cross a boundary. With the models
# (and a dict keyed by the enum) a reading cost 20 us in python -m bench.derive_windows,
# with frozen dataclasses 16; named tuples and one pass in ``classify`` took water_fields
# from 18.7 to 9.2 us and classify_sample from 12.3 to 7.7 (timeit, this machine).
class ParameterClass(NamedTuple):
    """The class one parameter alone would give the sample."""

    parameter: Parameter
    value: float
    water_class: WaterClass


class WaterClassResult(NamedTuple):
    """A sample's class with the parameters that decided it and those it was not classed on."""

    water_class: WaterClass
    deciding: tuple[Parameter, ...]
    """Every parameter whose own class equals the sample's (ties are all listed)."""
    missing: tuple[Parameter, ...]
    """Parameters of this module absent from the sample: the class is a best case for them."""
    per_parameter: tuple[ParameterClass, ...]

    @property
    def complete(self) -> bool:
        """All five parameters were present (still only 5 of the standard's 24 basic items)."""
        return not self.missing


def _check(parameter: Parameter, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{parameter.value} must be a finite, non-negative number, got {value!r}")


def _at_most(value: float, limits: tuple[float, ...]) -> WaterClass:
    # Inclusive: a value exactly at a class's limit belongs to that (better) class.
    for water_class, limit in zip(_CLASSES, limits, strict=True):
        if value <= limit:
            return water_class
    return WaterClass.INFERIOR_V


def class_of_ph(ph: float) -> WaterClass:
    """Class I for pH in 6-9 inclusive (the pH limit is the same for I-V), otherwise inferior V."""
    _check(Parameter.PH, ph)
    return WaterClass.I if PH_RANGE[0] <= ph <= PH_RANGE[1] else WaterClass.INFERIOR_V


def class_of_dissolved_oxygen(
    mg_per_l: float, saturation_percent: float | None = None
) -> WaterClass:
    """Class by "at least" limits; class I also when saturation is at least 90% (the standard's alternative)."""
    _check(Parameter.DISSOLVED_OXYGEN, mg_per_l)
    # At plateau pressure saturated water holds under 7.5 mg/L, so without the
    # saturation route a pristine headwater could never reach class I.
    if saturation_percent is not None and saturation_percent >= DO_SATURATION_CLASS_I_PERCENT:
        return WaterClass.I
    for water_class, limit in zip(_CLASSES, DO_AT_LEAST, strict=True):
        if mg_per_l >= limit:
            return water_class
    return WaterClass.INFERIOR_V


def class_of(parameter: Parameter, value: float, water_body: WaterBody = "river") -> WaterClass:
    """The class one parameter's value alone gives (dissolved oxygen by mg/L only)."""
    if parameter is Parameter.PH:
        return class_of_ph(value)
    if parameter is Parameter.DISSOLVED_OXYGEN:
        return class_of_dissolved_oxygen(value)
    _check(parameter, value)
    if parameter is Parameter.TOTAL_PHOSPHORUS and water_body == "lake":
        return _at_most(value, TOTAL_PHOSPHORUS_LAKE_AT_MOST)
    return _at_most(value, AT_MOST[parameter])


def classify(
    *,
    ph: float | None = None,
    dissolved_oxygen: float | None = None,
    permanganate_index: float | None = None,
    ammonia_nitrogen: float | None = None,
    total_phosphorus: float | None = None,
    dissolved_oxygen_saturation: float | None = None,
    water_body: WaterBody = "river",
) -> WaterClassResult:
    """Class a sample from the parameters present: the worst class over them.

    Raises ValueError when none of the five parameters is present, or a value
    is negative or not finite.
    """
    values = (ph, dissolved_oxygen, permanganate_index, ammonia_nitrogen, total_phosphorus)
    per_parameter: list[ParameterClass] = []
    missing: list[Parameter] = []
    worst = WaterClass.I
    for parameter, value in zip(_PARAMETERS, values):  # noqa: B905 - both are five long
        if value is None:
            missing.append(parameter)
            continue
        if parameter is Parameter.DISSOLVED_OXYGEN:
            water_class = class_of_dissolved_oxygen(value, dissolved_oxygen_saturation)
        else:
            water_class = class_of(parameter, value, water_body)
        worst = max(worst, water_class)
        per_parameter.append(ParameterClass(parameter, float(value), water_class))
    if not per_parameter:
        raise ValueError("no GB 3838-2002 parameter in the sample: nothing to class")
    return WaterClassResult(
        worst,
        tuple([p.parameter for p in per_parameter if p.water_class is worst]),
        tuple(missing),
        tuple(per_parameter),
    )


def classify_sample(
    sample: WaterQuality,
    *,
    dissolved_oxygen_saturation: float | None = None,
    water_body: WaterBody = "river",
) -> WaterClassResult:
    """Class a WaterQuality reading; its optional parameters may be missing."""
    return classify(
        ph=sample.ph,
        dissolved_oxygen=sample.dissolved_oxygen,
        permanganate_index=sample.permanganate_index,
        ammonia_nitrogen=sample.ammonia_nitrogen,
        total_phosphorus=sample.total_phosphorus,
        dissolved_oxygen_saturation=dissolved_oxygen_saturation,
        water_body=water_body,
    )
