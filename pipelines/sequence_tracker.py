"""Per-gateway message numbers: repeats (redeliveries) and gaps (messages lost on the link) made visible."""

from dataclasses import dataclass, field
from enum import StrEnum


class Seen(StrEnum):
    FIRST = "first"
    NEXT = "next"
    GAP = "gap"
    LATE = "late"
    REPEAT = "repeat"


@dataclass
class _Gateway:
    highest: int
    missing: set[int] = field(default_factory=set)


class SequenceTracker:
    """Counts, per gateway, repeated numbers and numbers still missing.

    A gateway numbers its messages 0, 1, 2, ... and resends an unacknowledged
    message with its number (docs/wire-contract.md). So a number seen twice is
    a redelivery (harmless: same points), and a number skipped is a message
    lost between gateway and ingest, until it turns up late. The first number
    seen from a gateway since the ingest started is its baseline. At most
    ``max_missing`` gaps are remembered per gateway; older ones count as lost
    for good.
    """

    def __init__(self, max_missing: int = 100_000) -> None:
        self._gateways: dict[tuple[str, str], _Gateway] = {}
        self.max_missing = max_missing
        self.repeats: dict[tuple[str, str], int] = {}
        self.missing_total: dict[tuple[str, str], int] = {}

    def observe(self, site: str, gateway: str, seq: int) -> Seen:
        key = (site, gateway)
        state = self._gateways.get(key)
        if state is None:
            self._gateways[key] = _Gateway(highest=seq)
            self.repeats.setdefault(key, 0)
            self.missing_total.setdefault(key, 0)
            return Seen.FIRST
        if seq == state.highest + 1:
            state.highest = seq
            return Seen.NEXT
        if seq > state.highest + 1:
            gap = range(state.highest + 1, seq)
            self.missing_total[key] += len(gap)
            state.missing.update(gap[-self.max_missing :])
            while len(state.missing) > self.max_missing:
                state.missing.remove(min(state.missing))
            state.highest = seq
            return Seen.GAP
        if seq in state.missing:
            state.missing.remove(seq)
            self.missing_total[key] -= 1
            return Seen.LATE
        self.repeats[key] += 1
        return Seen.REPEAT

    def missing(self, site: str, gateway: str) -> int:
        """Messages of this gateway not (yet) seen since the ingest started."""
        return self.missing_total.get((site, gateway), 0)
