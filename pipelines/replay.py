"""Replay dead letters after a fix: run them through today's checks, store what passes, keep what fails."""

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import JsonValue

from pipelines.dead_letter import DeadLetter
from pipelines.decode import (
    DecodedReadings,
    MessageRejected,
    check_readings,
    decode_readings,
    named_topic,
)
from pipelines.derive_config import DeriveSettings
from pipelines.derive_state import WindowKey
from pipelines.derive_windows import keys_for_reading
from pipelines.line_protocol import moment_ns
from pipelines.line_series import parse_series
from pipelines.service import IngestService, gateway_points, parse_gateway_message

log = logging.getLogger("ecotel.ingest.replay")

Verdict = Literal["stored", "refused", "missing", "not_replayable"]

INFLUX_REFUSED = "influx_refused"
"""The reason of a point InfluxDB itself refused; its letter keeps the line."""


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
    """Re-run one dead letter through today's checks and, if it passes now, into InfluxDB.

    A refused message is decoded again whole (its readings that still fail
    become dead letters of their own, the rest are stored); a refused reading
    is checked again alone; a gateway's status or health message goes through
    the live path's checks. Sequence numbers are not counted again. A point
    InfluxDB refused (``influx_refused``) was valid: its line is written again
    as it is, and stays with InfluxDB's new answer if refused again.
    """
    letter = await service.dead_letters.get(letter_id)
    if letter is None:
        return Replayed(letter_id, "missing")
    if letter.reason == INFLUX_REFUSED:
        return await _replay_point(service, letter)
    if letter.topic.endswith(("/status", "/health")):
        return await _replay_gateway(service, letter)
    return await _replay_readings(service, letter)


async def _replay_readings(service: IngestService, letter: DeadLetter) -> Replayed:
    store = service.dead_letters
    try:
        decoded = _decode(service, letter)
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
        "replayed dead letter %d (%s): %d points written, %d refused again",
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


def _decode(service: IngestService, letter: DeadLetter) -> DecodedReadings:
    if letter.payload is not None:
        return decode_readings(
            letter.topic,
            letter.payload,
            max_bytes=service.settings.mqtt.max_message_bytes,
            checks=service.checks,
        )
    site, gateway = named_topic(letter.topic)
    decoded = DecodedReadings(site=site, gateway=gateway, seq=0)
    reading: JsonValue = letter.reading
    check_readings(decoded, [reading], service.checks)
    return decoded


async def _replay_gateway(service: IngestService, letter: DeadLetter) -> Replayed:
    """A status or health message: the live path's checks, stamped as when it was received."""
    if letter.payload is None:
        # Only whole messages are kept for these topics: nothing to run through the checks.
        return Replayed(letter.id, "not_replayable", reason=letter.reason, detail=letter.detail)
    try:
        message = parse_gateway_message(letter.topic, letter.payload)
        points = gateway_points(
            message,
            letter.topic,
            received_at=letter.received_at,
            status_at=None,
            window=service.checks.window,
        )
    except MessageRejected as exc:
        return await _refused(service, letter, exc.rejection.reason, exc.rejection.detail)
    await service.store_points(points)
    await service.dead_letters.remove(letter.id)
    log.info(
        "replayed dead letter %d (%s): %d points stored", letter.id, letter.reason, len(points)
    )
    return Replayed(letter.id, "stored", stored=len(points))


async def _replay_point(service: IngestService, letter: DeadLetter) -> Replayed:
    """Write the refused line again; a raw reading's windows are marked once it is in."""
    line = letter.reading
    if not isinstance(line, str):
        # The store keeps the line for this reason; without it there is nothing to write.
        return Replayed(letter.id, "not_replayable", reason=letter.reason, detail=letter.detail)
    refused = await service.writer.write_lines([line])
    if refused is not None:
        return await _refused(service, letter, INFLUX_REFUSED, str(refused))
    # Marked before the letter goes: a crash in between replays it again, which is harmless.
    await service.derive.mark(windows_of_line(service.derive.settings, line))
    await service.dead_letters.remove(letter.id)
    log.info("replayed dead letter %d (%s): point stored", letter.id, letter.reason)
    return Replayed(letter.id, "stored", stored=1)


def windows_of_line(settings: DeriveSettings, line: str) -> set[WindowKey]:
    """The derived windows a written point can change: those of the raw reading it is (its
    measurement is the reading's kind; tags site and device), none for any other point."""
    try:
        series = parse_series(line)
    except ValueError as exc:
        # Every line the ingest makes reads back: this one is no reading of a window's kind.
        log.warning("replayed point not read back (%s); no windows marked", exc)
        return set()
    site, device = series.tags.get("site"), series.tags.get("device")
    if site is None or device is None:
        return set()
    at = moment_ns(series.time_ns)
    return keys_for_reading(settings, site, series.measurement, device, at)


async def _refused(
    service: IngestService, letter: DeadLetter, reason: str, detail: str
) -> Replayed:
    await service.dead_letters.refuse_again(letter.id, reason, detail)
    return Replayed(letter.id, "refused", reason=reason, detail=detail)
