"""Trim: keep the part of a trace between two times and/or under topic filters."""

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from paho.mqtt.client import topic_matches_sub

from deploy.traces.file_format import TraceRecord


def parse_when(text: str, first_us: int) -> int:
    """``+30`` / ``+1.5`` = seconds after the first message; otherwise an ISO 8601 time (UTC if naive)."""
    if text.startswith("+"):
        return first_us + int(float(text[1:]) * 1_000_000)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def trim(
    records: Iterable[TraceRecord],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    topics: list[str] | None = None,
) -> Iterator[TraceRecord]:
    """Records with start <= t < end whose topic matches one of ``topics`` (MQTT wildcards)."""
    for rec in records:
        if start_us is not None and rec.t_us < start_us:
            continue
        if end_us is not None and rec.t_us >= end_us:
            continue
        if topics and not any(topic_matches_sub(f, rec.topic) for f in topics):
            continue
        yield rec
