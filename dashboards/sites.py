"""Where the stations stand: the site list with coordinates that the ecology map draws, read from a TOML file."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from collector.settings_loader import FileSettings, load_settings
from devices import Identifier

DEFAULT_SITES = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "sites.toml"


class Station(BaseModel):
    """One site as the gateways name it (the ``site`` tag), with its place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: Identifier
    basin: str = ""
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    altitude_m: float = Field(ge=-500, le=9_000)


class SitesFile(FileSettings):
    """``[[stations]]`` entries; environment ECOTEL_SITES_* overrides nothing useful but is accepted."""

    model_config = SettingsConfigDict(env_prefix="ECOTEL_SITES_", env_nested_delimiter="__")

    stations: list[Station] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "SitesFile":
        names = [s.site for s in self.stations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"site listed twice: {', '.join(duplicates)}")
        return self


def load_sites(path: Path = DEFAULT_SITES) -> list[Station]:
    """The stations of ``path``; ConfigError naming the file and key when it is wrong."""
    return load_settings(SitesFile, path).stations


def sites_csv(stations: list[Station]) -> str:
    """The stations as the CSV the map's static query carries (site,basin,latitude,longitude,altitude_m)."""
    rows = ["site,basin,latitude,longitude,altitude_m"]
    for s in stations:
        # Identifiers hold no comma-free guarantee: quote the text columns.
        site = s.site.replace('"', '""')
        basin = s.basin.replace('"', '""')
        rows.append(f'"{site}","{basin}",{s.latitude},{s.longitude},{s.altitude_m:g}')
    return "\n".join(rows)
