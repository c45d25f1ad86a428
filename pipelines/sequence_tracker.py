"""Per-gateway message numbers: repeats (redeliveries) and gaps (messages lost on the link) made visible."""

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class Seen(StrEnum):
    FIRST = "first"
    NEXT = "next"
    GAP = "gap"
    LATE = "late"
    REPEAT = "repeat"
    NEW = "new"
    """Shared mode: a number this worker has not seen; gaps are not judged (other workers)."""


@dataclass
class _Gateway:
    highest: int
    missing: set[int] = field(default_factory=set)


@dataclass
class _Share:
    """What one worker of a shared group remembers of a gateway: its latest numbers."""

    seen: set[int] = field(default_factory=set)
    order: deque[int] = field(default_factory=deque)


class SequenceTracker:
    """Counts, per gateway, repeated numbers and numbers still missing.

    A gateway numbers its messages 0, 1, 2, ... and resends an unacknowledged
    message with its number (docs/wire-contract.md). So a number seen twice is
    a redelivery (harmless: same points), and a number skipped is a message
    lost between gateway and ingest, until it turns up late. The first number
    seen from a gateway since the ingest started is its baseline. At most
    ``max_missing`` gaps are remembered per gateway; older ones count as lost
    for good.

    ``shared=True`` is for a worker of an MQTT shared subscription: the broker
    gives it only some of each gateway's numbers and the others to other
    workers, so a skipped number says nothing about loss. Then nothing is
    counted as missing (``missing()`` stays 0) and a repeat is a number among
    the last ``max_remembered`` this worker saw: a lower bound, since a resend
    may go to another worker than the first copy did.
    """

    def __init__(
        self, max_missing: int = 100_000, *, shared: bool = False, max_remembered: int = 1_024
    ) -> None:
        self._gateways: dict[tuple[str, str], _Gateway] = {}
        self._shares: dict[tuple[str, str], _Share] = {}
        self.max_missing = max_missing
        self.shared = shared
        self.max_remembered = max_remembered
        self.repeats: dict[tuple[str, str], int] = {}
        self.missing_total: dict[tuple[str, str], int] = {}

    def observe(self, site: str, gateway: str, seq: int) -> Seen:
        key = (site, gateway)
        if self.shared:
            return self._observe_share(key, seq)
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

    def _observe_share(self, key: tuple[str, str], seq: int) -> Seen:
        share = self._shares.get(key)
        first = share is None
        if share is None:
            share = self._shares[key] = _Share()
            self.repeats[key] = 0
            self.missing_total[key] = 0
        if seq in share.seen:
            self.repeats[key] += 1
            return Seen.REPEAT
        share.seen.add(seq)
        share.order.append(seq)
        if len(share.order) > self.max_remembered:
            share.seen.discard(share.order.popleft())
        return Seen.FIRST if first else Seen.NEW

    def missing(self, site: str, gateway: str) -> int:
        """Messages of this gateway not (yet) seen since the ingest started; 0 when shared."""
        return self.missing_total.get((site, gateway), 0)
