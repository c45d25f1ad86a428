"""One reading as a device reports it: which device, which kind, when (UTC) and the values."""

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from devices.identifiers import Identifier


class Reading(BaseModel):
    """A device's values at one instant; ``values`` is checked against the kind by the catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Identifier
    kind: str
    time: AwareDatetime
    channel: Identifier | None = None
    # Any, not JsonValue: the kind's strict model checks every value next, and
    # validating them twice cost ~1.4 us of the ingest's ~10 us per reading.
    values: dict[str, Any]
    clock: Literal["corrected", "unsynced"] | None = None
    """Absent when the gateway's clock was trusted. ``corrected``: taken while it was
    not, timestamp since recomputed from the monotonic clock. ``unsynced``: taken
    while it was not and never corrected (the gateway rebooted first)."""

    @field_validator("time")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None
