"""Per-site ranges from the ingest's configuration, as subclasses of the catalog's kind models."""

from typing import Any

from pydantic import Field, create_model
from pydantic_core import PydanticUndefined

from devices import KINDS, KindValues
from pipelines.config import SiteValidation


class SiteLimits:
    """The model a reading of (site, kind) is checked against: the catalog's, or a site's own.

    A site's limits replace the catalog's range of a quantity at that site
    (DOMAIN.md: a river's stage and maximum discharge are per station), so
    they are built once into a subclass of the kind's model and the check
    stays one pydantic validation per reading.
    """

    def __init__(self, sites: dict[str, SiteValidation]) -> None:
        self._models: dict[tuple[str, str], type[KindValues]] = {}
        self._notes: dict[tuple[str, str], dict[str, str]] = {}
        for site, validation in sites.items():
            for kind, quantities in validation.limits.items():
                if quantities:
                    self._models[site, kind] = _narrowed(KINDS[kind], quantities)
                    self._notes[site, kind] = {
                        name: f"validation.sites.{site!r}.limits.{kind}.{name} = "
                        f"[{_bound(low)}, {_bound(high)}]"
                        for name, (low, high) in quantities.items()
                    }

    def model(self, site: str, kind: str) -> type[KindValues] | None:
        """The site's own model of ``kind``, or None for the catalog's."""
        return self._models.get((site, kind)) if self._models else None

    def note(self, site: str, kind: str, detail: str) -> str | None:
        """The site's settings a refusal's ``detail`` is about, naming their keys; None if none."""
        keys = [
            key
            for name, key in self._notes[site, kind].items()
            if detail.startswith(f"{name}:") or f"; {name}:" in detail
        ]
        return "; ".join(keys) if keys else None


def _bound(value: float | None) -> str:
    return "catalog" if value is None else repr(value)


def _narrowed(
    base: type[KindValues], quantities: dict[str, tuple[float | None, float | None]]
) -> type[KindValues]:
    fields: dict[str, Any] = {}
    for name, (low, high) in quantities.items():
        info = base.model_fields[name]
        spec = base.quantity(name)
        fields[name] = (
            info.annotation,
            Field(
                default=None if not info.is_required() else PydanticUndefined,
                title=info.title,
                ge=spec.minimum if low is None else low,
                le=spec.maximum if high is None else high,
                json_schema_extra=info.json_schema_extra,
            ),
        )
    model: type[KindValues] = create_model(base.__name__, __base__=base, **fields)
    return model
