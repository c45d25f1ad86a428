"""What the gateway benchmarks share: a 100-device configuration, the real gateway process, a counting subscriber."""

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiomqtt

from collector import wire
from collector.config import load_gateway_config

GATEWAY, SITE = "bench-gw", "Tuotuohe"
# Kinds whose simulator yields exactly one reading per poll, so 100 devices
# polled every second are 100 readings per second.
ONE_READING_KINDS = ("hydrology", "weather", "water_quality", "station_health", "road_weather")


def device_ids(devices: int) -> list[tuple[str, str]]:
    """(id, kind) of each simulated device."""
    kinds = ONE_READING_KINDS
    return [(f"{kinds[i % len(kinds)]}-{i:03d}", kinds[i % len(kinds)]) for i in range(devices)]


def write_config(
    path: Path, *, port: int, state_dir: Path, devices: int, **gateway: float | int | str
) -> Path:
    """A gateway TOML file for ``devices`` simulators polled every second; validated by the real loader."""
    lines = [
        "[gateway]",
        f'id = "{GATEWAY}"',
        f'site = "{SITE}"',
        f"state_dir = {json.dumps(str(state_dir))}",
        *(f"{key} = {json.dumps(value)}" for key, value in gateway.items()),
        "[broker]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "reconnect_max_s = 1.0",
    ]
    for index, (device, kind) in enumerate(device_ids(devices)):
        lines += [
            "[[devices]]",
            f'id = "{device}"',
            f'kind = "{kind}"',
            "interval_s = 1.0",
            f'source = {{ type = "simulator", seed = {index} }}',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    load_gateway_config(path)
    return path


async def start_gateway(config: Path, log: Path) -> asyncio.subprocess.Process:
    """``ecotel-gateway run`` as its own process, exactly as systemd starts it."""
    entry = Path(sys.executable).with_name("ecotel-gateway")
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            str(entry),
            "run",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )


async def stop_gateway(process: asyncio.subprocess.Process, timeout_s: float = 30.0) -> int:
    """SIGTERM, as systemd stops it; the exit code (killed after ``timeout_s``)."""
    if process.returncode is None:
        process.terminate()
    try:
        async with asyncio.timeout(timeout_s):
            return await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"the gateway did not stop within {timeout_s:g} s") from None


@dataclass
class Received:
    """What a QoS 1 subscriber got on the gateway's readings topic."""

    readings: int = 0
    messages: int = 0
    seqs: list[int] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None


async def subscribe(
    port: int,
    received: Received,
    subscribed: asyncio.Event,
    on_reading: Callable[[str, str], None] | None = None,
) -> None:
    """Count every readings message and reading the broker delivers, until cancelled."""
    loop = asyncio.get_running_loop()
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-observer", clean_session=False
    ) as client:
        await client.subscribe(wire.readings_topic(SITE, GATEWAY), qos=wire.QOS)
        subscribed.set()
        async for message in client.messages:
            body = json.loads(bytes(message.payload))
            now = loop.time()
            if received.first_at is None:
                received.first_at = now
            received.last_at = now
            received.messages += 1
            received.seqs.append(int(body["seq"]))
            readings = body["readings"]
            received.readings += len(readings)
            if on_reading is not None:
                for reading in readings:
                    on_reading(reading["device"], reading["time"])


class ReadingSink:
    """Marks each backlog reading (device, second) as arrived: lost and repeated ones show."""

    def __init__(self, devices: list[str], start: datetime, seconds: int) -> None:
        self.start = start
        self.seconds = seconds
        self.expected = len(devices) * seconds
        self._seen = {d: bytearray(seconds) for d in devices}
        self.backlog = 0
        self.repeated = 0
        self.live: set[tuple[str, str]] = set()
        self.live_repeated = 0

    def __call__(self, device: str, time: str) -> None:
        second = int((datetime.fromisoformat(time) - self.start).total_seconds())
        if 0 <= second < self.seconds:
            seen = self._seen[device]
            if seen[second]:
                self.repeated += 1
            else:
                seen[second] = 1
                self.backlog += 1
            return
        key = (device, time)
        if key in self.live:
            self.live_repeated += 1
        self.live.add(key)

    @property
    def missing(self) -> int:
        return self.expected - self.backlog
