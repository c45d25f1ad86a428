"""How fast ``ecotel-trace replay --max-speed`` publishes into a local Mosquitto, QoS 0 and QoS 1.

    .venv/bin/python -m bench.trace_replay [--messages 100000] [--runs 3]

A trace of ecotel readings messages (payloads recorded from the shipped
domain traces, topics over 30 gateways) is written to a file, loaded, and
replayed flat out. Two figures per QoS: the publisher's (until every
message is written, and at QoS 1 acknowledged), and the delivered rate: until
an independent ``mosquitto_sub`` (C) has received every message.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from collector.config import BrokerSettings
from deploy.servers import MosquittoServer, find_binary
from deploy.traces.file_format import TraceHeader, TraceRecord, load_trace, write_trace
from deploy.traces.replay import ReplayOptions, replay

TRACES = Path(__file__).resolve().parent.parent / "tests" / "traces"


def build_trace(path: Path, messages: int, payload_bytes: int | None) -> int:
    """A trace of ``messages`` over 30 gateways; returns the mean payload size.

    Payloads: the readings messages of the shipped domain traces, or, with
    ``payload_bytes``, one reading's worth of JSON padded to that size.
    """
    if payload_bytes is None:
        samples, _ = load_trace(sorted(TRACES.glob("[ehd]*.trace.gz")))
        payloads = [r.payload for r in samples if r.topic.endswith("/readings")]
    else:
        payloads = [b'{"pad":"' + b"x" * max(payload_bytes - 10, 0) + b'"}']
    records = (
        TraceRecord(
            t_us=1_780_000_000_000_000 + i * 1000,
            topic=f"bench/site/gw-{i % 30}/readings",
            payload=payloads[i % len(payloads)],
            qos=1,
        )
        for i in range(messages)
    )
    header = TraceHeader(broker="bench", filters=["#"], started_at=datetime.now(UTC))
    write_trace(path, header, records)
    return sum(len(p) for p in payloads) // len(payloads)


async def one_run(port: int, records: list[TraceRecord], qos: int) -> tuple[float, float]:
    """(publisher msg/s, delivered msg/s) of one flat-out replay."""
    sub = await asyncio.create_subprocess_exec(
        str(find_binary("mosquitto_sub")),
        "-p",
        str(port),
        "-t",
        "bench/#",
        "-q",
        str(qos),
        "-C",
        str(len(records)),
        stdout=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # subscribed
    started = time.perf_counter()
    await replay(BrokerSettings(port=port), records, ReplayOptions(speed=None, qos=qos))
    published = time.perf_counter() - started
    try:
        await asyncio.wait_for(sub.wait(), 120)
    except TimeoutError:
        sub.kill()
        await sub.wait()
        return len(records) / published, 0.0
    delivered = time.perf_counter() - started
    return len(records) / published, len(records) / delivered


async def main_async(messages: int, runs: int, payload_bytes: int | None) -> None:
    with tempfile.TemporaryDirectory(prefix="ecotel-bench-trace-") as tmp:
        path = Path(tmp) / "bench.trace.gz"
        mean_bytes = build_trace(path, messages, payload_bytes)
        started = time.perf_counter()
        records, _ = load_trace([path])
        load_s = time.perf_counter() - started
        print(
            f"trace: {messages:,} messages, mean payload {mean_bytes:,} bytes, "
            f"{path.stat().st_size:,} bytes on disk, loaded in {load_s:.2f} s "
            f"({messages / load_s:,.0f} msg/s)"
        )
        async with MosquittoServer(Path(tmp) / "mosquitto") as broker:
            for qos in (0, 1):
                pub, got = [], []
                for _ in range(runs):
                    p, d = await one_run(broker.port, records, qos)
                    pub.append(p)
                    got.append(d)
                print(
                    f"QoS {qos}: publisher {statistics.median(pub):>9,.0f} msg/s, "
                    f"delivered to mosquitto_sub {statistics.median(got):>9,.0f} msg/s "
                    f"(median of {runs}; runs: {', '.join(f'{d:,.0f}' for d in got)})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--payload-bytes",
        type=int,
        help="synthetic payloads of this size instead of the recorded readings messages",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.messages, args.runs, args.payload_bytes))


if __name__ == "__main__":
    main()
