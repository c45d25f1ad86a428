"""The wire contract between gateways and the ingest: MQTT topics and payloads, version 1.

docs/wire-contract.md is the prose of this module; change both together.
"""

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from devices import Identifier, Reading

TOPIC_ROOT = "ecotel/v1"
SCHEMA_VERSION: Literal[1] = 1
QOS = 1
MAX_READINGS_PER_MESSAGE = 10_000

READINGS_FILTER = f"{TOPIC_ROOT}/+/+/readings"
STATUS_FILTER = f"{TOPIC_ROOT}/+/+/status"
HEALTH_FILTER = f"{TOPIC_ROOT}/+/+/health"


def readings_topic(site: str, gateway: str) -> str:
    """Where a gateway publishes its readings (QoS 1, not retained)."""
    return f"{TOPIC_ROOT}/{site}/{gateway}/readings"


def status_topic(site: str, gateway: str) -> str:
    """Where a gateway's retained online/offline status lives (also its last will)."""
    return f"{TOPIC_ROOT}/{site}/{gateway}/status"


def health_topic(site: str, gateway: str) -> str:
    """Where a gateway publishes its own health (QoS 1, not retained)."""
    return f"{TOPIC_ROOT}/{site}/{gateway}/health"


class TopicError(ValueError):
    """A topic outside the ecotel/v1 scheme."""


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split ``ecotel/v1/{site}/{gateway}/{channel}`` into (site, gateway, channel)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or not all(parts[2:]):
        raise TopicError(f"topic {topic!r} is not {TOPIC_ROOT}/<site>/<gateway>/<channel>")
    return parts[2], parts[3], parts[4]


class ReadingsMessage(BaseModel):
    """One MQTT message of readings: a batch from one gateway, numbered per gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    gateway: Identifier
    site: Identifier
    seq: int = Field(
        ge=0, description="Per-gateway message number: +1 per message, kept across restarts"
    )
    sent_at: AwareDatetime
    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)

    def encode(self) -> bytes:
        """The payload bytes: compact UTF-8 JSON with times in RFC 3339 UTC."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class ReadingsEnvelope(BaseModel):
    """The outer part of a readings message as the ingest first reads it.

    Readings stay raw here so that one bad reading is rejected alone instead
    of taking its whole message with it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(alias="schema")
    gateway: Identifier
    site: Identifier
    seq: int = Field(ge=0)
    sent_at: AwareDatetime
    readings: list[JsonValue] = Field(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)


class GatewayStatus(BaseModel):
    """The retained availability of a gateway; the offline form is also its MQTT last will."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    gateway: Identifier
    site: Identifier
    state: Literal["online", "offline"]
    reason: Literal["connected", "shutdown", "connection_lost"]
    at: AwareDatetime | None = Field(
        default=None, description="When the state began; absent in the last will, set by the broker"
    )

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class GatewayHealth(BaseModel):
    """A gateway's view of itself, published every ``health_interval_s`` while connected."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    gateway: Identifier
    site: Identifier
    at: AwareDatetime
    uptime_s: float = Field(ge=0)
    cpu_temperature_c: float | None = None
    load_1m: float = Field(ge=0)
    memory_available_mb: float = Field(ge=0)
    disk_free_mb: float = Field(ge=0)
    outbox_readings: int = Field(ge=0)
    outbox_bytes: int = Field(ge=0)
    oldest_unsent_age_s: float | None = Field(
        default=None, description="Age of the oldest reading not yet acknowledged; none if empty"
    )
    link_up: bool
    reconnects: int = Field(ge=0)
    dropped_total: int = Field(ge=0, description="Readings the outbox policy dropped, ever")
    device_errors: dict[Identifier, int] = Field(default_factory=dict)
    clock_state: Literal["ok", "unset", "jumped"] = Field(
        default="ok", description="unset: before the build date; jumped: stepped in the last hour"
    )
    clock_jumps: int = Field(default=0, ge=0, description="Wall-clock jumps since start")
    readings_held: int = Field(
        default=0, ge=0, description="Readings waiting for the clock to be set before they are sent"
    )

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
