"""A measured quantity's metadata (unit, plausible range, display hints) and how to declare one."""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Role(StrEnum):
    """How a quantity behaves over time, which decides how it may be aggregated."""

    GAUGE = "gauge"
    COUNTER = "counter"
    STATE = "state"


class QuantitySpec(BaseModel):
    """What the catalog knows of one field of a device kind."""

    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    unit: str
    grafana_unit: str
    minimum: float | None
    maximum: float | None
    decimals: int
    role: Role
    required: bool
    normal: tuple[float, float] | None = None
    states: tuple[str, ...] = ()


def quantity(
    title: str,
    unit: str,
    minimum: float | None,
    maximum: float | None,
    *,
    grafana_unit: str | None = None,
    decimals: int = 1,
    role: Role = Role.GAUGE,
    normal: tuple[float, float] | None = None,
    optional: bool = False,
) -> Any:
    """Declare a numeric field of a device kind with its unit and hard plausible range."""
    extra: dict[str, Any] = {
        "unit": unit,
        "grafana_unit": grafana_unit or f"suffix: {unit}",
        "decimals": decimals,
        "role": role.value,
    }
    if normal is not None:
        extra["normal"] = list(normal)
    return Field(
        default=None if optional else ...,
        title=title,
        ge=minimum,
        le=maximum,
        json_schema_extra=extra,
    )


def state(title: str, *, optional: bool = False) -> Any:
    """Declare a categorical field (its allowed values come from the field's Literal type)."""
    return Field(
        default=None if optional else ...,
        title=title,
        json_schema_extra={"unit": "", "grafana_unit": "none", "decimals": 0, "role": "state"},
    )
