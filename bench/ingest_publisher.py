"""The benchmark's load generator: publish a plan's pre-built messages at QoS 1, as fast as it can or at a rate.

Run by bench/ingest_compare.py as its own process: it encodes every PUBLISH
packet beforehand (bench/ingest_mqtt_wire.py), prints ``ready``, waits for a
line on stdin, publishes with up to 20,000 messages awaiting their PUBACK,
and prints one JSON line of figures. With ``--probe-every S`` the first
reading of one message every S seconds, and of the last message, is stamped
with its publish time (a latency probe).
"""

import argparse
import json
import resource
import sys
import threading
import time
from datetime import UTC, datetime

from bench.ingest_measure import own_cpu_seconds
from bench.ingest_messages import MessageFactory, Plan
from bench.ingest_mqtt_wire import (
    DISCONNECT,
    MAX_IN_FLIGHT,
    PUBACK,
    PacketReader,
    open_session,
)
from pipelines.mqtt_packets import publish_packet

# Bytes per write to the socket: large writes are what makes this fast.
_CHUNK_BYTES = 256 * 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_publisher", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--readings", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--gateways", type=int, default=20)
    parser.add_argument("--start", required=True, help="time of the first round, RFC 3339")
    parser.add_argument("--share", type=int, default=0, help="this publisher's number")
    parser.add_argument("--of", type=int, default=1, help="publishers sharing the plan")
    parser.add_argument("--rate", type=float, default=0.0, help="readings/s; 0: at full speed")
    parser.add_argument("--probe-every", type=float, default=0.0, help="seconds; 0: no probes")
    return parser


class Acks:
    """Counts PUBACKs on a reader thread."""

    def __init__(self, reader: PacketReader, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.done = threading.Event()
        self._reader = reader
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while self.count < self.expected:
            for first, _ in self._reader.packets():
                if first == PUBACK:
                    self.count += 1
        self.done.set()


def main() -> None:
    args = _parser().parse_args()
    plan = Plan(readings=args.readings, batch=args.batch, gateways=args.gateways)
    factory = MessageFactory(plan, start=datetime.fromisoformat(args.start))
    mine = list(range(args.share, plan.messages, args.of))
    packets = [
        publish_packet(factory.topic(i), factory.payload(i), n % 65_535 + 1)
        for n, i in enumerate(mine)
    ]
    sock = open_session(args.port, f"bench-publisher-{args.share}-{time.time_ns()}")
    acks = Acks(PacketReader(sock), len(packets))
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = own_cpu_seconds()

    interval = args.of * plan.batch / args.rate if args.rate else 0.0
    started = time.time()
    next_probe = started
    probes = 0
    sent = 0
    total = len(packets)
    while sent < total:
        due = min(total, int((time.time() - started) / interval) + 1) if interval else total
        end = min(due, acks.count + MAX_IN_FLIGHT)
        if end <= sent:
            time.sleep(0.0005)
            continue
        chunk: list[bytes] = []
        size = 0
        while sent < end and size < _CHUNK_BYTES:
            packet = packets[sent]
            if args.probe_every and (time.time() >= next_probe or sent == total - 1):
                i = mine[sent]
                payload = factory.payload(i, probe_time=datetime.now(UTC))
                packet = publish_packet(factory.topic(i), payload, sent % 65_535 + 1)
                next_probe = time.time() + args.probe_every
                probes += 1
            chunk.append(packet)
            size += len(packet)
            sent += 1
        sock.sendall(b"".join(chunk))
    published = time.time()
    acks.done.wait()
    finished = time.time()
    sock.sendall(DISCONNECT)
    sock.close()
    print(
        json.dumps(
            {
                "messages": total,
                "readings": total * plan.batch,
                "probes": probes,
                "started": started,
                "published": published,
                "acked": finished,
                "cpu_s": own_cpu_seconds() - cpu_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
