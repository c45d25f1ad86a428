"""The ingest's counters: what came in, what was stored, what was rejected and why."""

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.points import Chunk

WRITE_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class IngestStats:
    """Running totals since start; rejected counts are keyed by reason code."""

    messages: int = 0
    received: int = 0
    written: int = 0
    written_by_kind: Counter[str] = field(default_factory=Counter)
    rejected_messages: Counter[str] = field(default_factory=Counter)
    rejected_readings: Counter[str] = field(default_factory=Counter)
    write_batches: int = 0
    write_retries: int = 0
    last_write_latency_s: float = 0.0
    status_updates: int = 0
    repeated_messages: int = 0
    """Readings messages whose gateway sequence number was seen before (redeliveries)."""
    missing_messages: int = 0
    """Sequence numbers skipped by gateways and not (yet) seen: messages lost on the link."""
    group_repeated_messages: int | None = None
    """A shared group's worker: messages received more than once by any worker of the group
    (pipelines/sequence_ledger.py; the same figure on every worker). None when not shared."""
    group_missing_messages: int | None = None
    """A shared group's worker: numbers no worker of the group received within the grace."""
    spooled: int = 0
    """Points put in the disk spool since start because InfluxDB could not take them."""
    spool_points: int = 0
    """Points in the spool now."""

    write_latency_sum_s: float = 0.0
    write_latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(WRITE_LATENCY_BUCKETS_S) + 1)
    )
    """Batches per bucket of WRITE_LATENCY_BUCKETS_S (not cumulative), the last one above all."""

    def record_write_latency(self, seconds: float) -> None:
        self.last_write_latency_s = seconds
        self.write_latency_sum_s += seconds
        self.write_latency_counts[bisect_left(WRITE_LATENCY_BUCKETS_S, seconds)] += 1

    def count_written(self, chunks: Sequence[Chunk]) -> None:
        """Count a written batch by kind, and its readings: Counter counts in C, not a call
        per point."""
        for chunk in chunks:
            self.written_by_kind.update(chunk.kinds)
            if chunk.reading:
                self.written += len(chunk.lines)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_readings.values())

    def summary(self) -> str:
        reasons = dict(self.rejected_readings + self.rejected_messages)
        return (
            f"messages={self.messages} received={self.received} written={self.written} "
            f"rejected={self.rejected} rejected_messages={sum(self.rejected_messages.values())} "
            f"reasons={reasons or '{}'} batches={self.write_batches} retries={self.write_retries} "
            f"last_write={self.last_write_latency_s * 1000:.1f}ms "
            f"repeated_messages={self.repeated_messages} missing_messages={self.missing_messages} "
            f"spool_points={self.spool_points}{self._group()}"
        )

    def _group(self) -> str:
        if self.group_repeated_messages is None or self.group_missing_messages is None:
            return ""
        return (
            f" group_repeated_messages={self.group_repeated_messages} "
            f"group_missing_messages={self.group_missing_messages}"
        )
