"""InfluxDB's raw limit: POST a plan's readings, pre-built as line protocol, to ``/write``.

Run by bench/ingest_compare.py as its own process: builds the lines, prints
``ready``, waits for a line on stdin, writes batches of ``--batch-lines`` from
``--connections`` threads, and prints one JSON line of figures.
"""

import argparse
import json
import resource
import sys
import threading
import time
from datetime import datetime

import httpx

from bench.ingest_measure import own_cpu_seconds
from bench.ingest_messages import MessageFactory, Plan, line_protocol


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_influx_raw", description=__doc__)
    parser.add_argument("--influx-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--readings", type=int, required=True)
    parser.add_argument("--start", required=True, help="time of the first round, RFC 3339")
    parser.add_argument("--batch-lines", type=int, default=5_000)
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()

    factory = MessageFactory(
        Plan(readings=args.readings, batch=50), start=datetime.fromisoformat(args.start)
    )
    lines = line_protocol(factory)
    bodies = [
        "\n".join(lines[i : i + args.batch_lines]).encode()
        for i in range(0, len(lines), args.batch_lines)
    ]
    failures: list[str] = []
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = own_cpu_seconds()

    def post(share: int) -> None:
        with httpx.Client(base_url=args.influx_url, timeout=60, trust_env=False) as http:
            for body in bodies[share :: args.connections]:
                response = http.post("/write", params={"db": args.database}, content=body)
                if response.status_code != 204:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    started = time.time()
    threads = [threading.Thread(target=post, args=(n,)) for n in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished = time.time()
    print(
        json.dumps(
            {
                "lines": len(lines),
                "started": started,
                "finished": finished,
                "failures": failures[:3],
                "cpu_s": own_cpu_seconds() - cpu_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
