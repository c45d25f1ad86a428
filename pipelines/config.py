"""The ingest service's configuration: broker, InfluxDB, batching and the dead-letter store."""

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from collector import wire
from collector.settings_loader import FileSettings, load_settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65_535)
    client_id: str = Field(
        default="ecotel-ingest",
        description="Stable id: the broker keeps this persistent session's queue while we are away",
    )
    keepalive_s: int = Field(default=30, ge=5)
    topics: list[str] = Field(
        default=[wire.READINGS_FILTER, wire.STATUS_FILTER, wire.HEALTH_FILTER], min_length=1
    )
    max_message_bytes: int = Field(default=1_048_576, ge=1_024)
    max_unacked_messages: int = Field(
        default=500,
        ge=1,
        description="Write at once when this many messages await their PUBACK; keep it below "
        "the broker's max_inflight_messages (1000 in deploy/mosquitto/mosquitto.conf)",
    )


class InfluxSettings(_Section):
    url: str = "http://127.0.0.1:8086"
    database: str = Field(default="ecotel", min_length=1)
    create_database: bool = True
    username: str | None = None
    password: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)


class BatchSettings(_Section):
    max_points: int = Field(default=5_000, ge=1, le=500_000)
    max_delay_s: float = Field(default=1.0, gt=0, le=60)
    max_pending_points: int = Field(
        default=200_000, ge=1, description="Backpressure: stop taking messages beyond this"
    )
    retry_max_s: float = Field(default=30.0, gt=0)


class DeadLetterSettings(_Section):
    path: Path = Path("ingest-state/dead-letters.sqlite3")


class ValidationSettings(_Section):
    """Checks beyond the catalog's schema and ranges."""

    earliest_time: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Readings older than this come from an unset clock (1970): dead-lettered as clock_unset",
    )
    max_future_s: float = Field(
        default=600.0,
        gt=0,
        description="Readings further ahead of the ingest's clock: time_in_future",
    )


class IngestSettings(FileSettings):
    """A whole ingest configuration file (sample: deploy/ingest/ingest.toml)."""

    model_config = SettingsConfigDict(
        env_prefix="ECOTEL_INGEST_", env_nested_delimiter="__", extra="forbid"
    )

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    dead_letter: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    stats_interval_s: float = Field(default=10.0, gt=0, description="How often to log counters")


def load_ingest_config(path: Path) -> IngestSettings:
    """Read an ingest TOML file; ConfigError names the file and key of any problem."""
    return load_settings(IngestSettings, path)
