"""``python -m bench [decode|stack] ...``: run a benchmark and print its figures."""

import argparse

from bench import decode_cost, stack_throughput


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="which")
    decode = sub.add_parser("decode", help="CPU cost per reading of decode+validate+serialise")
    decode.add_argument("--batch", type=int, default=100, help="readings per message")
    decode.add_argument("--count", type=int, default=500, help="messages")
    stack = sub.add_parser("stack", help="readings/s the whole local stack stores")
    stack.add_argument("--scale", type=int, default=50, help="copies of every simulated device")
    stack.add_argument("--interval", type=float, default=0.1, help="poll interval, s")
    stack.add_argument("--duration", type=float, default=30.0, help="seconds")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    if args.which in (None, "decode"):
        for batch in [args.batch] if args.which else [1, 10, 100, 1000]:
            results[f"decode batch={batch}"] = decode_cost.run(
                batch=batch, count=max(50_000 // batch, 20) if not args.which else args.count
            )
    if args.which in (None, "stack"):
        scale, interval, duration = (
            (args.scale, args.interval, args.duration) if args.which else (50, 0.1, 30.0)
        )
        results[f"stack scale={scale} interval={interval}s"] = stack_throughput.run(
            scale=scale, interval_s=interval, duration_s=duration
        )
    for name, figures in results.items():
        print(name + ": " + ", ".join(f"{k}={v:,.2f}" for k, v in figures.items()))


main()
