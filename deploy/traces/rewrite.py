"""Replay-time changes to a message: map sites and gateways onto others, move the readings' own times."""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector import wire

# Times before this are an unset gateway clock (1970): a fault worth keeping, never shifted.
_UNSET_CLOCK = datetime(2000, 1, 1, tzinfo=UTC)

Retime = Callable[[datetime], datetime]
"""Maps a time in the trace onto the replay's clock (the same function for every message)."""


@dataclass(frozen=True)
class Rewrite:
    """What to change; empty means the payload bytes go out exactly as recorded."""

    sites: dict[str, str] = field(default_factory=dict)
    gateways: dict[str, str] = field(default_factory=dict)
    prefixes: list[tuple[str, str]] = field(default_factory=list)
    restamp: bool = False

    @property
    def changes_payload(self) -> bool:
        return bool(self.sites or self.gateways or self.restamp)

    @property
    def empty(self) -> bool:
        return not (self.changes_payload or self.prefixes)

    def topic(self, topic: str) -> str:
        for old, new in self.prefixes:
            if topic.startswith(old):
                topic = new + topic[len(old) :]
                break
        if self.sites or self.gateways:
            try:
                site, gateway, leaf = wire.parse_topic(topic)
            except wire.TopicError:
                return topic
            topic = f"{wire.TOPIC_ROOT}/{self.sites.get(site, site)}/{self.gateways.get(gateway, gateway)}/{leaf}"
        return topic

    def payload(self, payload: bytes, retime: Retime | None = None) -> bytes:
        """The payload with names mapped and times moved by ``retime`` (when re-stamping).

        Bytes that are not a JSON object pass unchanged.
        """
        if not self.changes_payload:
            return payload
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return payload
        if not isinstance(body, dict):
            return payload
        changed = False
        for key, mapping in (("site", self.sites), ("gateway", self.gateways)):
            value = body.get(key)
            if isinstance(value, str) and value in mapping:
                body[key] = mapping[value]
                changed = True
        if self.restamp and retime is not None:
            changed |= _retime_all(body, retime)
        if not changed:
            return payload
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _retime_all(body: dict[str, Any], retime: Retime) -> bool:
    changed = False
    for key in ("sent_at", "at"):
        changed |= _retime_key(body, key, retime)
    readings = body.get("readings")
    if isinstance(readings, list):
        for reading in readings:
            if isinstance(reading, dict):
                changed |= _retime_key(reading, "time", retime)
    return changed


def _retime_key(obj: dict[str, Any], key: str, retime: Retime) -> bool:
    value = obj.get(key)
    if not isinstance(value, str):
        return False
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if moment.tzinfo is None or moment < _UNSET_CLOCK:
        return False
    new = format_time(retime(moment))
    if new == value:
        return False
    obj[key] = new
    return True


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds, as the gateway writes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_mapping(items: list[str], what: str) -> dict[str, str]:
    """``OLD=NEW`` pairs from the command line."""
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"{what} {item!r}: expected OLD=NEW")
        out[old] = new
    return out
