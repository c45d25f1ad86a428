"""``ecotel-stack``: run the whole local stack (the main job), or query its data (running or stopped)."""

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from collector.durable_sqlite import StoreUnusable
from collector.log_options import add_log_level
from collector.process_lock import InUse
from collector.settings_loader import ConfigError
from collector.stdout_pipe import reader_left
from deploy.servers import ServerStartError
from deploy.stack import StackDataMissing, StackOptions, query_stack, run_stack
from pipelines.influx_writer import InfluxError

N = TypeVar("N", int, float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecotel-stack",
        description="Start Mosquitto and InfluxDB on free loopback ports, the ingest service and "
        "one simulated gateway per domain (Sanjiangyuan ecology, smart highway, data center); "
        "show readings flowing and stored; write the Grafana dashboards.",
        epilog="Without a command: run. Its options (--duration, --fresh, --interval, --scale, "
        "--data-dir, --log-level): ecotel-stack run --help",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the stack (the default command)")
    _data_dir(run)
    run.add_argument(
        "--duration",
        type=_at_least(float, 0, inclusive=False),
        metavar="SECONDS",
        help="stop after this long (default: run until Ctrl-C)",
    )
    run.add_argument("--fresh", action="store_true", help="delete the data dir first")
    run.add_argument(
        "--interval",
        type=_at_least(float, 0, inclusive=True),
        default=1.0,
        metavar="SECONDS",
        help="poll every simulated device at this interval (default 1 s, a lively demo; "
        "0 keeps the sample configs' 10-30 s)",
    )
    run.add_argument(
        "--scale",
        type=_at_least(int, 1, inclusive=True),
        default=1,
        metavar="N",
        help="N copies of every simulated device, for load tests (default 1)",
    )
    add_log_level(run, "WARNING", "; the components' logs: progress is always shown")
    query = sub.add_parser(
        "query",
        help="run an InfluxQL query on the stack's data (through its InfluxDB while it runs)",
    )
    _data_dir(query)
    query.add_argument("influxql", help="e.g. 'SELECT * FROM weather ORDER BY time DESC LIMIT 5'")
    return parser


def _at_least(kind: type[N], minimum: N, *, inclusive: bool) -> Callable[[str], N]:
    """An argparse type: a number of ``kind`` not below ``minimum`` (above it, if not inclusive)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum or (not inclusive and value == minimum):
            bound = f"at least {minimum}" if inclusive else f"more than {minimum}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("ecotel-data"),
        help="where servers, ingest and gateways keep their data (default ./ecotel-data)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    try:
        if args.command == "query":
            for line in asyncio.run(query_stack(args.data_dir, args.influxql)):
                try:
                    print(line)
                except BrokenPipeError:
                    return reader_left()  # `query ... | head`
            return 0
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        options = StackOptions(
            data_dir=args.data_dir,
            duration_s=args.duration,
            fresh=args.fresh,
            interval_s=args.interval or None,
            scale=args.scale,
        )
        asyncio.run(_run(options))
        return 0
    except _EXPLAINED as exc:
        print(f"ecotel-stack: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # From a part running in the stack's task group (a gateway whose outbox is taken).
        explained = group.subgroup(lambda e: isinstance(e, _EXPLAINED))
        if explained is None:
            raise
        for leaf in _leaves(explained):
            print(f"ecotel-stack: {leaf}", file=sys.stderr)
        return 1


_EXPLAINED = (ServerStartError, ConfigError, InfluxError, InUse, StoreUnusable, StackDataMissing)
"""Errors whose message says what is wrong and where: one line each, no traceback."""


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for exc in group.exceptions
        for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    ]


async def _run(options: StackOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal closed; stop as for Ctrl-C rather than die with the servers up.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await run_stack(options, stop)


if __name__ == "__main__":
    sys.exit(main())
