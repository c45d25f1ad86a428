"""``ecotel-ingest derive``: recompute the derived measurements of a past time range from InfluxDB."""

import argparse
import asyncio
import contextlib
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx

from pipelines.config import IngestSettings
from pipelines.derive_range import RangeReport, recompute_range
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
    derive.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up when InfluxDB does not answer for this long, at start or while writing "
        "(default 30)",
    )


class InfluxAway(Exception):
    """InfluxDB did not answer (at start, or took no write) for the --wait time."""


def progress_line(report: RangeReport) -> str:
    """One line of where a range recomputation stands."""
    sites = ", ".join(
        f"{site} {report.site_done[site]:,}/{total:,}"
        for site, total in sorted(report.site_total.items())
    )
    return (
        f"derive: readings {report.chunks_done}/{report.chunks_total} six-hour chunks "
        f"({report.readings:,} points); windows {report.windows:,}/{report.windows_total:,}"
        + (f" ({sites})" if sites else "")
        + f", {report.incomplete:,} incomplete"
    )


async def _show_progress(
    work: "asyncio.Task[None]", report: RangeReport, stats: IngestStats, wait_s: float
) -> None:
    """A progress line on stderr every second while ``work`` runs; stop it when InfluxDB takes
    no write for ``wait_s`` (the writer retries forever: right for the service, not here)."""
    loop = asyncio.get_running_loop()
    shown = ""
    failing_since: float | None = None
    batches, retries = stats.write_batches, stats.write_retries
    while not work.done():
        await asyncio.wait({work}, timeout=1.0)
        line = progress_line(report)
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        if stats.write_batches != batches:
            failing_since = None
        elif stats.write_retries != retries and failing_since is None:
            failing_since = loop.time()
        batches, retries = stats.write_batches, stats.write_retries
        if failing_since is not None and loop.time() - failing_since > wait_s:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise InfluxAway(f"took no write for {wait_s:g} s (--wait)")


async def run_derive(settings: IngestSettings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    if args.end > now:
        # Windows after now have no readings yet: they would be written as incomplete figures.
        print(
            f"ecotel-ingest derive: --to {args.end.isoformat()} is in the future; "
            f"recomputing up to now ({now.isoformat(timespec='seconds')})",
            file=sys.stderr,
        )
        args.end = now
    if args.end <= args.start:
        print("ecotel-ingest derive: --to must be after --from", file=sys.stderr)
        return 2
    where = influx_where(settings, args)
    refused: list[str] = []

    async def on_refused(points: list[Point], error: InfluxError) -> None:
        refused.extend(f"{p.line[:120]}: {error}" for p in points)

    stats = IngestStats()
    writer = InfluxWriter(settings.influx, settings.batch, stats, on_refused)
    windows = WindowDeriver(settings.derive, settings.influx)
    report = RangeReport()

    async def work() -> None:
        await recompute_range(
            settings.derive,
            windows,
            writer,
            args.start,
            args.end,
            set(args.site) if args.site else None,
            report,
        )
        await writer.wait_idle()

    try:
        async with contextlib.AsyncExitStack() as stack:
            await open_influx(stack, writer, args.wait)
            task = asyncio.create_task(work())
            await _show_progress(task, report, stats, args.wait)
            await task
    except (httpx.HTTPError, InfluxAway, InfluxError) as exc:
        why = str(exc) if isinstance(exc, InfluxAway | InfluxError) else f"went away ({exc!r})"
        print(f"ecotel-ingest derive: {where}: {why}", file=sys.stderr)
        if report.chunks_total:
            print(
                f"stopped after {report.readings:,} per-reading points and {report.windows:,} of "
                f"{report.windows_total:,} windows; run the same command again once it is back",
                file=sys.stderr,
            )
        return 1
    print(
        f"derived {report.readings} per-reading points and {report.windows} windows "
        f"({report.incomplete} incomplete) from {args.start.isoformat()} to "
        f"{args.end.isoformat()}"
    )
    if args.site and not report.readings and not report.windows_total:
        print(
            f"ecotel-ingest derive: nothing of {', '.join(map(repr, args.site))} in that range: "
            "a site is named exactly as in its readings (the site tag; InfluxQL: SHOW TAG "
            'VALUES WITH KEY = "site"), and its windows need it in [derive]',
            file=sys.stderr,
        )
    for line in refused:
        print(f"refused by InfluxDB: {line}", file=sys.stderr)
    return 1 if refused else 0


def influx_where(settings: IngestSettings, args: argparse.Namespace) -> str:
    """InfluxDB's address and where it was set, for a command's error message."""
    config = getattr(args, "config", None)
    source = str(config) if config else "defaults and environment: ECOTEL_INGEST_INFLUX__URL"
    return f"InfluxDB at {settings.influx.url} (influx.url, from {source})"


async def open_influx(
    stack: contextlib.AsyncExitStack, writer: InfluxWriter, wait_s: float
) -> None:
    """Enter the writer and wait until InfluxDB answers, for ``wait_s`` at most."""
    problem = ""
    try:
        async with asyncio.timeout(wait_s):
            await stack.enter_async_context(writer)
            while (found := await writer.reachable()) is not None:
                problem = f": {found}"
                await asyncio.sleep(1.0)
    except TimeoutError:
        raise InfluxAway(f"did not answer within {wait_s:g} s (--wait){problem}") from None
