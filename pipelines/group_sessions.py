"""Which MQTT sessions a shared group has had on this host, so that fewer workers never strand a share.

The broker keeps handing every member of a shared group its turn, an offline
member with a persistent session included, and never gives a message queued
for one member to another (../shared/RELIABILITY.md). So starting a group
with fewer workers than it had would leave the missing workers' share of every
later message unread at the broker, silently. The supervisor records the
sessions it starts; a recorded worker it no longer runs is retired (its queue
taken, its session discarded, then forgotten here), and a session it cannot
retire (another client id's) stops it from starting.
"""

import json
import os
import re
from pathlib import Path

from pydantic import BaseModel, ValidationError

from collector.process_lock import taking_turns
from pipelines.config import IngestSettings


class GroupSessions(BaseModel):
    """Per broker and shared group, the client ids of the sessions it has had."""

    groups: dict[str, list[str]] = {}
    retired: dict[str, list[str]] = {}
    """Per group, sessions retired and not yet found gone: a broker that crashes before its
    next save restores a session as it was, so each supervisor start checks them again."""
    subscribed: dict[str, list[str]] = {}
    """Per group, sessions that have subscribed to it at the broker: a session may leave the
    group's topics only once another holds them, or messages would meet no subscriber."""


def record_path(settings: IngestSettings) -> Path:
    """``mqtt-sessions.json`` beside the dead-letter store (one state directory per host)."""
    return settings.dead_letter.path.with_name("mqtt-sessions.json")


def group_key(settings: IngestSettings, *, plain: bool = False) -> str:
    """The record's key: the broker and the shared group, or ``(no group)`` for the sessions
    of single ingests (``plain``, or settings without a group)."""
    mqtt = settings.mqtt
    group = "(no group)" if plain or mqtt.shared_group is None else mqtt.shared_group
    return f"{mqtt.host}:{mqtt.port} {group}"


def session_lock_path(settings: IngestSettings) -> Path:
    """The lock a process holds while it uses its MQTT session (to run or to retire it)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", settings.mqtt.session_id)
    return record_path(settings).with_name(f"mqtt-session-{name}.lock")


def to_retire(settings: IngestSettings, sessions: list[str]) -> tuple[list[int | None], list[str]]:
    """What a supervisor running ``sessions`` retires: the numbers of this client id's workers
    it no longer runs or retired before (None: the session of a single ingest of this client
    id); and the recorded sessions it cannot (another client id's)."""
    record = _load(record_path(settings))
    key, client_id = group_key(settings), settings.mqtt.client_id
    names = {*record.groups.get(key, []), *record.retired.get(key, [])}
    if client_id in record.groups.get(group_key(settings, plain=True), []):
        names.add(client_id)
    return retirable(settings, sorted(names - set(sessions)))


def stranded_sessions(settings: IngestSettings, sessions: list[str]) -> list[str]:
    """Sessions recorded for this broker and group that ``sessions`` would leave out."""
    known = _load(record_path(settings)).groups.get(group_key(settings), [])
    return sorted(set(known) - set(sessions))


def record_sessions(settings: IngestSettings, sessions: list[str]) -> None:
    """Remember ``sessions`` (with those recorded before) as the group's, or as single
    ingests' for settings without a group."""
    path = record_path(settings)
    key = group_key(settings)
    if set(sessions) <= set(_load(path).groups.get(key, [])):
        return  # the supervisor's workers: it recorded them before starting them
    # Workers started by hand (units started together at boot) record at the same moment:
    # read and write under a lock, or one's session would overwrite the other's.
    with taking_turns(path.with_name(f"{path.name}.lock")):
        record = _load(path)
        known = record.groups.get(key, [])
        record.groups[key] = sorted(set(known) | set(sessions))
        # Run again (the group grew back): no longer retired.
        _drop(record.retired, key, set(sessions))
        _save(path, record)


def forget_session(settings: IngestSettings, session: str, *, gone: bool) -> None:
    """``session`` was retired: the group no longer has it. Unless the broker had no session
    for it already (``gone``), it is kept as retired, to be checked at the next start."""
    path = record_path(settings)
    key = group_key(settings)
    with taking_turns(path.with_name(f"{path.name}.lock")):
        record = _load(path)
        for where in (key, group_key(settings, plain=True)):
            _drop(record.groups, where, {session})
        _drop(record.subscribed, key, {session})
        if gone:
            _drop(record.retired, key, {session})
        else:
            record.retired[key] = sorted({*record.retired.get(key, []), session})
        _save(path, record)


def note_subscribed(settings: IngestSettings) -> None:
    """This worker's session has subscribed to its group at the broker."""
    path = record_path(settings)
    key, session = group_key(settings), settings.mqtt.session_id
    if session in _load(path).subscribed.get(key, []):
        return
    with taking_turns(path.with_name(f"{path.name}.lock")):
        record = _load(path)
        record.subscribed[key] = sorted({*record.subscribed.get(key, []), session})
        _save(path, record)


def group_has_subscriber(settings: IngestSettings) -> bool:
    """Whether a session of the group other than this one has subscribed to it (and is not
    being retired): the broker then keeps every message for the group."""
    record = _load(record_path(settings))
    key = group_key(settings)
    members = set(record.groups.get(key, [])) - {settings.mqtt.session_id}
    return bool(members & set(record.subscribed.get(key, [])))


def _drop(lists: dict[str, list[str]], key: str, names: set[str]) -> None:
    kept = [name for name in lists.get(key, []) if name not in names]
    if kept:
        lists[key] = kept
    else:
        lists.pop(key, None)


def retirable(settings: IngestSettings, stranded: list[str]) -> tuple[list[int | None], list[str]]:
    """Of ``stranded``: the worker numbers of this client id, and None for the client id itself
    (a single ingest's session), which a supervisor can retire; and the sessions it cannot
    (another client id's)."""
    client_id = settings.mqtt.client_id
    prefix = f"{client_id}-"
    numbers: list[int] = []
    others: list[str] = []
    single = False
    for name in stranded:
        number = name.removeprefix(prefix)
        if name == client_id:
            single = True
        elif name.startswith(prefix) and number.isdigit() and str(int(number)) == number:
            numbers.append(int(number))
        else:
            others.append(name)
    return [*sorted(numbers), *([None] if single else [])], others


def refusal(settings: IngestSettings, stranded: list[str], sessions: list[str]) -> str:
    """Why the group will not start without ``stranded``, and what to do instead."""
    mqtt = settings.mqtt
    found, others = retirable(settings, [*stranded, *sessions])
    numbers = [number for number in found if number is not None]
    how = '(docs/ingest.md, "Changing the number of workers")'
    if not others:
        advice = (
            f"Run --workers {max(numbers, default=0) + 1} (its supervisor retires the workers it no longer "
            "runs: their queue taken, their session discarded), or retire each first with "
            f"`ecotel-ingest run --worker K --retire` {how}"
        )
    else:
        advice = (
            f"{', '.join(others)} {'is' if len(others) == 1 else 'are'} not a worker of "
            f"mqtt.client_id {mqtt.client_id!r}: retire each under its own client id "
            f"(`run --worker K --retire`) or discard it {how}, then remove it from that file"
        )
    return (
        f"shared group {mqtt.shared_group!r} on {mqtt.host}:{mqtt.port} has also had "
        f"{'the session' if len(stranded) == 1 else 'the sessions'} {', '.join(stranded)} "
        f"(recorded in {record_path(settings)}): the broker keeps queueing "
        "their share of every message for them and gives it to no other member, so "
        f"starting without them would leave those readings unread. {advice}"
    )


def _save(path: Path, record: GroupSessions) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def _load(path: Path) -> GroupSessions:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return GroupSessions()
    try:
        return GroupSessions.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise ValueError(
            f"{path}: not a record of MQTT sessions ({exc}); fix or remove it"
        ) from exc
