"""The ingest's counters as InfluxDB points, so that Grafana can chart its rate, rejections and write latency."""

from datetime import datetime

from pipelines.line_protocol import escape_tag, timestamp_ns
from pipelines.stats import IngestStats

STATS_MEASUREMENT = "ingest_stats"
REJECTED_MEASUREMENT = "ingest_rejected"


def stats_to_lines(worker: str, stats: IngestStats, at: datetime) -> list[str]:
    """One ``ingest_stats`` point of running totals, plus one ``ingest_rejected`` point per reason.

    Totals since the worker started: a rate is ``non_negative_difference`` of
    them, which also steps over a restart's reset to zero.
    """
    key = f"worker={escape_tag(worker)}"
    ts = timestamp_ns(at)
    numbers = {
        "messages": stats.messages,
        "received": stats.received,
        "written": stats.written,
        "rejected": stats.rejected + sum(stats.rejected_messages.values()),
        "write_batches": stats.write_batches,
        "write_retries": stats.write_retries,
        "write_latency_s": stats.last_write_latency_s,
        "repeated_messages": stats.repeated_messages,
        "missing_messages": stats.missing_messages,
        "spool_points": stats.spool_points,
    }
    if stats.group_repeated_messages is not None and stats.group_missing_messages is not None:
        # The whole shared group's figures, the same from every worker: chart their max
        # over the group's workers, not their sum.
        numbers["group_repeated_messages"] = stats.group_repeated_messages
        numbers["group_missing_messages"] = stats.group_missing_messages
    fields = ",".join(f"{k}={float(v)!r}" for k, v in numbers.items())
    lines = [f"{STATS_MEASUREMENT},{key} {fields} {ts}"]
    for reason, count in sorted((stats.rejected_readings + stats.rejected_messages).items()):
        lines.append(
            f"{REJECTED_MEASUREMENT},reason={escape_tag(reason)},{key} count={float(count)!r} {ts}"
        )
    return lines
