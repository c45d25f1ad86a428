"""One reading as a device reports it: which device, which kind, when (UTC) and the values."""

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, JsonValue, field_validator

from devices.identifiers import Identifier


class Reading(BaseModel):
    """A device's values at one instant; ``values`` is checked against the kind by the catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Identifier
    kind: str
    time: AwareDatetime
    channel: Identifier | None = None
    values: dict[str, JsonValue]

    @field_validator("time")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)
