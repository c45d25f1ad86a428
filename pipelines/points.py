"""A point on its way to InfluxDB: a line of line protocol and where it came from."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """One line of line protocol and where it came from (for counting and dead-lettering)."""

    line: str
    kind: str
    topic: str
    reading: bool = True
    """False for points that are not device readings (gateway status)."""
