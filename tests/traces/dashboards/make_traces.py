"""Record the dashboards' long trace: a data center's metering gateway drains three days of backlog.

    .venv/bin/python -m tests.traces.dashboards.make_traces

The shipped datacenter trace holds seconds of counters; PUE per hour and per day need whole
hours and local days. So a metering gateway cut off for three days (a weekend's uplink outage)
reconnects and sends its outbox through a real Mosquitto while ecotel-trace records it: energy
counters of every circuit including renewable (for the clean-energy share) every 10 min, a
health report with the backlog and a meter that stopped answering, then one with it drained.
"""

import asyncio
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt

from collector import wire
from collector.config import BrokerSettings
from deploy.servers import MosquittoServer
from deploy.traces.record import RecordOptions, recording
from devices.simulators import make_simulator
from tests.traces.make_traces import encode

HERE = Path(__file__).parent
SITE, GATEWAY, METER = "Gonghe DC2", "gonghe-dc2-pue", "meters-1"
CIRCUITS = ["utility", "renewable", "ups_output", "it_load", "cooling"]
STEP = timedelta(minutes=10)
OFFLINE = timedelta(days=3)
BATCH = 500
TRACE = "datacenter_3d.trace.gz"


def _health(now: datetime, outbox: int, oldest_s: float | None) -> wire.GatewayHealth:
    return wire.GatewayHealth(
        gateway=GATEWAY,
        site=SITE,
        at=now,
        uptime_s=OFFLINE.total_seconds() + 600,
        load_1m=0.3,
        memory_available_mb=420.0,
        disk_free_mb=7_800.0,
        outbox_readings=outbox,
        outbox_bytes=outbox * 150,
        oldest_unsent_age_s=oldest_s,
        link_up=True,
        reconnects=1,
        dropped_total=0,
        device_errors={"racks-hall-b": 4},
    )


async def drain_backlog(port: int) -> None:
    """Online, health with the backlog, the backlog in batches of 500, health drained, offline."""
    now = datetime.now(UTC).replace(microsecond=0)
    meter = make_simulator(
        "energy_meter",
        METER,
        seed=7,
        interval_s=STEP.total_seconds(),
        options={"circuits": CIRCUITS},
    )
    readings = [
        r.model_dump(mode="json", exclude_none=True)
        for i in range(int(OFFLINE / STEP) + 1)
        for r in meter.sample(now - OFFLINE + i * STEP)
    ]
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"ecotel-gw-{GATEWAY}") as client:

        async def send(topic: str, body: bytes, retain: bool = False) -> None:
            await client.publish(topic, body, qos=1, retain=retain)
            await asyncio.sleep(0.02)

        online = wire.GatewayStatus(
            gateway=GATEWAY, site=SITE, state="online", reason="connected", at=now
        )
        await send(wire.status_topic(SITE, GATEWAY), online.encode(), retain=True)
        await send(
            wire.health_topic(SITE, GATEWAY),
            _health(now, len(readings), OFFLINE.total_seconds()).encode(),
        )
        for seq, start in enumerate(range(0, len(readings), BATCH), start=1):
            envelope = {
                "schema": 1,
                "gateway": GATEWAY,
                "site": SITE,
                "seq": seq,
                "sent_at": now.isoformat().replace("+00:00", "Z"),
                "readings": readings[start : start + BATCH],
            }
            await send(wire.readings_topic(SITE, GATEWAY), encode(envelope))
        drained = _health(datetime.now(UTC), 0, None)
        await send(wire.health_topic(SITE, GATEWAY), drained.encode())


async def make(out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        out = tmp / TRACE
        async with MosquittoServer(tmp / "mosquitto") as broker:
            options = RecordOptions(
                filters=["ecotel/v1/#"], out=out, note="tests/traces/dashboards: 3-day backlog"
            )
            async with recording(BrokerSettings(port=broker.port), options):
                await drain_backlog(broker.port)
        target = out_dir / TRACE
        shutil.copyfile(out, target)
        return target


def main() -> int:
    path = asyncio.run(make(HERE))
    print(f"{path} {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
