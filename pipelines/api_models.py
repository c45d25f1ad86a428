"""The HTTP API's request and response bodies (pydantic), which its OpenAPI document describes."""

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, JsonValue, model_validator

LetterId = Annotated[int, Field(ge=1, le=2**62)]
"""A dead letter's id: an SQLite integer."""


class Problem(BaseModel):
    """An error: missing or wrong token, unknown dead letter, message too large."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Ready when the MQTT session is up and InfluxDB answers; ``problems`` says what is not."""

    ready: bool
    broker: bool
    influxdb: bool
    problems: list[str]


class ReadingRefusal(BaseModel):
    index: int | None = Field(description="Position of the reading in the message")
    reason: str = Field(description="A reason code of docs/wire-contract.md")
    detail: str


class IngestResult(BaseModel):
    """The message was accepted: ``stored`` readings are durable (InfluxDB or spool); the
    ``refused`` ones are in the dead-letter store."""

    stored: int
    refused: list[ReadingRefusal]


class MessageRefusal(BaseModel):
    """The whole message was refused and kept in the dead-letter store."""

    reason: str
    detail: str


class DeadLetterSummary(BaseModel):
    id: int
    received_at: datetime
    topic: str
    reason: str
    detail: str
    reading_index: int | None
    whole_message: bool = Field(description="True: the exact payload is kept; false: one reading")


class DeadLetterPage(BaseModel):
    items: list[DeadLetterSummary]
    next_after_id: int | None = Field(
        description="Pass as after_id for the next page; null at the end"
    )


class DeadLetterDetail(DeadLetterSummary):
    reading: JsonValue = Field(
        description="The refused reading's JSON, or the line of a point InfluxDB refused "
        "(influx_refused)"
    )
    payload_text: str | None = Field(description="The message's exact payload when it is UTF-8")
    payload_base64: str | None = Field(description="The exact payload bytes, base64")


class ReplayRequest(BaseModel):
    """Dead letters to replay: by id, or the oldest ``limit`` of one reason."""

    ids: list[LetterId] = Field(default_factory=list, max_length=1_000)
    reason: str | None = Field(
        default=None,
        description="A reason code (docs/wire-contract.md) or another the store holds; any other "
        "is refused (422)",
    )
    limit: int = Field(default=100, ge=1, le=1_000)

    @model_validator(mode="after")
    def _ids_or_reason(self) -> Self:
        if self.ids and self.reason is not None:
            raise ValueError("give ids or reason, not both (reason would select other letters)")
        if not self.ids and self.reason is None:
            raise ValueError("name dead letter ids, or a reason")
        return self


class ReplayResult(BaseModel):
    """stored: written, the letter removed; refused: kept under the reason it fails with now
    (``influx_refused``: InfluxDB's new answer); missing: no such letter; not_replayable: a
    letter without what its kind is replayed from (an ``influx_refused`` letter without its
    line), which no ingest writes."""

    id: int
    outcome: Literal["stored", "refused", "missing", "not_replayable"]
    stored: int = Field(
        description="Readings now written; points, for an influx_refused, status or health letter"
    )
    reason: str | None = Field(description="The reason it was refused now")
    detail: str | None
    new_dead_letters: int = Field(description="Readings of a replayed message refused again alone")


class ReplayReport(BaseModel):
    results: list[ReplayResult]
