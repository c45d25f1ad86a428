"""``ecotel-ingest derive``: recompute the derived measurements of a past time range from InfluxDB."""

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import IngestSettings
from pipelines.derive_range import recompute_range
from pipelines.derive_windows import WindowDeriver
from pipelines.influx_writer import InfluxError, InfluxWriter
from pipelines.points import Point
from pipelines.stats import IngestStats

DESCRIPTION = """Recompute every derived measurement of [--from, --to) from the raw readings
InfluxDB holds (docs/analytics.md): per-reading points (water class, road
safety, lane flow) are deleted and rewritten; every window (PUE, pPUE, REF,
WUE per 15 min, hour and day of the data-center sites in [derive]; per-site
traffic flow) overlapping the range is recomputed and overwritten. Run it
after a rule is fixed or a meter map corrected; the running ingest may stay up."""


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-01-15T00:00:00+08:00)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +08:00)")
    return moment.astimezone(UTC)


def add_derive_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    derive = sub.add_parser(
        "derive",
        help="recompute derived measurements of a past time range from InfluxDB",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    derive.add_argument(
        "--config", "-c", type=Path, default=argparse.SUPPRESS, help="ingest TOML file"
    )
    derive.add_argument("--from", dest="start", required=True, type=_moment, metavar="TIME")
    derive.add_argument("--to", dest="end", required=True, type=_moment, metavar="TIME")
    derive.add_argument(
        "--site", action="append", metavar="SITE", help="only this site (repeatable)"
    )


async def run_derive(settings: IngestSettings, args: argparse.Namespace) -> int:
    if args.end <= args.start:
        print("ecotel-ingest derive: --to must be after --from", file=sys.stderr)
        return 2
    refused: list[str] = []

    async def on_refused(points: list[Point], error: InfluxError) -> None:
        refused.extend(f"{p.line[:120]}: {error}" for p in points)

    writer = InfluxWriter(settings.influx, settings.batch, IngestStats(), on_refused)
    windows = WindowDeriver(settings.derive, settings.influx)
    async with writer:
        report = await recompute_range(
            settings.derive,
            windows,
            writer,
            args.start,
            args.end,
            set(args.site) if args.site else None,
        )
        await writer.wait_idle()
    print(
        f"derived {report.readings} per-reading points and {report.windows} windows "
        f"from {args.start.isoformat()} to {args.end.isoformat()}"
    )
    for line in refused:
        print(f"refused by InfluxDB: {line}", file=sys.stderr)
    return 1 if refused else 0
