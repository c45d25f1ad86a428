"""Replay dead letters after a fix: run them through today's checks, store what passes, keep what fails."""

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import JsonValue

from collector import wire
from pipelines.dead_letter import DeadLetter
from pipelines.decode import DecodedReadings, MessageRejected, check_readings, decode_readings
from pipelines.service import IngestService

log = logging.getLogger("ecotel.ingest.replay")

Verdict = Literal["stored", "refused", "missing", "not_replayable"]


@dataclass(frozen=True)
class Replayed:
    """What one replay did: ``stored`` removes the letter; ``refused`` keeps it with the new reason."""

    id: int
    outcome: Verdict
    stored: int = 0
    reason: str | None = None
    detail: str | None = None
    new_dead_letters: int = 0


async def replay(service: IngestService, letter_id: int) -> Replayed:
    """Re-run one dead letter through validation and, if it passes now, into InfluxDB.

    A refused message is decoded again whole (its readings that still fail
    become dead letters of their own, the rest are stored); a refused reading
    is checked again alone. Sequence numbers are not counted again. Points
    InfluxDB refused (``influx_refused``) and gateway status or health
    messages are not replayed: their letters stay as they are.
    """
    store = service.dead_letters
    letter = await store.get(letter_id)
    if letter is None:
        return Replayed(letter_id, "missing")
    try:
        site, gateway, leaf = wire.parse_topic(letter.topic)
    except wire.TopicError:
        leaf = ""
    if leaf != "readings" or isinstance(letter.reading, str):
        return Replayed(letter.id, "not_replayable", reason=letter.reason, detail=letter.detail)
    try:
        decoded = _decode(service, letter, site, gateway)
    except MessageRejected as exc:
        return await _refused(service, letter, exc.rejection.reason, exc.rejection.detail)
    if not decoded.lines and len(decoded.rejections) == 1 and letter.payload is None:
        again = decoded.rejections[0]
        return await _refused(service, letter, again.reason, again.detail)
    if decoded.rejections:
        await store.add_many(
            letter.topic,
            [(r.reason, r.detail, r.reading_index, r.reading) for r in decoded.rejections],
        )
    await service.store_decoded(decoded, letter.topic)
    await store.remove(letter.id)
    log.info(
        "replayed dead letter %d (%s): %d readings stored, %d refused again",
        letter.id,
        letter.reason,
        len(decoded.lines),
        len(decoded.rejections),
    )
    return Replayed(
        letter.id,
        "stored",
        stored=len(decoded.lines),
        new_dead_letters=len(decoded.rejections),
    )


def _decode(service: IngestService, letter: DeadLetter, site: str, gateway: str) -> DecodedReadings:
    if letter.payload is not None:
        return decode_readings(
            letter.topic,
            letter.payload,
            max_bytes=service.settings.mqtt.max_message_bytes,
            checks=service.checks,
        )
    decoded = DecodedReadings(site=site, gateway=gateway, seq=0)
    reading: JsonValue = letter.reading
    check_readings(decoded, [reading], service.checks)
    return decoded


async def _refused(
    service: IngestService, letter: DeadLetter, reason: str, detail: str
) -> Replayed:
    await service.dead_letters.refuse_again(letter.id, reason, detail)
    return Replayed(letter.id, "refused", reason=reason, detail=detail)
