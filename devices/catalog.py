"""The device catalog: every kind ecotel knows, looked up by name, and the check of a reading against it."""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from devices.datacenter import EnergyMeter, RackEnvironment
from devices.ecology import Hydrology, SoilProfile, StationHealth, WaterQuality, Weather
from devices.highway import RoadWeather, TrafficDetector
from devices.kind import Domain, KindValues

KINDS: Mapping[str, type[KindValues]] = MappingProxyType(
    {
        k.kind: k
        for k in (
            WaterQuality,
            Hydrology,
            Weather,
            SoilProfile,
            StationHealth,
            TrafficDetector,
            RoadWeather,
            EnergyMeter,
            RackEnvironment,
        )
    }
)


class CatalogError(ValueError):
    """A reading the catalog refuses; ``code`` is a short stable reason, ``detail`` says what is wrong."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def kind_of(name: str) -> type[KindValues]:
    """The kind called ``name``; CatalogError('unknown_kind') if there is none."""
    try:
        return KINDS[name]
    except KeyError:
        raise CatalogError("unknown_kind", f"no device kind {name!r} in the catalog") from None


def kinds_in(domain: Domain) -> list[type[KindValues]]:
    """The kinds of one domain, in catalog order."""
    return [k for k in KINDS.values() if k.domain is domain]


def check_values(
    kind: str,
    channel: str | None,
    values: Mapping[str, Any],
    model: type[KindValues] | None = None,
) -> KindValues:
    """Validate one reading's channel and values against its kind's model.

    ``model`` replaces the kind's model (a subclass with a site's own ranges).
    Raises CatalogError with code ``unknown_kind``, ``bad_channel`` or
    ``invalid_values`` (the detail lists every failing field).
    """
    model = model or kind_of(kind)
    spec = model.channel
    if spec is None and channel is not None:
        raise CatalogError("bad_channel", f"{kind} readings have no channel, got {channel!r}")
    if spec is not None:
        if channel is None:
            raise CatalogError("bad_channel", f"{kind} readings need a channel ({spec.title})")
        if spec.allowed and channel not in spec.allowed:
            raise CatalogError(
                "bad_channel",
                f"{spec.tag} {channel!r} is not one of {', '.join(spec.allowed)}",
            )
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise CatalogError("invalid_values", _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "values"
        got = err.get("input")
        shown = "" if err["type"] == "missing" else f" (got {got!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)
