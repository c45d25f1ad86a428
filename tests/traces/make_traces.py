"""Regenerate the shipped traces: each scenario publishes through a real Mosquitto while ecotel-trace records it.

    .venv/bin/python -m tests.traces.make_traces            # all
    .venv/bin/python -m tests.traces.make_traces ecology oversized

Domain traces come from the real gateway runtime with the shipped sample
configurations (simulated devices); fault traces from a misbehaving gateway
written here, publishing what field gateways have been seen to send.
"""

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from collector import wire
from collector.config import BrokerSettings
from collector.gateway import Gateway
from deploy.servers import MosquittoServer
from deploy.stack import StackOptions, sample_gateways
from deploy.traces.record import RecordOptions, recording
from devices.simulators import make_simulator

HERE = Path(__file__).parent
SITE = "Tuotuohe"

Scenario = Callable[[int, Path], Awaitable[None]]


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def simulated(
    kind: str, device: str, times: list[datetime], *, seed: int = 1, interval_s: float = 10.0
) -> list[dict[str, Any]]:
    """Readings of a catalog simulator at these times, as JSON objects."""
    sim = make_simulator(kind, device, seed=seed, interval_s=interval_s)
    out: list[dict[str, Any]] = []
    for at in times:
        out.extend(r.model_dump(mode="json", exclude_none=True) for r in sim.sample(at))
    return out


def envelope(
    gateway: str, seq: int, readings: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    body = {
        "schema": 1,
        "gateway": gateway,
        "site": SITE,
        "seq": seq,
        "sent_at": _now_text(),
        "readings": readings,
    }
    body.update(extra)
    return body


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds_ago(*offsets: float) -> list[datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return [now - timedelta(seconds=s) for s in offsets]


class FieldGateway:
    """A misbehaving gateway: an MQTT client that publishes whatever bytes it is given."""

    def __init__(self, client: aiomqtt.Client, gateway: str) -> None:
        self.client = client
        self.gateway = gateway

    async def online(self) -> None:
        status = {
            "schema": 1,
            "gateway": self.gateway,
            "site": SITE,
            "state": "online",
            "reason": "connected",
            "at": _now_text(),
        }
        await self.client.publish(
            wire.status_topic(SITE, self.gateway), encode(status), qos=1, retain=True
        )

    async def send(self, payload: bytes, *, topic: str | None = None) -> None:
        await self.client.publish(topic or wire.readings_topic(SITE, self.gateway), payload, qos=1)
        await asyncio.sleep(0.02)


async def _field_gateway(
    port: int, gateway: str, body: Callable[[FieldGateway], Awaitable[None]]
) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"ecotel-gw-{gateway}") as client:
        await body(FieldGateway(client, gateway))


def _domain(index: int) -> Scenario:
    async def run(port: int, tmp: Path) -> None:
        settings = sample_gateways(StackOptions(data_dir=tmp, interval_s=0.5), port)[index]
        gateway = Gateway(settings)
        task = asyncio.create_task(gateway.run())
        await asyncio.sleep(3.0)
        gateway.stop()
        await task

    return run


async def malformed_json(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        times = seconds_ago(3, 2, 1, 0)
        for seq, at in enumerate(times, start=1):
            payload = encode(envelope(gw.gateway, seq, simulated("water_quality", "wq-1", [at])))
            if seq == 3:
                payload = payload[: len(payload) // 2]  # the link dropped mid-message
            await gw.send(payload)

    await _field_gateway(port, "wq-gw", body)


async def wrong_types(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        readings = simulated("hydrology", "hydro-1", seconds_ago(2, 1, 0))
        readings[1]["values"]["stage"] = "2.0 m"  # a unit left in the value
        readings[2]["values"]["discharge"] = [50.0]  # an array where a number belongs
        await gw.send(encode(envelope(gw.gateway, 1, readings)))

    await _field_gateway(port, "hydro-gw", body)


async def out_of_range(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        readings = simulated("water_quality", "wq-1", seconds_ago(2, 1, 0))
        readings[0]["values"]["ph"] = 15.2  # pH runs 0-14
        readings[1]["values"]["water_temperature"] = -5.0  # liquid water, -1 degC at least
        await gw.send(encode(envelope(gw.gateway, 1, readings)))

    await _field_gateway(port, "range-gw", body)


async def duplicated_seq(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        times = seconds_ago(2, 1, 0)
        messages = [
            encode(envelope(gw.gateway, seq, simulated("weather", "aws-1", [at])))
            for seq, at in enumerate(times, start=1)
        ]
        # The PUBACK for seq 2 was lost: the gateway sends the same message again.
        for payload in (messages[0], messages[1], messages[1], messages[2]):
            await gw.send(payload)

    await _field_gateway(port, "dup-gw", body)


async def unset_clock(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        # An old firmware after a power cut: the RTC restarted at the epoch.
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        times = [epoch + timedelta(seconds=s) for s in (192, 202, 212)]
        readings = simulated("station_health", "power-1", times)
        await gw.send(
            encode(envelope(gw.gateway, 1, readings, sent_at="1970-01-01T00:03:33.000000Z"))
        )
        unsynced = simulated("station_health", "power-1", seconds_ago(0))
        unsynced[0]["clock"] = "unsynced"
        await gw.send(encode(envelope(gw.gateway, 2, unsynced)))

    await _field_gateway(port, "clock-gw", body)


async def backlog(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        # Six hours offline, two devices every 60 s; drained in batches of 500 after reconnecting.
        times = seconds_ago(*range(6 * 3600, 0, -60))
        readings = sorted(
            simulated("hydrology", "hydro-1", times, interval_s=60)
            + simulated("station_health", "power-1", times, seed=2, interval_s=60),
            key=lambda r: r["time"],
        )
        seq = 100
        for start in range(0, len(readings), 500):
            seq += 1
            await gw.send(encode(envelope(gw.gateway, seq, readings[start : start + 500])))
            await asyncio.sleep(1.0)  # backlog_readings_per_s = 500
        live = simulated("hydrology", "hydro-1", seconds_ago(0))
        await gw.send(encode(envelope(gw.gateway, seq + 1, live)))

    await _field_gateway(port, "zmd-gw", body)


async def oversized(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        # A gateway configured with batch_max_readings far too high: one message over 1 MiB.
        times = seconds_ago(*range(7000, 0, -1))
        big = simulated("station_health", "power-1", times, interval_s=1)
        await gw.send(encode(envelope(gw.gateway, 1, big)))
        await gw.send(
            encode(envelope(gw.gateway, 2, simulated("station_health", "power-1", seconds_ago(0))))
        )

    await _field_gateway(port, "big-gw", body)


async def not_utf8(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        body_json = envelope(gw.gateway, 1, simulated("weather", "aws-1", seconds_ago(0)))
        body_json["note"] = "沱沱河"
        # A gateway whose JSON library writes the locale's encoding (GBK), not UTF-8.
        await gw.send(json.dumps(body_json, ensure_ascii=False).encode("gbk"))
        await gw.send(b"\x00\xff\xfe\x01 raw register dump \x80\x81")

    await _field_gateway(port, "gbk-gw", body)


async def impersonation(port: int, tmp: Path) -> None:
    async def body(gw: FieldGateway) -> None:
        await gw.online()
        victim = "tuotuohe-gw1"
        own = envelope(gw.gateway, 1, simulated("hydrology", "hydro-9", seconds_ago(1)))
        await gw.send(encode(own))
        # Its own topic, another gateway's name and device in the payload.
        forged = envelope(victim, 7, simulated("hydrology", "hydro-1", seconds_ago(0)))
        await gw.send(encode(forged))
        health = {
            "schema": 1,
            "gateway": victim,
            "site": SITE,
            "at": _now_text(),
            "uptime_s": 10.0,
            "load_1m": 0.1,
            "memory_available_mb": 100.0,
            "disk_free_mb": 100.0,
            "outbox_readings": 0,
            "outbox_bytes": 0,
            "link_up": True,
            "reconnects": 0,
            "dropped_total": 0,
        }
        await gw.send(encode(health), topic=wire.health_topic(SITE, gw.gateway))

    await _field_gateway(port, "rogue-gw", body)


SCENARIOS: dict[str, Scenario] = {
    "ecology": _domain(0),
    "highway": _domain(1),
    "datacenter": _domain(2),
    "malformed_json": malformed_json,
    "wrong_types": wrong_types,
    "out_of_range": out_of_range,
    "duplicated_seq": duplicated_seq,
    "unset_clock": unset_clock,
    "backlog": backlog,
    "oversized": oversized,
    "not_utf8": not_utf8,
    "impersonation": impersonation,
}


async def make(name: str, out_dir: Path) -> Path:
    """Run one scenario on a fresh broker while recording ecotel/v1/#; returns the trace path."""
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        out = tmp / f"{name}.trace.gz"
        async with MosquittoServer(tmp / "mosquitto") as broker:
            options = RecordOptions(
                filters=["ecotel/v1/#"], out=out, note=f"tests/traces scenario {name}"
            )
            async with recording(BrokerSettings(port=broker.port), options):
                await SCENARIOS[name](broker.port, tmp)
        target = out_dir / out.name
        shutil.copyfile(out, target)
        return target


async def main_async(names: list[str], out_dir: Path) -> None:
    for name in names:
        path = await make(name, out_dir)
        print(f"{path} {path.stat().st_size:,} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    asyncio.run(main_async(args.names or list(SCENARIOS), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
