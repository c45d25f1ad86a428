"""GB 3838-2002 water class: hand-worked boundaries, missing parameters and monotonicity."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.ecology import WaterQuality
from pipelines.analytics.water_class import (
    Parameter,
    WaterClass,
    class_of,
    class_of_dissolved_oxygen,
    classify,
    classify_sample,
)

W = WaterClass
P = Parameter


@pytest.mark.parametrize(
    ("parameter", "value", "expected"),
    [
        # Exactly at the class III limit is class III ("at most"/"at least" inclusive).
        (P.DISSOLVED_OXYGEN, 5.0, W.III),
        (P.DISSOLVED_OXYGEN, 4.99, W.IV),
        (P.PERMANGANATE_INDEX, 6.0, W.III),
        (P.PERMANGANATE_INDEX, 6.01, W.IV),
        (P.AMMONIA_NITROGEN, 1.0, W.III),
        (P.AMMONIA_NITROGEN, 1.001, W.IV),
        (P.TOTAL_PHOSPHORUS, 0.2, W.III),
        (P.TOTAL_PHOSPHORUS, 0.201, W.IV),
        # Every class edge of each table row.
        (P.DISSOLVED_OXYGEN, 7.5, W.I),
        (P.DISSOLVED_OXYGEN, 6.0, W.II),
        (P.DISSOLVED_OXYGEN, 3.0, W.IV),
        (P.DISSOLVED_OXYGEN, 2.0, W.V),
        (P.DISSOLVED_OXYGEN, 1.99, W.INFERIOR_V),
        (P.PERMANGANATE_INDEX, 2.0, W.I),
        (P.PERMANGANATE_INDEX, 4.0, W.II),
        (P.PERMANGANATE_INDEX, 10.0, W.IV),
        (P.PERMANGANATE_INDEX, 15.0, W.V),
        (P.PERMANGANATE_INDEX, 15.1, W.INFERIOR_V),
        (P.AMMONIA_NITROGEN, 0.15, W.I),
        (P.AMMONIA_NITROGEN, 0.5, W.II),
        (P.AMMONIA_NITROGEN, 1.5, W.IV),
        (P.AMMONIA_NITROGEN, 2.0, W.V),
        (P.AMMONIA_NITROGEN, 2.01, W.INFERIOR_V),
        (P.TOTAL_PHOSPHORUS, 0.02, W.I),
        (P.TOTAL_PHOSPHORUS, 0.1, W.II),
        (P.TOTAL_PHOSPHORUS, 0.3, W.IV),
        (P.TOTAL_PHOSPHORUS, 0.4, W.V),
        (P.TOTAL_PHOSPHORUS, 0.41, W.INFERIOR_V),
        (P.PH, 6.0, W.I),
        (P.PH, 9.0, W.I),
        (P.PH, 5.99, W.INFERIOR_V),
        (P.PH, 9.01, W.INFERIOR_V),
    ],
)
def test_single_parameter_class(parameter: Parameter, value: float, expected: WaterClass) -> None:
    assert class_of(parameter, value) is expected


def test_lake_phosphorus_limits_are_stricter() -> None:
    assert class_of(P.TOTAL_PHOSPHORUS, 0.05, "lake") is W.III
    assert class_of(P.TOTAL_PHOSPHORUS, 0.05, "river") is W.II


def test_saturation_is_the_class_i_alternative_for_dissolved_oxygen() -> None:
    # Saturated water at ~4,500 m holds about 7 mg/L: class II by mg/L, class I by saturation.
    assert class_of_dissolved_oxygen(7.1) is W.II
    assert class_of_dissolved_oxygen(7.1, saturation_percent=95.0) is W.I
    assert class_of_dissolved_oxygen(7.1, saturation_percent=89.9) is W.II


def test_the_worst_parameter_decides_and_ties_are_all_listed() -> None:
    result = classify(
        ph=7.8,
        dissolved_oxygen=8.0,
        permanganate_index=6.0,
        ammonia_nitrogen=1.0,
        total_phosphorus=0.05,
    )
    assert result.water_class is W.III
    assert result.deciding == (P.PERMANGANATE_INDEX, P.AMMONIA_NITROGEN)
    assert result.missing == ()
    assert result.complete


def test_ph_outside_6_to_9_is_inferior_v_whatever_the_rest() -> None:
    result = classify(ph=9.5, dissolved_oxygen=9.0, ammonia_nitrogen=0.05)
    assert result.water_class is W.INFERIOR_V
    assert result.water_class.label == "inferior V"
    assert result.deciding == (P.PH,)


def test_missing_parameters_are_reported_and_the_class_uses_what_is_there() -> None:
    sample = WaterQuality(
        water_temperature=4.0,
        ph=8.1,
        dissolved_oxygen=6.5,
        conductivity=320.0,
        turbidity=12.0,
        ammonia_nitrogen=0.1,
    )
    result = classify_sample(sample)
    assert result.water_class is W.II
    assert result.deciding == (P.DISSOLVED_OXYGEN,)
    assert result.missing == (P.PERMANGANATE_INDEX, P.TOTAL_PHOSPHORUS)
    assert not result.complete


def test_a_sample_without_any_parameter_or_with_a_bad_value_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to class"):
        classify()
    with pytest.raises(ValueError, match="finite"):
        classify(ph=float("nan"))
    with pytest.raises(ValueError, match="non-negative"):
        classify(ammonia_nitrogen=-0.1)


_sample = st.fixed_dictionaries(
    {
        "ph": st.floats(0, 14),
        "dissolved_oxygen": st.floats(0, 20),
        "permanganate_index": st.floats(0, 100),
        "ammonia_nitrogen": st.floats(0, 50),
        "total_phosphorus": st.floats(0, 20),
    }
)


def _class(values: dict[str, float]) -> WaterClass:
    return classify(
        ph=values.get("ph"),
        dissolved_oxygen=values.get("dissolved_oxygen"),
        permanganate_index=values.get("permanganate_index"),
        ammonia_nitrogen=values.get("ammonia_nitrogen"),
        total_phosphorus=values.get("total_phosphorus"),
    ).water_class


# Which way is worse for each parameter: DO falls, the pollutants rise.
_WORSE_SIGN = {
    "dissolved_oxygen": -1.0,
    "permanganate_index": 1.0,
    "ammonia_nitrogen": 1.0,
    "total_phosphorus": 1.0,
}


@given(
    sample=_sample,
    name=st.sampled_from(sorted(_WORSE_SIGN)),
    step=st.floats(0, 50),
)
def test_the_class_never_improves_when_a_parameter_worsens(
    sample: dict[str, float], name: str, step: float
) -> None:
    worse = dict(sample)
    worse[name] = max(0.0, sample[name] + _WORSE_SIGN[name] * step)
    assert _class(worse) >= _class(sample)


@given(sample=_sample, shift=st.floats(0, 5))
def test_ph_moving_away_from_neutral_never_improves_the_class(
    sample: dict[str, float], shift: float
) -> None:
    worse = dict(sample)
    worse["ph"] = sample["ph"] + shift if sample["ph"] >= 7.5 else max(0.0, sample["ph"] - shift)
    assert _class(worse) >= _class(sample)


@given(sample=_sample, drop=st.sampled_from(sorted(_WORSE_SIGN)))
def test_dropping_a_parameter_never_worsens_the_class(sample: dict[str, float], drop: str) -> None:
    fewer = {k: v for k, v in sample.items() if k != drop}
    assert _class(fewer) <= _class(sample)
