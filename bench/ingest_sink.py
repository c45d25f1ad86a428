"""The broker's raw limit: a QoS 1 subscriber that acknowledges and discards every message.

Run by bench/ingest_compare.py: prints ``ready`` once subscribed, exits with
one JSON line of figures once ``--messages`` have arrived. It speaks MQTT on
a bare socket (bench/ingest_mqtt_wire.py), so what it measures is the broker.
"""

import argparse
import json
import resource
import struct
import time

from bench.ingest_measure import own_cpu_seconds
from bench.ingest_mqtt_wire import (
    DISCONNECT,
    PUBLISH,
    SUBACK,
    PacketReader,
    open_session,
    subscribe_packet,
)
from pipelines.mqtt_packets import puback_packet


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_sink", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--topic", default="ecotel/v1/+/+/readings")
    args = parser.parse_args()

    sock = open_session(args.port, f"bench-sink-{time.time_ns()}")
    reader = PacketReader(sock)
    sock.sendall(subscribe_packet(args.topic))
    while not any(first == SUBACK for first, _ in reader.packets()):
        pass
    print("ready", flush=True)
    cpu_before = own_cpu_seconds()
    received = 0
    first = last = 0.0
    while received < args.messages:
        acks = []
        for kind, body in reader.packets():
            if kind & 0xF0 != PUBLISH:
                continue
            received += 1
            if kind & 0x06:
                (topic_length,) = struct.unpack_from("!H", body)
                (packet_id,) = struct.unpack_from("!H", body, 2 + topic_length)
                acks.append(puback_packet(packet_id))
        last = time.time()
        if not first:
            first = last
        if acks:
            sock.sendall(b"".join(acks))
    sock.sendall(DISCONNECT)
    sock.close()
    print(
        json.dumps(
            {
                "messages": received,
                "first": first,
                "last": last,
                "cpu_s": own_cpu_seconds() - cpu_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
