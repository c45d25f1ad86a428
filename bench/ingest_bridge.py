"""The bridge a user writes by hand, for comparison: paho callback, json.loads, batch, POST to /write.

Written the way a competent user would, not a straw man: a persistent QoS 1
session, the network loop never blocked by HTTP (a writer thread with a
keep-alive connection), batches of ``--batch-lines`` lines or ``--flush-s``
seconds. What it does not do: validate, dead-letter, hold the PUBACK until
the write (paho acknowledges on receipt), retry a failed write.
Prints ``ready`` once subscribed; runs until SIGTERM, then prints its counters as JSON.
"""

import argparse
import json
import queue
import signal
import threading
import time
from datetime import datetime
from types import FrameType

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def to_lines(payload: bytes) -> list[str]:
    """One line-protocol point per reading: measurement = kind, tags site/gateway/device/channel."""
    message = json.loads(payload)
    site, gateway = message["site"], message["gateway"]
    lines = []
    for reading in message["readings"]:
        tags = f"{reading['kind']},site={site},gateway={gateway},device={reading['device']}"
        if "channel" in reading:
            tags += f",channel={reading['channel']}"
        fields = ",".join(
            f'{name}="{value}"' if isinstance(value, str) else f"{name}={float(value)}"
            for name, value in reading["values"].items()
        )
        moment = datetime.fromisoformat(reading["time"])
        ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000
        lines.append(f"{tags} {fields} {ns}")
    return lines


class Batcher:
    """Collects lines from the MQTT thread and hands full batches to the writer thread."""

    def __init__(self, max_lines: int, flush_s: float) -> None:
        self.max_lines = max_lines
        self.flush_s = flush_s
        self.batches: queue.Queue[list[str] | None] = queue.Queue()
        self._lines: list[str] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def add(self, lines: list[str]) -> None:
        with self._lock:
            if not self._lines:
                self._since = time.monotonic()
            self._lines.extend(lines)
            if len(self._lines) >= self.max_lines:
                self._hand_over()

    def tick(self) -> None:
        with self._lock:
            if self._lines and time.monotonic() - self._since >= self.flush_s:
                self._hand_over()

    def close(self) -> None:
        """Hand over what is left and tell the writer to stop after it."""
        with self._lock:
            if self._lines:
                self._hand_over()
        self.batches.put(None)

    def _hand_over(self) -> None:
        self.batches.put(self._lines)
        self._lines = []


def write_batches(batcher: Batcher, url: str, database: str, counters: dict[str, int]) -> None:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        while True:
            try:
                batch = batcher.batches.get(timeout=0.1)
            except queue.Empty:
                batcher.tick()
                continue
            if batch is None:
                return
            response = http.post(
                "/write", params={"db": database}, content="\n".join(batch).encode()
            )
            if response.status_code == 204:
                counters["written"] += len(batch)
            else:
                counters["failed"] += len(batch)
                print(f"write failed: {response.status_code} {response.text[:200]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_bridge", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--influx-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--client-id", default="hand-bridge")
    parser.add_argument("--batch-lines", type=int, default=5_000)
    parser.add_argument("--flush-s", type=float, default=1.0)
    args = parser.parse_args()

    counters = {"messages": 0, "written": 0, "failed": 0, "bad": 0}
    batcher = Batcher(args.batch_lines, args.flush_s)
    subscribed = threading.Event()
    stop = threading.Event()

    def on_connect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe("ecotel/v1/+/+/readings", qos=1)

    def on_subscribe(
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        counters["messages"] += 1
        try:
            batcher.add(to_lines(bytes(message.payload)))
        except (ValueError, KeyError, TypeError) as exc:
            counters["bad"] += 1
            print(f"bad message on {message.topic}: {exc}", flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    writer = threading.Thread(
        target=write_batches, args=(batcher, args.influx_url, args.database, counters)
    )
    writer.start()
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    subscribed.wait()
    print("ready", flush=True)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    batcher.close()
    writer.join()
    print(json.dumps(counters), flush=True)


if __name__ == "__main__":
    main()
