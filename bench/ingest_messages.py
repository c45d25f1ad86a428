"""The ingest benchmark's load: realistic readings messages, pre-built, and the same readings as line protocol.

Values come from the device simulators (all nine kinds, every channel);
each gateway's stream is rounds of its devices ROUND_S apart in device time
(the simulators' default poll interval), ending a minute ago: a backlog
delivered as fast as the system takes it. Every reading is a distinct point,
so the count in InfluxDB must equal what was sent.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from collector import wire
from devices import KINDS, Reading
from devices.simulators import make_simulator
from pipelines.decode import decode_readings

SITE = "bench"
ROUND_S = 10
PROBE_PREFIX = "probe-"
# Distinct samples per device and channel; reused round after round.
_POOL_ROUNDS = 40


@dataclass(frozen=True)
class Slot:
    """One reading of a gateway's round: who speaks and what it measured (values as JSON text)."""

    kind: str
    device_suffix: str
    channel: str | None
    values: list[dict[str, float | str]]


@dataclass(frozen=True)
class Plan:
    """What a run sends: ``readings`` readings from ``gateways`` gateways, ``batch`` per message."""

    readings: int
    batch: int
    gateways: int = 20

    @property
    def messages(self) -> int:
        return self.readings // self.batch

    @property
    def per_gateway(self) -> int:
        return -(-self.messages // self.gateways) * self.batch


@cache
def _slots() -> list[Slot]:
    start = datetime(2026, 7, 1, tzinfo=UTC)
    slots: list[Slot] = []
    for seed, kind in enumerate(KINDS):
        sim = make_simulator(kind, f"{kind}-1", seed=seed)
        samples = [sim.sample(start + timedelta(seconds=10 * r)) for r in range(_POOL_ROUNDS)]
        for channel_index, first in enumerate(samples[0]):
            slots.append(
                Slot(
                    kind=kind,
                    device_suffix=kind.replace("_", "-"),
                    channel=first.channel,
                    values=[_values(round_[channel_index]) for round_ in samples],
                )
            )
    return slots


def _values(reading: Reading) -> dict[str, float | str]:
    return {k: v for k, v in reading.values.items() if v is not None}


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def gateway_name(index: int) -> str:
    return f"gw-{index:03d}"


def device_name(gateway: str, slot: Slot) -> str:
    # Devices belong to one gateway: a gateway may speak only for its own.
    return f"{gateway}-{slot.device_suffix}"


def _reading(gateway: str, slot: Slot, values: str, time: str, device: str | None = None) -> str:
    channel = f',"channel":"{slot.channel}"' if slot.channel is not None else ""
    name = device or device_name(gateway, slot)
    return f'{{"device":"{name}","kind":"{slot.kind}","time":"{time}"{channel},"values":{values}}}'


def start_for(plan: Plan) -> datetime:
    """A start for the plan's rounds so that they end a minute ago."""
    rounds = plan.per_gateway // len(_slots()) + 1
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=rounds * ROUND_S + 60)


class MessageFactory:
    """Builds the messages of a plan; message i always has the same readings (except probes)."""

    def __init__(self, plan: Plan, *, start: datetime | None = None) -> None:
        if plan.batch < 1 or plan.messages < plan.gateways:
            raise ValueError(f"plan {plan} has fewer messages than gateways")
        self.plan = plan
        self.slots = _slots()
        rounds = plan.per_gateway // len(self.slots) + 1
        self.start = start or start_for(plan)
        self._times = [_rfc3339(self.start + timedelta(seconds=r * ROUND_S)) for r in range(rounds)]
        self._values = [
            [json.dumps(v, separators=(",", ":")) for v in slot.values] for slot in self.slots
        ]
        self.sent_at = _rfc3339(datetime.now(UTC))

    def topic(self, message: int) -> str:
        return wire.readings_topic(SITE, gateway_name(message % self.plan.gateways))

    def _position(self, message: int) -> tuple[str, int, int]:
        """(gateway, its seq for this message, index of its first reading in the gateway's stream)."""
        gateways = self.plan.gateways
        seq = message // gateways
        return gateway_name(message % gateways), seq, seq * self.plan.batch

    def payload(self, message: int, probe_time: datetime | None = None) -> bytes:
        """Message ``message``; with ``probe_time`` its first reading is a latency probe stamped then."""
        gateway, seq, first = self._position(message)
        parts = []
        n_slots = len(self.slots)
        for k in range(first, first + self.plan.batch):
            round_, index = divmod(k, n_slots)
            slot = self.slots[index]
            values = self._values[index][round_ % _POOL_ROUNDS]
            if probe_time is not None and k == first:
                parts.append(
                    _reading(
                        gateway,
                        slot,
                        values,
                        _rfc3339(probe_time),
                        f"{PROBE_PREFIX}{device_name(gateway, slot)}",
                    )
                )
            else:
                parts.append(_reading(gateway, slot, values, self._times[round_]))
        return (
            f'{{"schema":1,"gateway":"{gateway}","site":"{SITE}","seq":{seq},'
            f'"sent_at":"{self.sent_at}","readings":[{",".join(parts)}]}}'
        ).encode()

    def all_payloads(self) -> list[tuple[str, bytes]]:
        return [(self.topic(i), self.payload(i)) for i in range(self.plan.messages)]

    def kinds(self) -> list[str]:
        """The measurements the plan writes to."""
        return sorted({slot.kind for slot in self.slots})


def line_protocol(factory: MessageFactory) -> list[str]:
    """The plan's readings as the ingest would write them: what InfluxDB takes with nobody between."""
    lines: list[str] = []
    for i in range(factory.plan.messages):
        lines.extend(decode_readings(factory.topic(i), factory.payload(i), max_bytes=1 << 30).lines)
    return lines
