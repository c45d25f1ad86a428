"""``python -m bench.decode_cost``: CPU cost per reading of the ingest's real per-message path:
decode, checks, quality flags, line protocol and derived points (figures in docs/ingest.md)."""

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector import wire
from devices import KINDS, Reading
from devices.simulators import make_simulator
from pipelines.config import IngestSettings
from pipelines.decode import Checks, DecodedReadings, decode_readings
from pipelines.influx_writer import Point, no_op
from pipelines.line_protocol import values_line
from pipelines.quality import QualityChecker
from pipelines.service import IngestService

SITE, GATEWAY = "Tuotuohe", "gw-1"
Messages = list[tuple[str, bytes]]


def _messages(batch: int, count: int) -> Messages:
    """Every kind of the catalog, one device each, sampled every 10 s, cut into messages."""
    sims = [make_simulator(k.kind, f"{k.kind}-1", seed=i) for i, k in enumerate(KINDS.values())]
    start = datetime(2026, 7, 1, tzinfo=UTC)
    readings: list[Reading] = []
    step = 0
    while len(readings) < batch * count:
        at = start + timedelta(seconds=10 * step)
        for sim in sims:
            readings.extend(sim.sample(at))
        step += 1
    topic = wire.readings_topic(SITE, GATEWAY)
    return [
        (
            topic,
            wire.ReadingsMessage(
                gateway=GATEWAY,
                site=SITE,
                seq=i,
                sent_at=start,
                readings=readings[i * batch : (i + 1) * batch],
            ).encode(),
        )
        for i in range(count)
    ]


def _settings(state: Path) -> IngestSettings:
    """The sample configuration's checks (deploy/ingest/ingest.toml), on the bench's site: a
    site's own ranges, a gateway's device list, quality flags, a data center's meter map."""
    meter = {"device": "energy_meter-1", "max_power_kw": 5_000}
    return IngestSettings.model_validate(
        {
            "dead_letter": {"path": state / "dead-letters.sqlite3"},
            "validation": {
                "sites": {
                    SITE: {
                        "limits": {
                            "hydrology": {"stage": [0.0, 40.0], "discharge": [0.0, 3000.0]},
                            "water_quality": {"ph": [4.0, 10.0]},
                        },
                        "gateways": {GATEWAY: {"devices": [f"{k}-1" for k in KINDS]}},
                    }
                },
                "quality": {"enabled": True, "stuck_exempt": ["wind_direction"]},
            },
            "derive": {
                "datacenters": [
                    {
                        "site": SITE,
                        "facility": [{**meter, "circuit": "utility"}],
                        "it": [{**meter, "circuit": "ups_output"}],
                    }
                ]
            },
        }
    )


def _clock(work: Callable[[], int]) -> tuple[float, int]:
    gc.collect()  # each stage starts with the same garbage: none
    started = time.perf_counter()
    readings = work()
    return time.perf_counter() - started, readings


def _one_run(messages: Messages, state: Path) -> dict[str, float]:
    """Seconds per stage over all messages, each stage on fresh state (the quality checker
    judges a reading only once: a second pass would take its cheaper path)."""
    service = IngestService(_settings(state))
    max_bytes = service.settings.mqtt.max_message_bytes

    def real_path() -> int:
        # IngestService.handle's per-reading work, without the writer and sequence tracking.
        stored = 0
        for topic, payload in messages:
            decoded = decode_readings(topic, payload, max_bytes=max_bytes, checks=service.checks)
            points = [
                Point(line, kind, topic)
                for line, kind in zip(decoded.lines, decoded.kinds, strict=True)
            ]
            service.derive.stream(decoded, topic, points, no_op)
            stored += len(decoded.lines)
        return stored

    total, stored = _clock(real_path)
    no_quality = Checks(service.checks.window, service.checks.limits, None, service.checks.devices)

    def checked() -> int:
        # Nothing kept, as on the real path: a growing heap would slow the garbage collector.
        for topic, payload in messages:
            decode_readings(topic, payload, max_bytes=max_bytes, checks=no_quality)
        return 0

    with_checks, _ = _clock(checked)
    # The checked readings the remaining stages take, decoded untimed.
    decoded_all: list[DecodedReadings] = [
        decode_readings(topic, payload, max_bytes=max_bytes, checks=no_quality)
        for topic, payload in messages
    ]
    assert service.quality is not None
    quality = QualityChecker(service.quality.settings)

    def flags() -> int:
        for d in decoded_all:
            for r in d.readings:
                key = (d.site, d.gateway, r.device, r.kind, r.channel)
                quality.check(key, r.time, r.model, r.values)
        return 0

    judged, _ = _clock(flags)

    def lines() -> int:
        for d in decoded_all:
            for r in d.readings:
                values_line(d.site, d.gateway, r.model, r.device, r.channel, r.time, r.values)
        return 0

    written, _ = _clock(lines)

    def derive() -> int:
        for d in decoded_all:
            service.derive.stream(d, "t", [], no_op)
        return 0

    derived, _ = _clock(derive)
    return {
        "stored": stored,
        "total": total,
        "decode_checks": with_checks - written,
        "quality": judged,
        "line_protocol": written,
        "derive": derived,
    }


def run(batch: int = 100, count: int = 500, repeat: int = 3) -> dict[str, float]:
    """Microseconds per reading of the real path and of its stages, best of ``repeat`` runs.

    Stages are timed apart on the same messages: ``decode_checks`` is decode_readings
    without quality flags (envelope, reading, catalog and a site's own ranges, the
    gateway's device list, the time window) less its line protocol; the others are timed
    alone. Their sum is close to ``us_per_reading``, not equal to it. A site's ranges and
    device list cost nothing measurable next to the catalog's validation (their difference
    stayed within the run-to-run noise of +-3 us), so they are not a stage of their own.
    """
    messages = _messages(batch, count)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        _one_run(messages[:20], Path(tmp) / "warm-up")  # imports, caches, pydantic's first calls
        for i in range(repeat):
            state = Path(tmp) / str(i)
            runs.append(_one_run(messages, state))
    readings = batch * count
    assert all(r["stored"] == readings for r in runs), "some readings were refused"
    best = {k: min(r[k] for r in runs) for k in runs[0] if k != "stored"}
    result = {
        "readings": float(readings),
        "us_per_reading": best["total"] / readings * 1e6,
        "readings_per_s": readings / best["total"],
    }
    for stage in ("decode_checks", "quality", "line_protocol", "derive"):
        result[f"us_{stage}"] = best[stage] / readings * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=100, help="readings per message")
    parser.add_argument("--count", type=int, default=500, help="messages")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best of each is kept")
    args = parser.parse_args()
    result = run(args.batch, args.count, args.repeat)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{int(result['readings']):,} readings, {args.batch} per message, best of "
        f"{args.repeat} runs (load average {load}):"
    )
    print(
        f"  real per-reading path   {result['us_per_reading']:6.1f} us  "
        f"({result['readings_per_s']:,.0f} readings/s on one core)"
    )
    for stage in ("decode_checks", "quality", "line_protocol", "derive"):
        print(f"    {stage:20s}  {result[f'us_{stage}']:6.1f} us")


if __name__ == "__main__":
    main()
