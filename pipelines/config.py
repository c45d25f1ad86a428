"""The ingest service's configuration: broker, InfluxDB, batching and the dead-letter store."""

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from collector import wire
from collector.settings_loader import FileSettings, load_settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


SHARE_PREFIX = "$share/"


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65_535)
    client_id: str = Field(
        default="ecotel-ingest",
        description="Stable id: the broker keeps this persistent session's queue while we are away",
    )
    shared_group: str | None = Field(
        default=None,
        description="Share the subscription among workers: each topic filter is subscribed as "
        "$share/<group>/<filter> and the broker hands every message to one member only",
    )
    worker: int | None = Field(
        default=None,
        ge=0,
        description="Worker number: the session's client id becomes <client_id>-<worker> "
        "(ecotel-ingest run --worker N; the supervisor sets it)",
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

    @field_validator("shared_group")
    @classmethod
    def _one_topic_level(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError("a share name is one topic level: not empty, no '/', '+' or '#'")
        return value

    @field_validator("topics")
    @classmethod
    def _no_share_prefix(cls, value: list[str]) -> list[str]:
        # The ingest must know that it sees only part of each gateway's
        # messages (sequence tracking depends on it), so sharing is a setting.
        for topic in value:
            if topic.startswith(SHARE_PREFIX):
                raise ValueError(f"{topic!r}: set mqtt.shared_group instead of a $share/ filter")
        return value

    @property
    def session_id(self) -> str:
        """The MQTT client id: ``client_id``, suffixed with the worker number if there is one."""
        return self.client_id if self.worker is None else f"{self.client_id}-{self.worker}"

    @property
    def subscriptions(self) -> list[str]:
        """The filters to subscribe to, in their shared form when ``shared_group`` is set."""
        if self.shared_group is None:
            return list(self.topics)
        return [f"{SHARE_PREFIX}{self.shared_group}/{topic}" for topic in self.topics]


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
    path: Path = Field(
        default=Path("ingest-state/dead-letters.sqlite3"),
        description="One file for all workers on a host: SQLite in WAL mode takes one writer at "
        "a time and the others wait (busy timeout), which rare refusals never notice",
    )


class SpoolSettings(_Section):
    """Where batches wait on disk while InfluxDB is down (pipelines/spool.py)."""

    enabled: bool = True
    path: Path | None = Field(
        default=None,
        description="Default: spool.sqlite3 beside the dead-letter store. Each worker of a "
        "shared group uses its own file, suffixed -worker<N>",
    )
    max_mb: float = Field(
        default=1024,
        gt=0,
        description="Beyond this the ingest stops acknowledging: the broker holds the rest",
    )

    def path_for(self, worker: int | None, dead_letters: Path) -> Path:
        path = self.path or dead_letters.with_name("spool.sqlite3")
        if worker is None:
            return path
        return path.with_name(f"{path.stem}-worker{worker}{path.suffix}")


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
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    stats_interval_s: float = Field(default=10.0, gt=0, description="How often to log counters")


def load_ingest_config(path: Path) -> IngestSettings:
    """Read an ingest TOML file; ConfigError names the file and key of any problem."""
    return load_settings(IngestSettings, path)


def for_worker(settings: IngestSettings, worker: int) -> IngestSettings:
    """The same settings for worker number ``worker`` (its own client id, so its own session)."""
    if worker < 0:
        raise ValueError(f"worker number {worker} is negative")
    return settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update={"worker": worker})})
