"""The trace file: gzip members of JSON lines, a header line then one line per MQTT message (docs/traces.md)."""

import base64
import contextlib
import glob
import gzip
import json
import os
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Self

FORMAT_VERSION = 1
SUFFIX = ".trace.gz"
_CHUNK = 1 << 20
# A member is written once this much is buffered, or when the writer is flushed.
_MEMBER_BYTES = 256 * 1024

JsonDict = dict[str, Any]


class TraceError(Exception):
    """A file that is not an ecotel trace, or a line in it that cannot be read."""


def ecotel_version() -> str:
    try:
        return metadata.version("ecotel")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One MQTT message as it arrived: when (us since the epoch, UTC), where, the exact bytes."""

    t_us: int
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    props: JsonDict | None = None

    @property
    def arrived(self) -> datetime:
        return datetime.fromtimestamp(self.t_us / 1e6, UTC)

    def to_json(self) -> JsonDict:
        line: JsonDict = {"t": self.t_us, "topic": self.topic, "qos": self.qos}
        if self.retain:
            line["retain"] = True
        try:
            # Text when it is UTF-8 (so `zcat | grep` works); strict UTF-8 round-trips exactly.
            line["payload"] = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            line["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        if self.props:
            line["props"] = self.props
        return line

    @classmethod
    def from_json(cls, line: JsonDict) -> Self:
        if "payload" in line:
            payload = str(line["payload"]).encode("utf-8")
        else:
            payload = base64.b64decode(line["payload_b64"], validate=True)
        return cls(
            t_us=int(line["t"]),
            topic=str(line["topic"]),
            payload=payload,
            qos=int(line.get("qos", 0)),
            retain=bool(line.get("retain", False)),
            props=line.get("props") or None,
        )


@dataclass(frozen=True)
class TraceHeader:
    """Where and when a recording began; every file (and every appended session) starts with one."""

    broker: str
    filters: list[str]
    started_at: datetime
    source: str = "record"
    ecotel_version: str = field(default_factory=ecotel_version)
    part: int | None = None
    note: str | None = None

    def to_json(self) -> JsonDict:
        line: JsonDict = {
            "ecotel_trace": FORMAT_VERSION,
            "broker": self.broker,
            "filters": self.filters,
            "started_at": self.started_at.astimezone(UTC).isoformat(),
            "source": self.source,
            "ecotel_version": self.ecotel_version,
        }
        if self.part is not None:
            line["part"] = self.part
        if self.note:
            line["note"] = self.note
        return line

    @classmethod
    def from_json(cls, line: JsonDict) -> Self:
        version = line.get("ecotel_trace")
        if version != FORMAT_VERSION:
            raise TraceError(
                f"trace format {version!r} is not supported (this reads {FORMAT_VERSION})"
            )
        return cls(
            broker=str(line.get("broker", "")),
            filters=[str(f) for f in line.get("filters", [])],
            started_at=datetime.fromisoformat(str(line["started_at"])),
            source=str(line.get("source", "record")),
            ecotel_version=str(line.get("ecotel_version", "unknown")),
            part=line.get("part"),
            note=line.get("note"),
        )


class TraceWriter:
    """Append-only writer: each flush is one complete gzip member, so a crash costs only the buffer.

    Blocking file I/O; async callers run ``flush`` and ``close`` in a thread.
    """

    def __init__(self, path: Path, header: TraceHeader, *, append: bool = False) -> None:
        self.path = path
        if not append and path.exists():
            raise TraceError(f"{path} exists; pass --append to add to it, or choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.records = 0
        self.opened_at = time.monotonic()
        self.repaired_lines: int | None = None
        """Appending to a cut file: the whole lines of its cut member, written again (else None)."""
        if append and self._file.tell() > 0:
            self._repair_cut_end()
        self._add(header.to_json())
        self.flush()

    def _repair_cut_end(self) -> None:
        """Cut a truncated last member back and write its whole lines as a complete member.

        A reader cannot find members that follow a cut one (the cut deflate stream swallows
        them), so appending behind it would hide the whole new session.
        """
        end, tail = complete_end(self.path)
        if tail is None:
            return
        whole = tail[: tail.rfind(b"\n") + 1]
        self._file.truncate(end)
        self._file.seek(end)
        self.repaired_lines = whole.count(b"\n")
        self.write_member(whole)
        if not whole:
            self._file.flush()
            os.fsync(self._file.fileno())

    member_bytes = _MEMBER_BYTES

    def _add(self, line: JsonDict) -> None:
        data = json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        self._buffer.append(data)
        self._buffered += len(data)

    @property
    def buffered(self) -> int:
        return self._buffered

    def buffer(self, record: TraceRecord) -> None:
        """Add a record to the buffer without writing (async callers flush via take/write_member)."""
        self._add(record.to_json())
        self.records += 1

    def buffer_header(self, header: TraceHeader) -> None:
        """A header line mid-file: a new session (append) or a resumed one (reconnect)."""
        self._add(header.to_json())

    def write(self, record: TraceRecord) -> None:
        self.buffer(record)
        if self._buffered >= self.member_bytes:
            self.flush()

    def take(self) -> bytes:
        """Empty the buffer and return its lines (cheap: call it on the event loop)."""
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return data

    def write_member(self, data: bytes) -> None:
        """Compress ``data`` into one gzip member, append it and push it to disk (blocking)."""
        if not data:
            return
        self._file.write(gzip.compress(data, compresslevel=6, mtime=0))
        self._file.flush()
        os.fsync(self._file.fileno())

    def flush(self) -> None:
        """Write what is buffered as one gzip member and push it to disk."""
        self.write_member(self.take())

    @property
    def size(self) -> int:
        """Compressed bytes on disk so far."""
        return self._file.tell()

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PART_DIGITS = 6
"""Part numbers are zero-padded to this: names sort in recording order up to 999,999 parts."""


def _stem_suffix(path: Path) -> tuple[str, str]:
    name = path.name
    if name.endswith(SUFFIX):
        return name[: -len(SUFFIX)], SUFFIX
    return path.stem, path.suffix


def part_path(path: Path, part: int, digits: int = PART_DIGITS) -> Path:
    """``site.trace.gz`` part 3 -> ``site-000003.trace.gz`` (names that sort in recording order)."""
    stem, suffix = _stem_suffix(path)
    return path.with_name(f"{stem}-{part:0{digits}d}{suffix}")


def existing_parts(path: Path) -> list[tuple[int, int, Path]]:
    """The numbered parts of ``path`` on disk as (number, digits, path), by part number."""
    stem, suffix = _stem_suffix(path)
    pattern = re.compile(rf"{re.escape(stem)}-(\d+){re.escape(suffix)}")
    found = []
    for candidate in path.parent.glob(f"{glob.escape(stem)}-*{glob.escape(suffix)}"):
        match = pattern.fullmatch(candidate.name)
        if match:
            found.append((int(match.group(1)), len(match.group(1)), candidate))
    return sorted(found)


def complete_end(path: Path) -> tuple[int, bytes | None]:
    """Where the last complete gzip member ends, and the cut member's data if the file goes on."""
    decomp = zlib.decompressobj(wbits=31)
    end = offset = 0
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            offset += len(chunk)
            while chunk:
                try:
                    tail += decomp.decompress(chunk)
                except zlib.error as exc:
                    raise TraceError(f"{path}: not a gzip trace ({exc})") from None
                if not decomp.eof:
                    break
                end = offset - len(decomp.unused_data)
                chunk = decomp.unused_data
                decomp = zlib.decompressobj(wbits=31)
                tail = b""
    if end == offset:
        return end, None
    with contextlib.suppress(zlib.error):
        tail += decomp.flush()
    return end, tail


@dataclass
class ReadStats:
    """What reading a trace found beside its records."""

    headers: list[TraceHeader] = field(default_factory=list)
    truncated: list[Path] = field(default_factory=list)


def _lines(path: Path, stats: ReadStats) -> Iterator[bytes]:
    """The decompressed lines of every gzip member; a truncated last member yields its whole lines."""
    pending = b""
    decomp = zlib.decompressobj(wbits=31)
    member_started = False
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            while chunk:
                try:
                    data = decomp.decompress(chunk)
                except zlib.error as exc:
                    raise TraceError(f"{path}: not a gzip trace ({exc})") from None
                member_started = True
                pending += data
                *whole, pending = pending.split(b"\n")
                yield from whole
                if decomp.eof:
                    chunk = decomp.unused_data
                    decomp = zlib.decompressobj(wbits=31)
                    member_started = False
                else:
                    chunk = b""
    if member_started or pending:
        # Killed while writing a member: keep its complete lines, say so, drop the rest.
        tail = decomp.flush() if member_started else b""
        pending += tail
        *whole, pending = pending.split(b"\n")
        yield from whole
        stats.truncated.append(path)


def read_items(
    paths: Iterable[Path], stats: ReadStats | None = None
) -> Iterator[TraceHeader | TraceRecord]:
    """Headers and records of the files in file order; headers and truncation also go to ``stats``."""
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        first = True
        for number, raw in enumerate(_lines(path, stats), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if "ecotel_trace" in line:
                    header = TraceHeader.from_json(line)
                    stats.headers.append(header)
                    yield header
                elif first:
                    raise TraceError("the first line is not a trace header")
                else:
                    yield TraceRecord.from_json(line)
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{path}: line {number}: {exc}") from None
            first = False
        if first:
            raise TraceError(f"{path}: {_why_no_header(path, stats)}: not an ecotel trace")


def _why_no_header(path: Path, stats: ReadStats) -> str:
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if path in stats.truncated:
        return "cut before its first line (the header) ended"
    return "no header line (an empty gzip stream)"


def read_trace(paths: Iterable[Path], stats: ReadStats | None = None) -> Iterator[TraceRecord]:
    """Every record of the files, in file order; headers and truncation go to ``stats``."""
    for item in read_items(paths, stats):
        if isinstance(item, TraceRecord):
            yield item


def load_trace(paths: Iterable[Path]) -> tuple[list[TraceRecord], ReadStats]:
    stats = ReadStats()
    records = list(read_trace(paths, stats))
    return records, stats


def write_trace(path: Path, header: TraceHeader, records: Iterable[TraceRecord]) -> int:
    """Write a whole trace file at once; returns the number of records."""
    with TraceWriter(path, header) as writer:
        for record in records:
            writer.write(record)
        return writer.records
