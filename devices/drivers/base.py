"""What every protocol driver shares: its error, the field map, and the settings common to all."""

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

ErrorReason = Literal["timeout", "bad_checksum", "bad_response", "exception_response", "io_error"]


class DeviceError(Exception):
    """A device that did not answer, or answered something unusable.

    ``reason`` is a short code, counted per device in the gateway's health.
    """

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: ErrorReason = reason
        self.detail = detail


class FieldMap(BaseModel):
    """Where one of the kind's quantities comes from; subclasses add the protocol's address.

    A number is ``raw * scale + offset``; a state (e.g. a road's surface state) is looked up
    by its raw integer code in ``states``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(description="The kind's quantity this value becomes, e.g. 'energy_kwh'")
    channel: str | None = Field(
        default=None, description="The reading's channel (lane, depth_cm, circuit, rack), if any"
    )
    # Declared before scale and offset, so their validator sees it.
    states: dict[int, str] | None = Field(
        default=None,
        min_length=1,
        description="A state quantity's codes: raw integer code -> state, e.g. "
        '{ 0 = "dry", 1 = "wet" }; required for a state, refused for a number',
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = 0.0

    @field_validator("scale", "offset")
    @classmethod
    def _numbers_only(cls, value: float, info: ValidationInfo) -> float:
        # Only a value given in the file reaches here (defaults are not validated).
        if info.data.get("states") is not None:
            raise ValueError(
                f"a state field maps codes through its states table; {info.field_name} "
                "does not apply"
            )
        return value

    def apply(self, raw: float) -> float | str:
        """The quantity's value; DeviceError (bad_response) for a code ``states`` lacks."""
        if self.states is None:
            return raw * self.scale + self.offset
        state = self.states.get(int(raw)) if float(raw).is_integer() else None
        if state is None:
            known = ", ".join(str(code) for code in sorted(self.states))
            raise DeviceError(
                "bad_response", f"{self.field}: code {raw:g} is not in its states ({known})"
            )
        return state


class SourceSettings(BaseModel):
    """Settings every field-protocol source has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(
        default=1.0, gt=0, le=60, description="How long to wait for each answer"
    )
    retries: int = Field(default=2, ge=0, le=10, description="Further attempts after a failed poll")


class Driver(Protocol):
    """One configured device on a field bus.

    ``read_raw`` returns one raw value per entry of the source's ``fields``, in
    order, before scale and offset (or a state's code lookup); it raises DeviceError on a timeout or an
    unusable answer. It may be cancelled at any point and must then leave the
    link usable for the next call (stale bytes are discarded first).
    """

    async def read_raw(self) -> list[float]: ...

    async def close(self) -> None: ...
