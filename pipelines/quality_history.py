"""Rebuild the quality checker's memory from what InfluxDB holds, so a restart does not reset flags."""

import logging

from devices import KINDS
from pipelines.config import InfluxSettings
from pipelines.influx_query import query_influx
from pipelines.influx_writer import InfluxError
from pipelines.line_protocol import moment_ns
from pipelines.quality import QualityChecker

log = logging.getLogger("ecotel.ingest.quality")


async def load_quality_history(
    checker: QualityChecker, influx: InfluxSettings, history_s: float
) -> int:
    """Replay each series' latest stored readings into ``checker``; the number of series.

    The readings a killed ingest wrote but never acknowledged come back from
    the broker not newer than what is read here, so they are not judged
    again and keep the flags they were stored with.
    """
    depth = checker.settings.stuck_readings + 1
    series_count = 0
    for kind, model in KINDS.items():
        channel_tag = model.channel.tag if model.channel is not None else None
        query = (
            f'SELECT * FROM "{kind}" WHERE time > now() - {int(history_s)}s '
            f"GROUP BY * ORDER BY time DESC LIMIT {depth}"
        )
        try:
            found = await query_influx(influx, query, epoch="ns")
        except (InfluxError, OSError) as exc:
            log.warning("quality: history of %s not read (%s); judging afresh", kind, exc)
            continue
        for series in found:
            tags = series.tags
            key = (
                tags.get("site", ""),
                tags.get("gateway", ""),
                tags.get("device", ""),
                kind,
                tags.get(channel_tag) or None if channel_tag is not None else None,
            )
            series_count += 1
            for row in reversed(series.rows()):
                checker.observe(key, moment_ns(int(row["time"])), row)
    # Flags met while replaying were counted when first stored.
    checker.flagged = dict.fromkeys(checker.flagged, 0)
    if series_count:
        log.info("quality: recent history of %d series read back from InfluxDB", series_count)
    return series_count
