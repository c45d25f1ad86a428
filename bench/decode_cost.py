"""CPU cost of the ingest's per-message work: decode, validate against the catalog, serialise to line protocol."""

import time
from datetime import UTC, datetime, timedelta

from collector import wire
from devices import KINDS, Reading
from devices.simulators import make_simulator
from pipelines.decode import decode_readings


def _messages(batch: int, count: int) -> list[tuple[str, bytes]]:
    sims = [make_simulator(k.kind, f"{k.kind}-1", seed=i) for i, k in enumerate(KINDS.values())]
    start = datetime(2026, 7, 1, tzinfo=UTC)
    readings: list[Reading] = []
    step = 0
    while len(readings) < batch * count:
        at = start + timedelta(seconds=10 * step)
        for sim in sims:
            readings.extend(sim.sample(at))
        step += 1
    topic = wire.readings_topic("Tuotuohe", "gw-1")
    return [
        (
            topic,
            wire.ReadingsMessage(
                gateway="gw-1",
                site="Tuotuohe",
                seq=i,
                sent_at=start,
                readings=readings[i * batch : (i + 1) * batch],
            ).encode(),
        )
        for i in range(count)
    ]


def run(batch: int = 100, count: int = 500) -> dict[str, float]:
    """Microseconds per reading for the whole decode path at a given batch size."""
    messages = _messages(batch, count)
    started = time.perf_counter()
    lines = 0
    for topic, payload in messages:
        lines += len(decode_readings(topic, payload, max_bytes=1 << 24).lines)
    elapsed = time.perf_counter() - started
    assert lines == batch * count
    return {
        "readings": lines,
        "us_per_reading": elapsed / lines * 1e6,
        "readings_per_s": lines / elapsed,
    }
