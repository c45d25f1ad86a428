"""The mapping of a validated reading to one InfluxDB line-protocol point, with exact escaping.

Hand-written f-strings rather than influxdb-client's Point: measured ~2 us per
reading against ~12 us, and the ingest serialises every reading it stores.
"""

import types
import typing
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache, lru_cache

from collector.wire import GatewayHealth, GatewayStatus
from devices import KindValues, Reading

STATUS_MEASUREMENT = "gateway_status"
HEALTH_MEASUREMENT = "gateway_health"
DEVICE_ERRORS_MEASUREMENT = "gateway_device_errors"

# Line protocol escapes: measurement names escape ',' and ' '; tag keys, tag
# values and field keys also '='; string field values escape '"' and '\'.
# Identifiers cannot hold '\' or newlines (devices.identifiers), so no other
# escape is needed in tags.
_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_TAG = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})
_STRING_FIELD = str.maketrans({'"': r"\"", "\\": "\\\\"})


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT)


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    return text.translate(_TAG)


def escape_string_field(text: str) -> str:
    return text.translate(_STRING_FIELD)


@lru_cache(maxsize=4_096)
def timestamp_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond a datetime holds; cached, as the
    readings of a message share a few times (0.1 against 0.3 us)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def moment_ns(ns: int) -> datetime:
    """The UTC datetime of a point's nanosecond time (InfluxDB's epoch=ns), to the microsecond."""
    return _EPOCH + timedelta(microseconds=ns // 1_000)


def to_line(
    site: str, gateway: str, reading: Reading, values: KindValues, *, quality: str | None = None
) -> str:
    """One point of a validated reading and its checked values (see ``values_line``)."""
    return values_line(
        site,
        gateway,
        type(values),
        reading.device,
        reading.channel,
        reading.time,
        values.__dict__,
        quality=quality,
    )


def values_line(
    site: str,
    gateway: str,
    model: type[KindValues],
    device: str,
    channel: str | None,
    time: datetime,
    values: Mapping[str, object],
    *,
    quality: str | None = None,
) -> str:
    """One point: measurement = kind; tags = channel tag, device, gateway, site; fields = values.

    A point's identity in InfluxDB is measurement + tags + time, so the same
    reading always gives the same line (a retry overwrites itself), and two
    readings differing in site, gateway, device, channel, kind or time never
    collide. Every number is written as a float so that a field's type never
    conflicts between points. ``values`` holds ``model``'s fields in its order,
    None where absent. ``quality`` (pipelines/quality.py flags) becomes the
    string field ``quality``, on flagged readings only.
    """
    spec = model.channel
    key = series_key(
        model.kind, spec.tag if spec is not None else None, channel, device, gateway, site
    )
    template = _field_template(model)
    present = tuple(values.values())
    if template is not None and None not in present:
        # Every field present (nearly always): one %-format in C, ~0.6 us less per reading.
        field_set = template % present
    else:
        field_set = _field_set(model, values)
    if quality is not None:
        field_set += f',quality="{quality}"'
    return f"{key} {field_set} {timestamp_ns(time)}"


def _field_set(model: type[KindValues], values: Mapping[str, object]) -> str:
    fields = []
    keys = _field_keys(model)
    for name, value in values.items():
        if value is None:
            continue
        if type(value) is float:
            fields.append(keys[name] + repr(value))
        elif isinstance(value, str):
            fields.append(f'{keys[name]}"{escape_string_field(value)}"')
        else:
            fields.append(keys[name] + repr(float(value)))  # type: ignore[arg-type]
    return ",".join(fields)


@lru_cache(maxsize=65_536)
def series_key(
    kind: str, channel_tag: str | None, channel: str | None, device: str, gateway: str, site: str
) -> str:
    """Measurement and tag set of a point: the same few thousand series recur, so it is cached."""
    tags = [("device", device), ("gateway", gateway), ("site", site)]
    if channel_tag is not None and channel is not None:
        tags.append((channel_tag, channel))
    # InfluxDB stores tags sorted by key; sending them sorted saves it the work.
    tags.sort()
    tag_text = ",".join(f"{escape_tag(k)}={escape_tag(v)}" for k, v in tags)
    return f"{escape_measurement(kind)},{tag_text}"


@cache
def _field_template(model: type[KindValues]) -> str | None:
    """``model``'s field set as a %-format of all its values in order, or None if a field is
    neither a float (checked values are floats, never ints) nor one of fixed words that
    need no escaping."""
    keys = _field_keys(model)
    parts = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        kinds = (
            [a for a in typing.get_args(annotation) if a is not type(None)]
            if union
            else [annotation]
        )
        if kinds == [float]:
            parts.append(keys[name].replace("%", "%%") + "%r")
            continue
        words = typing.get_args(kinds[0]) if len(kinds) == 1 else ()
        if typing.get_origin(kinds[0]) is not typing.Literal or not all(
            isinstance(w, str) and escape_string_field(w) == w and "%" not in w for w in words
        ):
            return None
        parts.append(keys[name].replace("%", "%%") + '"%s"')
    return ",".join(parts)


@cache
def _field_keys(model: type[KindValues]) -> dict[str, str]:
    """Each field's escaped key and '=', once per model rather than per value."""
    return {name: f"{escape_tag(name)}=" for name in model.model_fields}


def status_to_line(site: str, gateway: str, status: GatewayStatus, *, at: datetime) -> str:
    """A gateway's availability as a point of ``gateway_status`` (online = 1.0 or 0.0), at ``at``
    (pipelines/status_order.py: the last will carries no time, a gateway's clock may be wrong)."""
    online = 1.0 if status.state == "online" else 0.0
    return (
        f"{STATUS_MEASUREMENT},gateway={escape_tag(gateway)},site={escape_tag(site)} "
        f'online={online!r},state="{status.state}",reason="{status.reason}" {timestamp_ns(at)}'
    )


def health_to_lines(site: str, gateway: str, health: GatewayHealth, *, at: datetime) -> list[str]:
    """A gateway's health as one ``gateway_health`` point, plus one ``gateway_device_errors``
    point per device (tag ``device``, field ``errors``), all stamped ``at`` (the report's own
    time while its clock is trusted, else its arrival: pipelines/service.py).

    An empty outbox has no oldest reading: its age is written as 0, so that the backlog panel
    and alert fall back as soon as the outbox is empty (the field left out kept the last age).
    """
    key = f"gateway={escape_tag(gateway)},site={escape_tag(site)}"
    ts = timestamp_ns(at)
    numbers: dict[str, float | None] = {
        "uptime_s": health.uptime_s,
        "cpu_temperature_c": health.cpu_temperature_c,
        "load_1m": health.load_1m,
        "memory_available_mb": health.memory_available_mb,
        "disk_free_mb": health.disk_free_mb,
        "outbox_readings": float(health.outbox_readings),
        "outbox_bytes": float(health.outbox_bytes),
        "oldest_unsent_age_s": health.oldest_unsent_age_s or 0.0,
        "link_up": 1.0 if health.link_up else 0.0,
        "reconnects": float(health.reconnects),
        "dropped_total": float(health.dropped_total),
        "clock_ok": 1.0 if health.clock_state == "ok" else 0.0,
        "clock_jumps": float(health.clock_jumps),
        "readings_held": float(health.readings_held),
    }
    fields = ",".join(f"{k}={float(v)!r}" for k, v in numbers.items() if v is not None)
    lines = [f"{HEALTH_MEASUREMENT},{key} {fields} {ts}"]
    for device, errors in sorted(health.device_errors.items()):
        lines.append(
            f"{DEVICE_ERRORS_MEASUREMENT},device={escape_tag(device)},{key} "
            f"errors={float(errors)!r} {ts}"
        )
    return lines
