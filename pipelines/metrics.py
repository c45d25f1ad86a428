"""The ingest's counters in Prometheus text format, read from the service at scrape time."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipelines.sequence_ledger import GroupFigures
from pipelines.service import IngestService
from pipelines.stats import WRITE_LATENCY_BUCKETS_S

PREFIX = "ecotel_ingest_"


class IngestCollector(Collector):
    """Everything is computed when scraped, so the per-reading path pays nothing for metrics."""

    def __init__(self, service: IngestService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        stats = service.stats
        yield _counter("messages", "Messages received (MQTT and HTTP)", stats.messages)
        yield _counter("readings_received", "Readings in messages that decoded", stats.received)
        yield _counter("readings_written", "Readings written to InfluxDB", stats.written)
        by_kind = CounterMetricFamily(
            PREFIX + "points_written", "Points written to InfluxDB per measurement", labels=["kind"]
        )
        for kind, count in sorted(stats.written_by_kind.items()):
            by_kind.add_metric([kind], count)
        yield by_kind
        rejected = CounterMetricFamily(
            PREFIX + "rejected",
            "Refusals by reason; scope message (whole message) or reading",
            labels=["scope", "reason"],
        )
        for reason, count in sorted(stats.rejected_messages.items()):
            rejected.add_metric(["message", reason], count)
        for reason, count in sorted(stats.rejected_readings.items()):
            rejected.add_metric(["reading", reason], count)
        yield rejected
        if service.quality is not None:
            flagged = CounterMetricFamily(
                PREFIX + "quality_flags",
                "Readings stored with a quality flag, by flag",
                labels=["flag"],
            )
            for flag, count in sorted(service.quality.flagged.items()):
                flagged.add_metric([flag], count)
            yield flagged
        yield _gauge(
            "spool_points", "Points waiting in the disk spool for InfluxDB", stats.spool_points
        )
        yield _counter("spooled_points", "Points ever put in the spool", stats.spooled)
        yield _gauge(
            "pending_points", "Points accepted, not yet written or refused", service.writer.pending
        )
        acks = service.acks
        yield _gauge(
            "unacked_messages",
            "MQTT messages received whose PUBACK waits for their write",
            acks.unacked if acks is not None else 0,
        )
        yield _gauge(
            "oldest_unacked_age_seconds",
            "Age of the oldest MQTT message still waiting for its PUBACK",
            acks.oldest_age_s() if acks is not None else 0.0,
        )
        yield _gauge(
            "broker_connected", "1 while the MQTT session is up", service.connected.is_set()
        )
        yield _counter("write_batches", "Batches written to InfluxDB", stats.write_batches)
        yield _counter("write_retries", "Batch writes retried", stats.write_retries)
        cumulative, buckets = 0, []
        for bound, count in zip(WRITE_LATENCY_BUCKETS_S, stats.write_latency_counts, strict=False):
            cumulative += count
            buckets.append((_le(bound), float(cumulative)))
        buckets.append(("+Inf", float(sum(stats.write_latency_counts))))
        yield HistogramMetricFamily(
            PREFIX + "write_batch_seconds",
            "Time of a successful batch write to InfluxDB",
            buckets=buckets,
            sum_value=stats.write_latency_sum_s,
        )
        sequences = service.sequences
        repeats = CounterMetricFamily(
            PREFIX + "sequence_repeats",
            "Readings messages whose gateway sequence number was seen before (redeliveries)",
            labels=["site", "gateway"],
        )
        missing = GaugeMetricFamily(
            PREFIX + "sequence_missing",
            "Gateway sequence numbers skipped and not seen since (always 0 for a shared worker: "
            "see ecotel_ingest_group_sequence_missing)",
            labels=["site", "gateway"],
        )
        for (site, gateway), count in sorted(sequences.repeats.items()):
            repeats.add_metric([site, gateway], count)
            missing.add_metric([site, gateway], sequences.missing(site, gateway))
        yield repeats
        yield missing
        if service.ledger is not None:
            yield from _group_sequences(service.ledger.view)


def _group_sequences(view: dict[tuple[str, str], GroupFigures]) -> Iterator[Metric]:
    """A shared group's figures (pipelines/sequence_ledger.py): every worker of the group shows
    the same values, so take one worker's (or the max), never their sum."""
    repeats = CounterMetricFamily(
        PREFIX + "group_sequence_repeats",
        "Whole shared group, the same on every worker: readings messages received more than "
        "once by any of its workers",
        labels=["site", "gateway"],
    )
    missing = GaugeMetricFamily(
        PREFIX + "group_sequence_missing",
        "Whole shared group, the same on every worker: gateway sequence numbers no worker "
        "received within the grace (sequences.grace_s), and not since",
        labels=["site", "gateway"],
    )
    judged = GaugeMetricFamily(
        PREFIX + "group_sequence_judged_below",
        "Whole shared group: every sequence number of the gateway below this one is judged",
        labels=["site", "gateway"],
    )
    for (site, gateway), figures in sorted(view.items()):
        repeats.add_metric([site, gateway], figures.repeats)
        missing.add_metric([site, gateway], figures.missing)
        if figures.judged_below is not None:
            judged.add_metric([site, gateway], figures.judged_below)
    yield repeats
    yield missing
    yield judged


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=float(value))


def _le(bound: float) -> str:
    return repr(float(bound))


def render_metrics(service: IngestService) -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IngestCollector(service))
    return generate_latest(registry)
