"""A line-protocol point read back: its measurement, tags and time (for a replayed point's windows).

The inverse of pipelines/line_protocol.py's escaping, for any line InfluxDB takes.
"""

from dataclasses import dataclass

# What a backslash escapes in each part (InfluxDB 1.x line protocol); before any
# other character it is a backslash.
_MEASUREMENT_ESCAPES = ", "
_TAG_ESCAPES = ",= "


@dataclass(frozen=True)
class Series:
    """A point's identity: measurement, tag set, timestamp in nanoseconds."""

    measurement: str
    tags: dict[str, str]
    time_ns: int


def parse_series(line: str) -> Series:
    """Measurement, tags and time of one line; ValueError if it is not a point with a time."""
    measurement, end, stop = _token(line, 0, ", ", _MEASUREMENT_ESCAPES)
    if not measurement or stop is None:
        raise ValueError(f"not a line-protocol point: {line[:80]!r}")
    tags: dict[str, str] = {}
    while stop == ",":
        key, end, stop = _token(line, end, "=", _TAG_ESCAPES)
        if stop != "=" or not key:
            raise ValueError(f"tag without a value in {line[:80]!r}")
        value, end, stop = _token(line, end, ", ", _TAG_ESCAPES)
        tags[key] = value
    if stop != " ":
        raise ValueError(f"no field set in {line[:80]!r}")
    end = _skip_fields(line, end)
    stamp = line[end:].strip()
    if not stamp.lstrip("-").isdigit():
        raise ValueError(f"no timestamp in {line[:80]!r}")
    return Series(measurement, tags, int(stamp))


def _token(line: str, start: int, stops: str, escapes: str) -> tuple[str, int, str | None]:
    """The unescaped text from ``start`` to the first unescaped stop character; the index
    after that character, and the character (None at the end of the line)."""
    out: list[str] = []
    i = start
    while i < len(line):
        char = line[i]
        if char == "\\" and i + 1 < len(line) and line[i + 1] in escapes:
            out.append(line[i + 1])
            i += 2
            continue
        if char in stops:
            return "".join(out), i + 1, char
        out.append(char)
        i += 1
    return "".join(out), i, None


def _skip_fields(line: str, start: int) -> int:
    """The index after the field set that begins at ``start`` (string values may hold spaces)."""
    quoted = False
    i = start
    while i < len(line):
        char = line[i]
        if char == "\\" and i + 1 < len(line):
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            return i + 1
        i += 1
    raise ValueError(f"no timestamp after the fields of {line[:80]!r}")
