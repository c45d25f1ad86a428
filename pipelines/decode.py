"""Turn one MQTT message into line-protocol points, or say precisely why it (or a reading) is refused."""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, NamedTuple

import msgspec
from pydantic import JsonValue, ValidationError

from collector import wire
from devices import KINDS, CatalogError, KindValues, Reading, check_values
from devices.identifiers import IDENTIFIER_PATTERN
from devices.kind import ChannelSpec
from pipelines.line_protocol import values_line
from pipelines.quality import QualityChecker
from pipelines.site_limits import SiteLimits
from pipelines.whole_message_decoder import (
    FastMessage,
    FastReading,
    message_decoder,
    needs_pydantic,
)


@dataclass(frozen=True)
class Rejection:
    """Why a message, or one reading of it, cannot be stored; the unit of the dead-letter store."""

    reason: str
    detail: str
    reading_index: int | None = None
    reading: JsonValue = None


class MessageRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.rejection = Rejection(reason, detail)


class Accepted(NamedTuple):
    """A stored reading as the derived measurements take it."""

    kind: str
    device: str
    channel: str | None
    time: datetime
    model: type[KindValues]
    """The model its values were checked against (the catalog's, or a site's own)."""
    values: Mapping[str, Any]
    """Every field of ``model``, in its order, None where absent."""
    typed: KindValues | None
    """``values`` as a model instance, where decoding made one (None: build it if needed)."""

    def typed_values(self) -> KindValues:
        if self.typed is not None:
            return self.typed
        return self.model.model_validate(self.values)


@dataclass
class DecodedReadings:
    """The storable points of a readings message and the readings refused from it."""

    site: str
    gateway: str
    seq: int
    lines: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    readings: list[Accepted] = field(default_factory=list)
    """The stored readings with their checked values (for the derived measurements)."""
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class TimeWindow:
    """The device times the ingest accepts: not before ``earliest``, not beyond now + ``max_future``."""

    earliest: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_future: timedelta = timedelta(minutes=10)

    def problem(self, reading: Reading, now: datetime) -> Rejection | None:
        return self.problem_at(reading.time, reading.clock, now)

    def problem_at(self, time: datetime, clock: str | None, now: datetime) -> Rejection | None:
        if clock == "unsynced" or time < self.earliest:
            detail = f"time {time.isoformat()}"
            if clock == "unsynced":
                detail += ", marked unsynced by its gateway (taken before the clock was set)"
            else:
                detail += f", before {self.earliest.date()}: the gateway's clock was not set"
            return Rejection("clock_unset", detail)
        if time > now + self.max_future:
            ahead = (time - now).total_seconds()
            return Rejection(
                "time_in_future",
                f"time {time.isoformat()} is {ahead:.0f} s ahead of the ingest's clock",
            )
        return None


@dataclass
class Checks:
    """Everything a reading is checked against beyond the catalog, from the ingest's configuration."""

    window: TimeWindow = field(default_factory=TimeWindow)
    limits: SiteLimits | None = None
    quality: QualityChecker | None = None
    devices: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    """Per (site, gateway), the only devices it may speak for; absent: any."""
    _plans: dict[str, "_SitePlan"] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def site_plan(self, site: str) -> "_SitePlan":
        """The one-call decoder of a site's messages (its own ranges replace the catalog's),
        built once per site."""
        plan = self._plans.get(site)
        if plan is None:
            limits = self.limits
            plan = self._plans[site] = _site_plan(
                tuple(
                    (limits.model(site, kind) if limits is not None else None) or values
                    for kind, values in KINDS.items()
                )
            )
        return plan


def decode_readings(
    topic: str,
    payload: bytes,
    *,
    max_bytes: int,
    window: TimeWindow | None = None,
    checks: Checks | None = None,
) -> DecodedReadings:
    """Validate a readings message; MessageRejected if the whole message is unusable.

    Reading-level problems (unknown kind, wrong channel, a value out of range
    or of the wrong type) reject only that reading.
    """
    if len(payload) > max_bytes:
        raise MessageRejected("too_large", f"{len(payload)} bytes, limit {max_bytes}")
    site, gateway = named_topic(topic)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageRejected("not_utf8", f"payload is not UTF-8: {exc}") from None
    if checks is None:
        checks = Checks(window or TimeWindow())
    fast = _decode_whole(site, gateway, payload, checks)
    if fast is not None:
        return fast
    # Something in the message is wrong: the per-reading path finds which readings, and why.
    try:
        envelope = wire.ReadingsEnvelope.model_validate_json(text)
    except ValidationError as exc:
        raise MessageRejected(*_envelope_problem(text, exc)) from None
    if (envelope.site, envelope.gateway) != (site, gateway):
        raise MessageRejected(
            "topic_mismatch",
            f"topic names site {site!r} gateway {gateway!r}, payload says site "
            f"{envelope.site!r} gateway {envelope.gateway!r}",
        )
    decoded = DecodedReadings(site=site, gateway=gateway, seq=envelope.seq)
    check_readings(decoded, envelope.readings, checks)
    return decoded


def named_topic(topic: str) -> tuple[str, str]:
    """The site and gateway of ``topic``, or MessageRejected ``bad_topic`` if no gateway could
    speak on it: not ecotel/v1/<site>/<gateway>/<leaf>, or a site or gateway level that is
    not a name, which no payload could ever match."""
    try:
        site, gateway, _ = wire.parse_topic(topic)
    except wire.TopicError as exc:
        raise MessageRejected("bad_topic", str(exc)) from None
    problem = _level_problem(site, gateway)
    if problem is not None:
        raise MessageRejected("bad_topic", f"{problem} of topic {topic!r} {_NAMES}")
    return site, gateway


_NAME = re.compile(IDENTIFIER_PATTERN)
_NAMES = (
    "is not a name (1-64 characters, no control characters, / + # \\, no leading $, no blank edges)"
)


@lru_cache(maxsize=4_096)
def _level_problem(site: str, gateway: str) -> str | None:
    # Cached: the same few gateways speak in every message.
    for part, level in (("site", site), ("gateway", gateway)):
        # fullmatch: the pattern's '$' would also match before a final newline.
        if _NAME.fullmatch(level) is None:
            return f"{part} {level!r}"
    return None


def check_readings(decoded: DecodedReadings, readings: list[JsonValue], checks: Checks) -> None:
    """Validate readings spoken by ``decoded``'s site and gateway; add lines and rejections."""
    site, gateway = decoded.site, decoded.gateway
    now = datetime.now(UTC)
    window, limits, quality = checks.window, checks.limits, checks.quality
    allowed = checks.devices.get((site, gateway)) if checks.devices else None
    firsts: dict[tuple[str, str, str | None, datetime], tuple[int, KindValues]] = {}
    for index, raw in enumerate(readings):
        try:
            reading = Reading.model_validate(raw)
            model = limits.model(site, reading.kind) if limits is not None else None
            values = check_values(reading.kind, reading.channel, reading.values, model)
        except ValidationError as exc:
            decoded.rejections.append(Rejection("bad_reading", _errors(exc), index, raw))
            continue
        except CatalogError as exc:
            detail = exc.detail
            if model is not None and exc.code == "invalid_values" and limits is not None:
                note = limits.note(site, reading.kind, detail)
                if note is not None:
                    detail += f" [site limit {note}]"
            decoded.rejections.append(Rejection(exc.code, detail, index, raw))
            continue
        if allowed is not None and reading.device not in allowed:
            decoded.rejections.append(
                Rejection(
                    "foreign_device",
                    f"gateway {gateway!r} of {site!r} may speak for "
                    f"{', '.join(sorted(allowed)) or 'no device'}, not {reading.device!r} "
                    f"(validation.sites.{site!r}.gateways.{gateway!r}.devices)",
                    index,
                    raw,
                )
            )
            continue
        problem = window.problem(reading, now)
        if problem is not None:
            decoded.rejections.append(Rejection(problem.reason, problem.detail, index, raw))
            continue
        point = (reading.kind, reading.device, reading.channel, reading.time)
        first = firsts.setdefault(point, (index, values))
        if first[0] != index:
            if first[1] != values:
                # One point in InfluxDB: the later copy would silently replace the first.
                decoded.rejections.append(_conflict(reading, index, first[0], raw))
            # The same values again: the point is already stored.
            continue
        accepted = Accepted(
            reading.kind,
            reading.device,
            reading.channel,
            reading.time,
            type(values),
            values.__dict__,
            values,
        )
        _store(decoded, accepted, quality)


def _conflict(reading: Reading, index: int, first: int, raw: JsonValue) -> Rejection:
    channel = f" channel {reading.channel!r}" if reading.channel is not None else ""
    return Rejection(
        "conflicting_duplicate",
        f"{reading.kind} of device {reading.device!r}{channel} at {reading.time.isoformat()} "
        f"has other values than reading #{first} of the same message, at the same time: "
        "one of them is wrong, and the first is kept",
        index,
        raw,
    )


def _store(decoded: DecodedReadings, reading: Accepted, quality: QualityChecker | None) -> None:
    """Add an accepted reading's line (with its quality flags) to ``decoded``."""
    site, gateway = decoded.site, decoded.gateway
    kind, device, channel, time, model, values, _ = reading
    flags = (
        quality.check((site, gateway, device, kind, channel), time, model, values)
        if quality is not None
        else None
    )
    decoded.lines.append(
        values_line(site, gateway, model, device, channel, time, values, quality=flags)
    )
    decoded.kinds.append(kind)
    decoded.readings.append(reading)


@dataclass(frozen=True, slots=True)
class _KindPlan:
    model: type[KindValues]
    validated: bool
    """The model has validators of its own: its values also go through pydantic."""


@dataclass(frozen=True)
class _SitePlan:
    decoder: msgspec.json.Decoder[FastMessage]
    kinds: dict[type[FastReading], _KindPlan]


@cache
def _site_plan(models: tuple[type[KindValues], ...]) -> _SitePlan:
    """Per tuple of models, since a site's own ranges (SiteLimits) replace a kind's model."""
    decoder, structs = message_decoder(models)
    kinds = {
        struct: _KindPlan(model, needs_pydantic(model))
        for struct, model in zip(structs, models, strict=True)
    }
    return _SitePlan(decoder, kinds)


def _decode_whole(
    site: str, gateway: str, payload: bytes, checks: Checks
) -> DecodedReadings | None:
    """The whole message in one msgspec call, or None if any part of it is refused.

    msgspec checks the shape, types and ranges in C (0.5 us per reading against
    2.7-2.9 us for pydantic's one call, pipelines/whole_message_decoder.py). Any
    refusal (a bad reading, a foreign device, a time out of the window) returns None
    *before* the stateful quality checker has seen anything, and the per-reading
    pydantic path then says precisely which readings and why.
    """
    plan = checks.site_plan(site)
    try:
        message = plan.decoder.decode(payload)
    except msgspec.MsgspecError:
        return None
    if message.site != site or message.gateway != gateway or _utc_time(message.sent_at) is None:
        return None
    now = datetime.now(UTC)
    allowed = checks.devices.get((site, gateway)) if checks.devices else None
    window = checks.window
    kinds = plan.kinds
    accepted: list[Accepted] = []
    points = set()
    for reading in message.readings:
        kind_plan = kinds[type(reading)]
        model = kind_plan.model
        device, channel, time = reading.device, reading.channel, _utc_time(reading.time)
        if time is None:
            return None
        if not _channel_ok(model.channel, channel):
            return None
        if not _is_name(device) or (channel is not None and not _is_name(channel)):
            return None
        if allowed is not None and device not in allowed:
            return None
        if window.problem_at(time, reading.clock, now) is not None:
            return None
        values = msgspec.structs.asdict(reading.values)
        typed = None
        if kind_plan.validated:
            try:
                typed = model.model_validate(values)
            except ValidationError:
                return None
            values = typed.__dict__  # what its validators made of them, as the slow path
        points.add((model.kind, device, channel, time))
        accepted.append(Accepted(model.kind, device, channel, time, model, values, typed))
    if len(points) != len(accepted):
        return None  # one point twice: check_readings tells copies from conflicts
    decoded = DecodedReadings(site=site, gateway=gateway, seq=message.seq)
    quality = checks.quality
    for one in accepted:
        _store(decoded, one, quality)
    return decoded


@lru_cache(maxsize=4_096)
def _utc_time(text: str) -> datetime | None:
    """An RFC 3339 time in the form gateways send (docs/wire-contract.md) in UTC, or None for
    any other form, which the pydantic path judges. Cached: a message's readings share times."""
    if _TIME.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):  # a 61st second, a 13th month, year 0 in UTC
        return None


# fromisoformat alone would take an offset of +00:60, which pydantic refuses.
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


@lru_cache(maxsize=65_536)
def _is_name(text: str) -> bool:
    """Identifier's rule (devices.identifiers) for a device or channel: the same few recur."""
    return len(text) <= 64 and _NAME.fullmatch(text) is not None


def _channel_ok(spec: ChannelSpec | None, channel: str | None) -> bool:
    """check_values' channel rule, as a yes or no (its refusals come from the slow path)."""
    if spec is None:
        return channel is None
    return channel is not None and (not spec.allowed or channel in spec.allowed)


def _envelope_problem(text: str, exc: ValidationError) -> tuple[str, str]:
    try:
        json.loads(text)
    except json.JSONDecodeError as bad:
        return "bad_json", f"payload is not JSON: {bad}"
    return "bad_envelope", _errors(exc)


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
