"""The ingest service's configuration: broker, InfluxDB, batching and the dead-letter store."""

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from collector import wire
from collector.config import TlsSettings
from collector.settings_loader import FileSettings, load_settings
from devices import KINDS, Identifier, Role
from pipelines.derive_config import DeriveSettings


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
    reconnect_max_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Longest wait between attempts to reach the broker (from 0.5 s, doubling): a "
        "broker back after a restart is found within this, and its queue drains",
    )
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
    stop_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=25,
        description="On SIGTERM/SIGINT, how long to finish writing and acknowledging what was "
        "received before dropping it unacknowledged (the broker redelivers it); below the "
        "supervisor's 30 s before SIGKILL",
    )
    username: str | None = Field(
        default=None, description="For a broker with a password file (and per-client ACLs)"
    )
    password: SecretStr | None = Field(
        default=None, description="Better set from the environment: ECOTEL_INGEST_MQTT__PASSWORD"
    )
    tls: TlsSettings | None = Field(
        default=None,
        description="Absent: plain MQTT. The same keys as the gateway's broker.tls: ca_file, "
        "cert_file, key_file",
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
        """The filters to subscribe to, in their shared form when ``shared_group`` is set.

        A group's gateway statuses go to worker 0 alone, on a plain subscription: a status
        point must be stamped after the gateway's previous status (pipelines/status_order.py),
        which only one subscriber taking them in the broker's order can do.
        """
        if self.shared_group is None:
            return list(self.topics)
        return [
            topic if _is_status(topic) else f"{SHARE_PREFIX}{self.shared_group}/{topic}"
            for topic in self.topics
            if not _is_status(topic) or self.worker in (None, 0)
        ]

    @property
    def every_form(self) -> list[str]:
        """Every filter a session of this client id may hold: plain and shared, as a single
        ingest, a worker, or a worker of an earlier version had them."""
        shared = (
            [f"{SHARE_PREFIX}{self.shared_group}/{topic}" for topic in self.topics]
            if self.shared_group is not None
            else []
        )
        return list(dict.fromkeys([*self.topics, *shared]))


class InfluxSettings(_Section):
    url: str = Field(
        default="http://127.0.0.1:8086", description="http:// or https://, host and port"
    )
    database: str = Field(default="ecotel", min_length=1)
    create_database: bool = True
    username: str | None = None
    password: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # Unchecked, a typo only showed as "waiting for InfluxDB" for ever.
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// address with a host")
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ValueError("its port is not a number") from None
        return url

    @property
    def credentials(self) -> tuple[str, str] | None:
        """HTTP basic auth for every request of the ingest (1.x users; a token as password
        for the v1 API of 2.x and 3.x); None without a username."""
        return (self.username, self.password or "") if self.username else None


class BatchSettings(_Section):
    # 20,000 rather than 5,000: a third fewer POSTs' worth of CPU in the ingest and InfluxDB
    # at batch 50 (python -m bench ingest); one POST of them takes ~0.15 s on loopback.
    max_points: int = Field(default=20_000, ge=1, le=500_000)
    max_delay_s: float = Field(default=1.0, gt=0, le=60)
    max_quiet_s: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="Write the batch once no new point has come for this long: the stream "
        "paused, so waiting longer batches nothing and only holds the PUBACKs",
    )
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


class SequenceSettings(_Section):
    """A shared group's ledger of gateways' message numbers (pipelines/sequence_ledger.py)."""

    path: Path | None = Field(
        default=None,
        description="Default: sequences.sqlite3 beside the dead-letter store; one file for all "
        "workers of the group on a host. Used only with mqtt.shared_group",
    )
    grace_s: float = Field(
        default=300.0,
        gt=0,
        description="A number no worker has received this long after a higher one arrived is "
        "missing; covers a worker restarted (backoff up to 30 s) getting its queued share late. "
        "A number that arrives later still stops counting as missing",
    )

    def path_for(self, dead_letters: Path) -> Path:
        return self.path or dead_letters.with_name("sequences.sqlite3")


Limits = tuple[float | None, float | None]
"""A site's [min, max] for one quantity; None leaves that side to the catalog."""


class GatewayValidation(_Section):
    devices: list[Identifier] | None = Field(
        default=None,
        description="The only devices this gateway may speak for; any other is foreign_device. "
        "Unset: any device (its points still carry this gateway's tags)",
    )


class SiteValidation(_Section):
    """One site's own limits and gateways (``[validation.sites."<site>"]``)."""

    limits: dict[str, dict[str, Limits]] = Field(
        default_factory=dict,
        description="Per kind and quantity, [min, max] replacing the catalog's range at this "
        "site (a river's stage above its gauge datum, a meter's maximum power)",
    )
    gateways: dict[Identifier, GatewayValidation] = Field(default_factory=dict)

    @field_validator("limits")
    @classmethod
    def _known_numeric_quantities(
        cls, value: dict[str, dict[str, Limits]]
    ) -> dict[str, dict[str, Limits]]:
        for kind, quantities in value.items():
            model = KINDS.get(kind)
            if model is None:
                raise ValueError(f"{kind!r} is not a device kind ({', '.join(KINDS)})")
            for name, (low, high) in quantities.items():
                try:
                    spec = model.quantity(name)
                except KeyError:
                    raise ValueError(f"{kind}.{name}: {kind} has no quantity {name!r}") from None
                if spec.role is Role.STATE:
                    raise ValueError(f"{kind}.{name} is a state, it has no range")
                if low is not None and high is not None and low > high:
                    raise ValueError(f"{kind}.{name}: minimum {low} above maximum {high}")
        return value


class QualitySettings(_Section):
    """Suspicious but plausible values: stored with a ``quality`` field, not refused."""

    enabled: bool = True
    stuck_readings: int = Field(
        default=10,
        ge=2,
        description="A gauge repeating exactly one value this many readings in a row is stuck",
    )
    stuck_min_s: float = Field(
        default=1800.0,
        ge=0,
        description="... and only once the repeats span this long (fast pollers repeat honestly)",
    )
    stuck_exempt: list[str] = Field(
        default=["wind_direction"],
        description="Quantities never judged stuck (values at a range bound never are: 0 mm rain)",
    )
    spike_fraction: float = Field(
        default=0.5,
        gt=0,
        description="Default spike threshold: this fraction of the quantity's catalog range",
    )
    spike: dict[str, float] = Field(
        default_factory=dict,
        description="Per quantity name, the largest plausible jump from the previous reading",
    )
    compare_within_s: float = Field(
        default=3600.0,
        gt=0,
        description="A reading is compared only with a previous one at most this much older",
    )
    history_s: float = Field(
        default=86_400.0,
        ge=0,
        description="At start, series' recent history is read back from InfluxDB this far",
    )

    @model_validator(mode="after")
    def _known_quantities(self) -> "QualitySettings":
        known = {spec.name for model in KINDS.values() for spec in model.quantities()}
        for where, names in (("spike", list(self.spike)), ("stuck_exempt", self.stuck_exempt)):
            for name in names:
                if name not in known:
                    raise ValueError(f"{where}: no kind has a quantity {name!r}")
        for name, jump in self.spike.items():
            if jump <= 0:
                raise ValueError(f"spike.{name}: the threshold must be above 0, not {jump}")
        return self


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
    sites: dict[Identifier, SiteValidation] = Field(default_factory=dict)
    quality: QualitySettings = Field(default_factory=QualitySettings)


class ApiToken(_Section):
    """A bearer token; bound to one site/gateway, it may only post that gateway's readings."""

    token: SecretStr = Field(min_length=16)
    name: str = Field(default="", description="Who holds it (logged, never the token)")
    site: Identifier | None = None
    gateway: Identifier | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> "ApiToken":
        if (self.site is None) != (self.gateway is None):
            raise ValueError("bind a token to both a site and a gateway, or to neither")
        return self

    @property
    def operator(self) -> bool:
        """Not bound to a gateway: may also read and replay dead letters."""
        return self.gateway is None


class ApiUnavailable(OSError):
    """The HTTP API cannot listen where its settings say (a port in use, an address not ours)."""


class ApiSettings(_Section):
    """The HTTP API (pipelines/api.py): health, metrics, readings over HTTP, dead letters."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", description="Loopback by default: put a proxy in front")
    port: int = Field(
        default=8470,
        ge=1,
        le=65_535,
        description="Worker K of a shared group listens on port + K",
    )
    tokens: list[ApiToken] = Field(
        default_factory=list,
        description="Bearer tokens; also ECOTEL_INGEST_API__TOKENS as JSON. None: only /healthz, "
        "/readyz and /metrics answer",
    )

    def port_for(self, worker: int | None) -> int:
        return self.port + (worker or 0)


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
    sequences: SequenceSettings = Field(default_factory=SequenceSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    derive: DeriveSettings = Field(default_factory=DeriveSettings)
    stats_interval_s: float = Field(default=10.0, gt=0, description="How often to log counters")


def load_ingest_config(path: Path) -> IngestSettings:
    """Read an ingest TOML file; ConfigError names the file and key of any problem."""
    return load_settings(IngestSettings, path)


def for_worker(settings: IngestSettings, worker: int) -> IngestSettings:
    """The same settings for worker number ``worker`` (its own client id, so its own session)."""
    if worker < 0:
        raise ValueError(f"worker number {worker} is negative")
    return settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update={"worker": worker})})


def _is_status(topic: str) -> bool:
    return topic.endswith("/status")
