"""Trim: keep the part of a trace between two times and/or under topic filters."""

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from paho.mqtt.client import topic_matches_sub

from deploy.traces.file_format import TraceHeader, TraceRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_when(text: str, first_us: int) -> int:
    """``+30`` / ``+1.5`` = seconds after the first message; otherwise an ISO 8601 time (UTC if naive).

    Exact to the microsecond: decimal seconds, not a float (``+67.106`` is 67,106,000 us).
    """
    if text.startswith("+"):
        try:
            seconds = Decimal(text[1:])
        except InvalidOperation:
            raise ValueError(f"{text!r}: not +SECONDS") from None
        if not seconds.is_finite() or seconds < 0:
            raise ValueError(f"{text!r}: not +SECONDS")
        return first_us + int(seconds * 1_000_000)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _us(moment)


def keeps(
    rec: TraceRecord,
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    topics: list[str] | None = None,
) -> bool:
    """start <= t < end, and the topic matches one of ``topics`` (MQTT wildcards) if given."""
    if start_us is not None and rec.t_us < start_us:
        return False
    if end_us is not None and rec.t_us >= end_us:
        return False
    return not topics or any(topic_matches_sub(f, rec.topic) for f in topics)


def trim(
    records: Iterable[TraceRecord],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    topics: list[str] | None = None,
) -> Iterator[TraceRecord]:
    """The records ``keeps`` keeps."""
    return (r for r in records if keeps(r, start_us=start_us, end_us=end_us, topics=topics))


def trim_items(
    items: Iterable[TraceHeader | TraceRecord],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    topics: list[str] | None = None,
) -> Iterator[TraceHeader | TraceRecord]:
    """``trim`` keeping the headers that describe what is kept, where they were.

    Before the first kept record: the header in effect for it (its session, its note). After
    it: every header in stream order (reconnect gaps, appended sessions) up to ``end_us``.
    """
    in_effect: TraceHeader | None = None
    waiting: list[TraceHeader] = []
    kept_any = False
    for item in items:
        if isinstance(item, TraceHeader):
            if kept_any:
                waiting.append(item)
            else:
                in_effect = item
            continue
        if not keeps(item, start_us=start_us, end_us=end_us, topics=topics):
            continue
        if not kept_any and in_effect is not None:
            yield in_effect
        kept_any = True
        yield from waiting
        waiting.clear()
        yield item
    yield from (h for h in waiting if end_us is None or _us(h.started_at) < end_us)


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)
