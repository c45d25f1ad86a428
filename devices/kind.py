"""The base of every device kind: a typed, validated set of values plus what the catalog says of it."""

import typing
from enum import StrEnum
from functools import cache
from typing import Any, ClassVar

import annotated_types
from pydantic import BaseModel, ConfigDict

from devices.quantity import QuantitySpec, Role


class Domain(StrEnum):
    """The three kinds of deployment that feed ecotel."""

    ECOLOGY = "ecology"
    HIGHWAY = "highway"
    DATACENTER = "datacenter"


class ChannelSpec(BaseModel):
    """A kind whose device reports several parallel series (lanes, depths, circuits, racks).

    Each reading then carries a channel, stored as the InfluxDB tag ``tag``.
    """

    model_config = ConfigDict(frozen=True)

    tag: str
    title: str
    allowed: tuple[str, ...] = ()
    """If not empty, the only channel names accepted."""


class KindValues(BaseModel):
    """The values of one reading of one device kind; subclasses declare the quantities."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, validate_default=False
    )

    kind: ClassVar[str]
    domain: ClassVar[Domain]
    title: ClassVar[str]
    channel: ClassVar[ChannelSpec | None] = None

    @classmethod
    def quantities(cls) -> tuple[QuantitySpec, ...]:
        """Every field of this kind with unit, range and display hints, in declaration order."""
        return _quantities(cls)

    @classmethod
    def quantity(cls, name: str) -> QuantitySpec:
        """One field's metadata; KeyError if the kind has no such field."""
        for spec in cls.quantities():
            if spec.name == name:
                return spec
        raise KeyError(f"{cls.kind} has no quantity {name!r}")


@cache
def _quantities(cls: type[KindValues]) -> tuple[QuantitySpec, ...]:
    specs = []
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict):
            raise TypeError(f"{cls.__name__}.{name} must be declared with quantity() or state()")
        minimum = maximum = None
        for meta in info.metadata:
            if isinstance(meta, annotated_types.Ge):
                minimum = float(typing.cast(float, meta.ge))
            elif isinstance(meta, annotated_types.Le):
                maximum = float(typing.cast(float, meta.le))
        normal: Any = extra.get("normal")
        specs.append(
            QuantitySpec(
                name=name,
                title=info.title or name,
                unit=str(extra["unit"]),
                grafana_unit=str(extra["grafana_unit"]),
                minimum=minimum,
                maximum=maximum,
                decimals=int(typing.cast(int, extra["decimals"])),
                role=Role(str(extra["role"])),
                required=info.is_required(),
                normal=tuple(normal) if normal is not None else None,
                states=_literal_values(info.annotation),
            )
        )
    return tuple(specs)


def _literal_values(annotation: Any) -> tuple[str, ...]:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return tuple(str(v) for v in typing.get_args(arg))
    return ()
