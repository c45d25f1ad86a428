"""Record the alert rules' fault trace and its clean counterpart through a real Mosquitto.

    .venv/bin/python -m tests.traces.alerts.make_traces

faults.trace.gz: a gateway offline for 20 min with a backlog 1.5 h old, a polluted river
(NH3-N 1.8 mg/L, class V), a station battery under 11.5 V for 20 min, an icy road in fog
(-3 degC, wet, 150 m), a data center at PUE 1.5 over three days, one refused reading, a lone
turbidity spike.
clean.trace.gz: the same at other sites, each just inside its rule: a gateway offline for
5 min (its rule waits 15), a 30 s backlog, NH3-N 0.1, 12.8 V, a dry clear road whose last
reading is a lone 30 m visibility spike (its rule waits 2 min), PUE 1.15. Water and road
readings every minute for 20 min.
Times are relative to the recording; replay with re-stamping (--restamp) to make them current.
"""

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from collector import wire
from collector.config import BrokerSettings
from deploy.servers import MosquittoServer
from deploy.traces.record import RecordOptions, recording
from deploy.traces.rewrite import format_time
from tests.traces.make_traces import encode

HERE = Path(__file__).parent
FAULT_TRACE, CLEAN_TRACE = HERE / "faults.trace.gz", HERE / "clean.trace.gz"
FAULT, CLEAN = "Wudaoliang", "Madoi"
FAULT_GW, CLEAN_GW = "wudaoliang-gw1", "madoi-gw1"
ICY, DRY = "G0613 K220", "G109 K100"
HOT_DC, COOL_DC = "DC hot", "DC clean"
WATER: dict[str, Any] = {
    "water_temperature": 4.0,
    "ph": 7.8,
    "dissolved_oxygen": 7.9,
    "conductivity": 310,
}
MUDDY: dict[str, Any] = {"turbidity": 3500.0}
ROAD: dict[str, Any] = {"water_film": 0.3, "wind_speed": 3.0}


class Publisher:
    """Sends what a gateway would: readings, status and health messages, numbered per gateway."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seq: dict[tuple[str, str], int] = {}

    async def readings(self, site: str, gateway: str, readings: list[dict[str, Any]]) -> None:
        for start in range(0, len(readings), 500):
            seq = self.seq.get((site, gateway), 0)
            self.seq[(site, gateway)] = seq + 1
            body = {
                "schema": 1,
                "gateway": gateway,
                "site": site,
                "seq": seq,
                "sent_at": format_time(datetime.now(UTC)),
                "readings": readings[start : start + 500],
            }
            await self.client.publish(wire.readings_topic(site, gateway), encode(body), qos=1)

    async def status(self, site: str, gateway: str, state: str, reason: str, at: datetime) -> None:
        body = {"schema": 1, "gateway": gateway, "site": site, "state": state}
        body |= {"reason": reason, "at": format_time(at)}
        await self.client.publish(wire.status_topic(site, gateway), encode(body), qos=1)

    async def health(self, site: str, gateway: str, at: datetime, **values: Any) -> None:
        body = {"schema": 1, "gateway": gateway, "site": site, "at": format_time(at)}
        body |= {"uptime_s": 3600, "memory_available_mb": 300, "disk_free_mb": 9000}
        body |= {"outbox_bytes": 0, "load_1m": 0.2}
        body |= {"link_up": True, "reconnects": 0, "dropped_total": 0, **values}
        await self.client.publish(wire.health_topic(site, gateway), encode(body), qos=1)


def reading(
    device: str, kind: str, at: datetime, channel: str | None = None, **values: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": device,
        "kind": kind,
        "time": format_time(at),
        "values": values,
    }
    if channel is not None:
        out["channel"] = channel
    return out


@dataclass(frozen=True)
class Side:
    """One side of every scenario: the faulty one or the clean one."""

    station: str
    gateway: str
    lost_min: int
    backlog: dict[str, Any]
    ammonia: float
    volts: float
    road: str
    surface: float
    surface_state: str
    visibility: float
    datacenter: str
    facility_kw: float


FAULTY = Side(
    FAULT,
    FAULT_GW,
    20,
    {
        "outbox_readings": 5400,
        "oldest_unsent_age_s": 5400.0,
        "device_errors": {"wq-1": 3},
        "clock_state": "unset",
    },
    1.8,
    11.2,
    ICY,
    -3.0,
    "wet",
    150.0,
    HOT_DC,
    1500.0,
)
HEALTHY = Side(
    CLEAN,
    CLEAN_GW,
    5,
    {"outbox_readings": 3, "oldest_unsent_age_s": 30.0},
    0.1,
    12.8,
    DRY,
    8.0,
    "dry",
    15000.0,
    COOL_DC,
    1150.0,
)


async def publish(pub: Publisher, side: Side, now: datetime) -> None:
    """Every scenario of one side, times relative to ``now``."""
    await pub.status(side.station, side.gateway, "online", "connected", now - timedelta(hours=2))
    lost = now - timedelta(minutes=side.lost_min)
    await pub.status(side.station, side.gateway, "offline", "connection_lost", lost)
    await pub.health(side.station, side.gateway, now, **side.backlog)
    water = {**WATER, "turbidity": 12.0, "ammonia_nitrogen": side.ammonia}
    # Readings every minute for 20 min: the per-reading critical rules wait past a lone one.
    minutes = range(20, -1, -1)
    await pub.readings(
        side.station,
        side.gateway,
        [
            reading("wq-1", "water_quality", now - timedelta(minutes=m, seconds=2), **sample)
            for m in minutes
            # On the faulty side the last sample a lone turbidity spike (not a class
            # parameter), which the ingest flags spike:turbidity.
            for sample in [water | MUDDY if side is FAULTY and m == 0 else water]
        ],
    )
    battery: dict[str, Any] = {
        "battery_soc": 40.0,
        "solar_charge_power": 0.0,
        "enclosure_temperature": -12.0,
    }
    await pub.readings(
        side.station,
        side.gateway,
        [
            reading(
                "power-1",
                "station_health",
                now - timedelta(minutes=m),
                battery_voltage=side.volts,
                **battery,
            )
            for m in minutes
        ],
    )
    cold = side.surface < 0
    await pub.readings(
        side.road,
        "rsu-1",
        [
            reading(
                "rws-1",
                "road_weather",
                now - timedelta(minutes=m, seconds=2),
                **ROAD,
                surface_temperature=side.surface,
                surface_state=side.surface_state,
                visibility=side.visibility,
                air_temperature=-2.0 if cold else 10.0,
                relative_humidity=95.0 if cold else 40.0,
            )
            for m in minutes
        ],
    )
    # Three days of energy counters every 10 min: IT 1000 kW, facility as given.
    start = now - timedelta(days=3)
    counters = []
    for i in range(3 * 24 * 6 + 1):
        at, hours = start + timedelta(minutes=10 * i), i / 6
        for circuit, kw in (
            ("utility", side.facility_kw),
            ("it_load", 1000.0),
            ("renewable", 400.0),
        ):
            counters.append(
                reading(
                    "pue-meter",
                    "energy_meter",
                    at,
                    channel=circuit,
                    energy_kwh=10_000 + kw * hours,
                    active_power_kw=kw,
                )
            )
    await pub.readings(side.datacenter, f"{side.datacenter.split()[1].lower()}-meters", counters)


async def faults(pub: Publisher, now: datetime) -> None:
    await publish(pub, FAULTY, now)
    # One refused reading (95 degC water), so that rejections by reason have something to show.
    hot = {**WATER, "water_temperature": 95.0, "turbidity": 1.0}
    await pub.readings(FAULT, FAULT_GW, [reading("wq-1", "water_quality", now, **hot)])


async def clean(pub: Publisher, now: datetime) -> None:
    await publish(pub, HEALTHY, now)
    # The clear road's last reading a lone 30 m, which the ingest flags spike:visibility.
    spike = {**ROAD, "surface_temperature": HEALTHY.surface, "surface_state": "dry"}
    spike |= {"visibility": 30.0, "air_temperature": 10.0, "relative_humidity": 40.0}
    await pub.readings(DRY, "rsu-1", [reading("rws-1", "road_weather", now, **spike)])


async def make(scenario: Callable[[Publisher, datetime], Awaitable[None]], target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        out = tmp / target.name
        async with MosquittoServer(tmp / "mosquitto") as broker:
            options = RecordOptions(filters=["ecotel/v1/#"], out=out, note=f"alerts: {target.name}")
            async with (
                recording(BrokerSettings(port=broker.port), options),
                aiomqtt.Client("127.0.0.1", broker.port) as client,
            ):
                await scenario(Publisher(client), datetime.now(UTC))
        shutil.copyfile(out, target)


def main() -> int:
    for scenario, target in ((faults, FAULT_TRACE), (clean, CLEAN_TRACE)):
        asyncio.run(make(scenario, target))
        print(f"{target} {target.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
