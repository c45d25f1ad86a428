"""``python -m bench NAME ...``: run one benchmark and print its figures (docs/performance.md)."""

import argparse
import sys
from pathlib import Path

from bench import decode_cost, gateway_cli


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


# Benchmarks with options of their own: ``python -m bench trace --help`` is theirs.
_OWN_OPTIONS = {
    "trace": ("bench.trace_replay", "trace replay flat out into a local broker, QoS 0 and 1"),
    "derive": ("bench.derive_windows", "derived analytics: cost per reading and per window"),
    "ledger": ("bench.sequence_ledger_cost", "a shared group's sequence ledger: cost per message"),
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in _OWN_OPTIONS:
        import importlib

        module = importlib.import_module(_OWN_OPTIONS[sys.argv[1]][0])
        sys.argv = [f"python -m bench {sys.argv[1]}", *sys.argv[2:]]
        module.main()
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run one benchmark on this machine and print its figures (recorded in "
        "docs/performance.md). Without NAME: decode and stack.",
        epilog="python -m bench NAME --help: that benchmark's options.",
    )
    sub = parser.add_subparsers(dest="which", metavar="NAME", title="benchmarks")
    decode = sub.add_parser("decode", help="CPU cost per reading of decode+validate+serialise")
    decode.add_argument("--batch", type=int, default=100, help="readings per message")
    decode.add_argument("--count", type=int, default=500, help="messages")
    stack = sub.add_parser("stack", help="readings/s the whole local stack stores")
    stack.add_argument("--scale", type=int, default=50, help="copies of every simulated device")
    stack.add_argument("--interval", type=float, default=0.1, help="poll interval, s")
    stack.add_argument("--duration", type=float, default=30.0, help="seconds")
    gateway_cli.add_commands(sub)
    ingest = sub.add_parser(
        "ingest",
        help="ecotel's ingest beside a hand-written bridge and the raw broker and InfluxDB limits",
    )
    ingest.add_argument("--quick", action="store_true", help="a tenth of the readings (~1 min)")
    ingest.add_argument(
        "--batches", type=_ints, default=[1, 50], help="readings per message, e.g. 1,50,500"
    )
    ingest.add_argument("--workers", type=_ints, default=[1, 2], help="ingest workers, e.g. 1,2")
    ingest.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=[],
        help="only these systems: broker,influx,ecotel,bridge",
    )
    ingest.add_argument("--json", type=Path, help="also write the figures to this file")
    for name, (_, help_) in _OWN_OPTIONS.items():
        # Listed here; run (and their --help answered) by their own parsers above.
        sub.add_parser(name, help=help_)
    args = parser.parse_args()
    # Imported on use: each benchmark pulls in a different part of the project.
    if args.which == "ingest":
        from bench import ingest_compare

        ingest_compare.run(
            quick=args.quick,
            batches=args.batches,
            workers=args.workers,
            only=args.only,
            json_path=args.json,
        )
        return
    results: dict[str, dict[str, float]] = gateway_cli.run_selected(args)
    if args.which in (None, "decode"):
        for batch in [args.batch] if args.which else [1, 10, 100, 1000]:
            results[f"decode batch={batch}"] = decode_cost.run(
                batch=batch, count=max(50_000 // batch, 20) if not args.which else args.count
            )
    if args.which in (None, "stack"):
        scale, interval, duration = (
            (args.scale, args.interval, args.duration) if args.which else (50, 0.1, 30.0)
        )
        from bench import stack_throughput

        results[f"stack scale={scale} interval={interval}s"] = stack_throughput.run(
            scale=scale, interval_s=interval, duration_s=duration
        )
    for name, figures in results.items():
        print(name + ": " + ", ".join(f"{k}={v:,.2f}" for k, v in figures.items()))


main()
