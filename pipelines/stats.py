"""The ingest's counters: what came in, what was stored, what was rejected and why."""

from collections import Counter
from dataclasses import dataclass, field


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
    spooled: int = 0
    """Points put in the disk spool since start because InfluxDB could not take them."""
    spool_points: int = 0
    """Points in the spool now."""

    def count_written(self, kind: str, *, reading: bool = True) -> None:
        self.written_by_kind[kind] += 1
        if reading:
            self.written += 1

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
            f"spool_points={self.spool_points}"
        )
