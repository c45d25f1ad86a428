"""Inspect: what a trace holds: time span, messages and bytes per topic, rates over time, undecodable payloads."""

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from collector import wire
from deploy.traces.file_format import ReadStats, TraceRecord

_SAMPLES = 5


@dataclass
class TopicSummary:
    messages: int = 0
    bytes: int = 0


@dataclass
class TraceSummary:
    messages: int = 0
    bytes: int = 0
    first_us: int | None = None
    last_us: int | None = None
    topics: dict[str, TopicSummary] = field(default_factory=dict)
    qos: Counter[int] = field(default_factory=Counter)
    retained: int = 0
    with_properties: int = 0
    bucket_s: float = 1.0
    rates: list[int] = field(default_factory=list)
    """Messages per bucket of ``bucket_s`` seconds, from the first message on."""
    undecodable: Counter[str] = field(default_factory=Counter)
    """not_utf8, not_json, not_envelope: counts."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        if self.first_us is None or self.last_us is None:
            return 0.0
        return (self.last_us - self.first_us) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "first": _iso(self.first_us),
            "last": _iso(self.last_us),
            "span_s": self.span_s,
            "topics": {t: vars(s) for t, s in sorted(self.topics.items())},
            "qos": {str(k): v for k, v in sorted(self.qos.items())},
            "retained": self.retained,
            "with_properties": self.with_properties,
            "bucket_s": self.bucket_s,
            "rates": self.rates,
            "undecodable": dict(self.undecodable),
            "samples": self.samples,
            "headers": self.headers,
            "truncated": self.truncated,
        }


def _iso(t_us: int | None) -> str | None:
    return None if t_us is None else datetime.fromtimestamp(t_us / 1e6, UTC).isoformat()


def classify(topic: str, payload: bytes) -> str | None:
    """Why a payload does not decode (not_utf8, not_json, not_envelope), or None if it does."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return "not_json"
    schema: type[wire.ReadingsEnvelope | wire.GatewayStatus | wire.GatewayHealth] | None = None
    if topic.endswith("/readings"):
        schema = wire.ReadingsEnvelope
    elif topic.endswith("/status"):
        schema = wire.GatewayStatus
    elif topic.endswith("/health"):
        schema = wire.GatewayHealth
    if schema is None:
        return None
    try:
        schema.model_validate_json(text)
    except ValidationError:
        return "not_envelope"
    return None


def summarise(
    records: Iterable[TraceRecord], stats: ReadStats, *, buckets: int = 20
) -> TraceSummary:
    """One pass over the records; rates use ``buckets`` equal slices of the span (at least 1 s each)."""
    summary = TraceSummary()
    times: list[int] = []
    for rec in records:
        summary.messages += 1
        summary.bytes += len(rec.payload)
        topic = summary.topics.setdefault(rec.topic, TopicSummary())
        topic.messages += 1
        topic.bytes += len(rec.payload)
        summary.qos[rec.qos] += 1
        summary.retained += rec.retain
        summary.with_properties += rec.props is not None
        times.append(rec.t_us)
        problem = classify(rec.topic, rec.payload)
        if problem is not None:
            summary.undecodable[problem] += 1
            if len(summary.samples) < _SAMPLES:
                summary.samples.append(
                    {
                        "at": _iso(rec.t_us),
                        "topic": rec.topic,
                        "problem": problem,
                        "bytes": len(rec.payload),
                        "start": repr(rec.payload[:60]),
                    }
                )
    if times:
        summary.first_us, summary.last_us = min(times), max(times)
        summary.bucket_s = max(1.0, summary.span_s / buckets)
        width = summary.bucket_s * 1e6
        summary.rates = [0] * (int(summary.span_s * 1e6 // width) + 1)
        for t in times:
            summary.rates[int((t - summary.first_us) // width)] += 1
    summary.headers = [h.to_json() for h in stats.headers]
    summary.truncated = [str(p) for p in stats.truncated]
    return summary


def render(summary: TraceSummary) -> str:
    """The summary as text for a terminal."""
    out = []
    for h in summary.headers:
        part = f" part {h['part']}" if "part" in h else ""
        out.append(
            f"recorded from {h['broker']} filters {', '.join(h['filters'])} at {h['started_at']}"
            f"{part} (ecotel {h['ecotel_version']}, {h['source']})"
        )
        if h.get("note"):
            out.append(f"  note: {h['note']}")
    for path in summary.truncated:
        out.append(
            f"warning: {path} ends in a truncated member (recorder killed?); its whole lines were read"
        )
    if not summary.messages:
        out.append("empty trace: no messages")
        return "\n".join(out)
    out.append(
        f"{summary.messages:,} messages, {summary.bytes:,} payload bytes, "
        f"{summary.span_s:.3f} s from {_iso(summary.first_us)} to {_iso(summary.last_us)}"
    )
    qos = ", ".join(f"QoS {k}: {v:,}" for k, v in sorted(summary.qos.items()))
    out.append(
        f"{qos}; retained {summary.retained:,}; with MQTT 5 properties {summary.with_properties:,}"
    )
    out.append("")
    out.append(f"{'messages':>10} {'bytes':>12}  topic")
    for name, topic in sorted(summary.topics.items(), key=lambda kv: -kv[1].messages):
        out.append(f"{topic.messages:>10,} {topic.bytes:>12,}  {name}")
    if summary.rates:
        out.append("")
        out.append(f"messages per second, in slices of {summary.bucket_s:g} s:")
        peak = max(summary.rates) or 1
        for index, count in enumerate(summary.rates):
            bar = "#" * round(40 * count / peak)
            out.append(
                f"  +{index * summary.bucket_s:>9.1f} s {count / summary.bucket_s:>10.1f}/s {bar}"
            )
    out.append("")
    if summary.undecodable:
        problems = ", ".join(f"{k}: {v}" for k, v in sorted(summary.undecodable.items()))
        out.append(f"payloads that do not decode: {problems}")
        for sample in summary.samples:
            out.append(
                f"  {sample['at']} {sample['topic']} {sample['problem']} "
                f"({sample['bytes']:,} bytes) {sample['start']}"
            )
    else:
        out.append("every payload decodes (UTF-8, JSON, a v1 message for ecotel topics)")
    return "\n".join(out)
