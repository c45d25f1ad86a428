"""The gateway's configuration: who it is, where its broker is, and which devices it polls."""

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from collector.settings_loader import FileSettings, load_settings
from devices import KINDS, Identifier
from devices.drivers.base import FieldMap
from devices.drivers.dlt645 import Dlt645Source
from devices.drivers.modbus import ModbusRtuSource, ModbusTcpSource
from devices.drivers.sdi12 import Sdi12Source
from devices.quantity import Role
from devices.simulators import make_simulator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewayIdentity(_Section):
    id: Identifier = Field(description="Unique gateway id; also its MQTT topic level")
    site: Identifier = Field(description="The site the gateway stands at")
    state_dir: Path = Field(
        default=Path("gateway-state"),
        description="Where the gateway keeps its outbox (readings not yet acknowledged)",
    )
    batch_max_readings: int = Field(default=500, ge=1, le=10_000)
    batch_max_delay_s: float = Field(
        default=0.5, gt=0, le=60, description="Longest a reading waits to share a message"
    )
    commit_interval_s: float = Field(
        default=0.25,
        gt=0,
        le=10,
        description="Readings are committed to disk in groups this often: what a power cut can cost",
    )
    outbox_max_mb: float = Field(
        default=512, gt=0, description="Disk budget of the outbox; ~300 bytes per reading"
    )
    outbox_full_policy: Literal["drop_oldest", "drop_newest"] = Field(
        default="drop_oldest",
        description="What to drop when the budget is reached (counted, logged)",
    )
    stall_warn_s: float = Field(
        default=60,
        gt=0,
        description="Connected with readings waiting and none acknowledged for this long: a "
        "warning in the log naming the messages in flight",
    )
    health_interval_s: float = Field(
        default=60, gt=0, description="How often the gateway publishes its own health"
    )
    backlog_readings_per_s: float = Field(
        default=500,
        gt=0,
        description="Drain rate of readings stored during an outage; live readings go first",
    )


class TlsSettings(_Section):
    """TLS to the broker; file paths are read at start, so a bad one fails there."""

    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) the broker's certificate must chain to; default: the system's",
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate, if the broker asks for one"
    )
    key_file: Path | None = Field(default=None, description="The client certificate's private key")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class BrokerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65_535)
    keepalive_s: int = Field(default=30, ge=5, le=3_600)
    client_id: str | None = Field(default=None, description="Default: ecotel-gw-<gateway id>")
    reconnect_max_s: float = Field(default=30.0, gt=0)
    username: str | None = None
    password: SecretStr | None = Field(
        default=None, description="Better set from the environment: ECOTEL_GW_BROKER__PASSWORD"
    )
    tls: TlsSettings | None = Field(default=None, description="Absent: plain MQTT")


class SimulatorSource(_Section):
    type: Literal["simulator"]
    seed: int = 0
    options: dict[str, JsonValue] = Field(default_factory=dict)


# One member per source type; ``type`` picks the member, so errors name its keys.
DeviceSource = Annotated[
    SimulatorSource | Sdi12Source | Dlt645Source | ModbusTcpSource | ModbusRtuSource,
    Field(discriminator="type"),
]


class DeviceSettings(_Section):
    id: Identifier
    kind: str
    interval_s: float = Field(default=10.0, ge=0.05, le=86_400)
    channel: Identifier | None = Field(
        default=None,
        description="Channel of this device's readings (lane, depth_cm, circuit, rack) where "
        "the field map does not give one per field",
    )
    source: DeviceSource

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown device kind {value!r}; known: {', '.join(KINDS)}")
        return value

    @model_validator(mode="after")
    def _source_fits_kind(self) -> Self:
        if not isinstance(self.source, SimulatorSource):
            check_field_map(self.kind, self.source.fields, self.channel)
            return self
        # Build the simulator once now, so a bad option fails at start with
        # the device's key in the message, not at the first poll.
        try:
            make_simulator(
                self.kind,
                self.id,
                seed=self.source.seed,
                interval_s=self.interval_s,
                options=self.source.options,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"source.options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ValueError(problems) from None
        return self


class ClockSettings(_Section):
    """When the gateway's wall clock is not to be trusted (collector/clock.py)."""

    earliest_valid: datetime = Field(
        default=datetime(2026, 1, 1, tzinfo=UTC),
        description="A wall clock before this is unset (this release was built after it)",
    )
    jump_threshold_s: float = Field(
        default=60.0, gt=0, description="A step of the wall clock larger than this is a jump"
    )
    check_interval_s: float = Field(default=1.0, gt=0, le=60)


def check_field_map(kind: str, fields: Sequence[FieldMap], default_channel: str | None) -> None:
    """A field map must give every required quantity of its kind, per channel, and nothing else;
    a state quantity comes through a table of the device's codes, a number does not."""
    model = KINDS[kind]
    specs = {q.name: q for q in model.quantities()}
    problems: list[str] = []
    groups: dict[str | None, set[str]] = {}
    for index, mapping in enumerate(fields):
        where = f"source.fields.{index}"
        spec = specs.get(mapping.field)
        if spec is None:
            problems.append(
                f"{where}.field: {mapping.field!r} is not a quantity of {kind}; "
                f"known: {', '.join(specs)}"
            )
            continue
        if spec.role == Role.STATE:
            problems += _state_table_problems(where, mapping, spec.states)
        elif mapping.states is not None:
            problems.append(
                f"{where}.states: {mapping.field!r} is a number, not a state; use scale and offset"
            )
        channel = mapping.channel if mapping.channel is not None else default_channel
        if model.channel is None and channel is not None:
            problems.append(f"{where}.channel: {kind} readings have no channel")
        elif model.channel is not None and channel is None:
            problems.append(
                f"{where}.channel: {kind} readings need a {model.channel.tag} "
                "(set it here or as the device's channel)"
            )
        elif (
            model.channel is not None
            and model.channel.allowed
            and channel not in model.channel.allowed
        ):
            problems.append(
                f"{where}.channel: {channel!r} is not a {model.channel.tag}; "
                f"allowed: {', '.join(model.channel.allowed)}"
            )
        group = groups.setdefault(channel, set())
        if mapping.field in group:
            problems.append(
                f"{where}.field: {mapping.field!r} is mapped twice for channel {channel!r}"
            )
        group.add(mapping.field)
    required = {name for name, spec in specs.items() if spec.required}
    for channel, mapped in groups.items():
        missing = sorted(required - mapped)
        if missing:
            label = "" if channel is None else f" for channel {channel!r}"
            problems.append(
                f"source.fields: {', '.join(missing)} missing{label} ({kind} requires them)"
            )
    if problems:
        raise ValueError("; ".join(problems))


def _state_table_problems(where: str, mapping: FieldMap, allowed: Sequence[str]) -> list[str]:
    """A state field needs a table of codes, each naming one of the quantity's states."""
    if mapping.states is None:
        example = f'states = {{ 0 = "{allowed[0]}" }}'
        return [
            f"{where}.states: {mapping.field!r} is a state: map the device's codes to "
            f"{', '.join(allowed)}, e.g. {example}"
        ]
    return [
        f"{where}.states.{code}: {state!r} is not a state of {mapping.field}; "
        f"allowed: {', '.join(allowed)}"
        for code, state in mapping.states.items()
        if state not in allowed
    ]


class GatewaySettings(FileSettings):
    """A whole gateway configuration file (see deploy/gateway/*.toml for samples)."""

    model_config = SettingsConfigDict(
        env_prefix="ECOTEL_GW_", env_nested_delimiter="__", extra="forbid"
    )

    gateway: GatewayIdentity
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    devices: list[DeviceSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        seen: set[str] = set()
        for device in self.devices:
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} appears twice")
            seen.add(device.id)
        return self

    @model_validator(mode="after")
    def _serial_lines_agree(self) -> Self:
        # Devices on one port share the line: one protocol, one set of line settings.
        lines: dict[str, tuple[str, tuple[object, ...]]] = {}
        for index, device in enumerate(self.devices):
            source = device.source
            if isinstance(source, SimulatorSource | ModbusTcpSource):
                continue
            line = (source.baudrate, source.bytesize, source.parity, source.stopbits)
            seen = lines.setdefault(source.port, (source.type, line))
            if seen[0] != source.type:
                raise ValueError(
                    f"devices.{index}.source.port: {source.port} is used by {seen[0]} and "
                    f"{source.type} devices; one serial port carries one protocol"
                )
            if seen[1] != line:
                raise ValueError(
                    f"devices.{index}.source: {source.port} is configured with other line "
                    "settings (baudrate, bytesize, parity, stopbits) by an earlier device"
                )
        return self

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"ecotel-gw-{self.gateway.id}"


def load_gateway_config(path: Path) -> GatewaySettings:
    """Read a gateway TOML file; ConfigError names the file and key of any problem."""
    return load_settings(GatewaySettings, path)
