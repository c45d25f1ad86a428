"""A point on its way to InfluxDB: a line of line protocol and where it came from."""

from typing import NamedTuple


class Point(NamedTuple):
    """One line of line protocol and where it came from (for counting and dead-lettering).

    A NamedTuple, not a frozen dataclass: made for every stored reading, it costs 0.4 us
    instead of 0.9, and a tuple of strings drops out of the garbage collector's tracking
    while up to ``max_pending_points`` of them wait in the writer's queue.
    """

    line: str
    kind: str
    topic: str
    reading: bool = True
    """False for points that are not device readings (gateway status)."""
