"""``python -m bench ingest``: ecotel's ingest beside a hand-written bridge and the raw limits, on real servers.

Every scenario gets a fresh Mosquitto and InfluxDB (deploy/servers.py) and
separate processes: the load generator (bench/ingest_publisher.py), and the
system under test (``ecotel-ingest run``, bench/ingest_bridge.py,
bench/ingest_sink.py or bench/ingest_influx_raw.py). Readings are counted in
InfluxDB at the end; latency comes from probe readings (bench/ingest_measure.py).
"""

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.ingest_measure import Influx, ProbeWatch, ProcessWatch, Usage, percentile
from bench.ingest_messages import Plan, start_for
from deploy.servers import InfluxServer, MosquittoServer
from devices import KINDS

REPO = Path(__file__).resolve().parents[1]
DATABASE = "bench"
# Only the readings' own measurements: the ingest also stores its counters and derived series.
MEASUREMENTS = sorted(KINDS)
System = Literal["broker", "influx", "ecotel", "bridge"]
# Give up on a run when InfluxDB's count has not grown for this long.
_STALL_S = 30.0
_COUNT_POLL_S = 0.2


@dataclass(frozen=True)
class Scenario:
    system: System
    batch: int
    readings: int
    workers: int = 1
    rate: float = 0.0
    publishers: int = 1
    probe_every_s: float = 0.05
    derive: bool = True
    profile: Path | None = None

    @property
    def name(self) -> str:
        what = {
            "broker": "raw broker -> discarding subscriber",
            "influx": "raw InfluxDB /write, pre-built lines",
            "ecotel": f"ecotel-ingest, {self.workers} worker{'s' if self.workers > 1 else ''}"
            + ("" if self.derive else ", derive off"),
            "bridge": "hand-written paho bridge",
        }[self.system]
        rate = f" @ {self.rate:,.0f}/s" if self.rate else ""
        return f"{what}, batch {self.batch}{rate}"


@dataclass
class Result:
    scenario: Scenario
    expected: int
    stored: int
    seconds: float
    publish_s: float = float("nan")
    usage: dict[str, Usage] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, Any]:
        sc = self.scenario
        return {
            "scenario": sc.name,
            "system": sc.system,
            "batch": sc.batch,
            "workers": sc.workers,
            "rate": sc.rate,
            "expected": self.expected,
            "stored": self.stored,
            "seconds": round(self.seconds, 3),
            "readings_per_s": round(self.per_s),
            "publish_s": round(self.publish_s, 3),
            "p50_s": round(percentile(self.latencies, 50), 3),
            "p99_s": round(percentile(self.latencies, 99), 3),
            "probes": len(self.latencies),
            "cpu_s": {k: round(v.cpu_s, 2) for k, v in self.usage.items()},
            "peak_rss_mb": {k: round(v.peak_rss_mb, 1) for k, v in self.usage.items()},
            "notes": self.notes,
        }


class Child:
    """A helper process that prints ``ready``, may wait for a line on stdin, and ends with a JSON line."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        line = await self._line()
        if line != "ready":
            raise RuntimeError(f"{self.argv[:3]} did not start: {line!r}")

    def go(self) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self) -> dict[str, Any]:
        while True:
            line = await self._line()
            if line.startswith("{"):
                assert self.proc is not None
                await self.proc.wait()
                parsed: dict[str, Any] = json.loads(line)
                return parsed
            print(f"  [{Path(self.argv[2]).name}] {line}", file=sys.stderr)

    async def _line(self) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            code = await self.proc.wait()
            raise RuntimeError(f"{self.argv[:3]} ended (exit {code}) without its figures")
        return raw.decode().strip()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def _python(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *(str(a) for a in args)]


def _flags(options: dict[str, object], **more: object) -> list[object]:
    return [part for k, v in {**options, **more}.items() for part in (f"--{k}", v)]


def _publishers(sc: Scenario, port: int, start: str, probes: bool) -> list[Child]:
    options: dict[str, object] = {
        "port": port,
        "readings": sc.readings,
        "batch": sc.batch,
        "start": start,
        "of": sc.publishers,
        "rate": sc.rate,
        "probe-every": sc.probe_every_s if probes else 0,
    }
    return [
        Child(_python("bench.ingest_publisher", *_flags(options, share=n)))
        for n in range(sc.publishers)
    ]


async def _start_all(children: list[Child]) -> None:
    await asyncio.gather(*(c.start() for c in children))


async def _publish(publishers: list[Child]) -> tuple[float, float, list[dict[str, Any]]]:
    """Start publishing; (first publish, last PUBACK, each publisher's figures)."""
    for p in publishers:
        p.go()
    figures = await asyncio.gather(*(p.result() for p in publishers))
    return min(f["started"] for f in figures), max(f["acked"] for f in figures), figures


def _publisher_usage(figures: list[dict[str, Any]]) -> Usage:
    return Usage(
        cpu_s=sum(f["cpu_s"] for f in figures),
        peak_rss_mb=sum(f["peak_rss_mb"] for f in figures),
    )


async def _run_broker(sc: Scenario, broker: MosquittoServer, start: str) -> Result:
    plan = Plan(sc.readings, sc.batch)
    sink = Child(_python("bench.ingest_sink", "--port", broker.port, "--messages", plan.messages))
    publishers = _publishers(sc, broker.port, start, probes=False)
    await _start_all([sink, *publishers])
    watch = ProcessWatch({"mosquitto": broker.pid or 0})
    watch.start()
    first, acked, figures = await _publish(publishers)
    got = await asyncio.wait_for(sink.result(), _STALL_S * 4)
    usage = await watch.stop()
    usage["publisher"] = _publisher_usage(figures)
    usage["subscriber"] = Usage(got["cpu_s"], got["peak_rss_mb"])
    return Result(
        sc,
        expected=plan.messages * sc.batch,
        stored=got["messages"] * sc.batch,
        seconds=got["last"] - first,
        publish_s=acked - first,
        usage=usage,
    )


async def _run_influx(sc: Scenario, influxd: InfluxServer, influx: Influx, start: str) -> Result:
    options = {
        "influx-url": influxd.url,
        "database": DATABASE,
        "readings": sc.readings,
        "start": start,
        "connections": sc.workers,
    }
    writer = Child(_python("bench.ingest_influx_raw", *_flags(options)))
    await writer.start()
    watch = ProcessWatch({"influxd": influxd.pid or 0})
    watch.start()
    writer.go()
    got = await writer.result()
    usage = await watch.stop()
    usage["writer"] = Usage(got["cpu_s"], got["peak_rss_mb"])
    stored = await influx.count_points(MEASUREMENTS)
    return Result(
        sc,
        expected=sc.readings,
        stored=stored,
        seconds=got["finished"] - got["started"],
        usage=usage,
        notes=[f"write failures: {got['failures']}"] if got["failures"] else [],
    )


def _ingest_config(tmp: Path, broker: MosquittoServer, influxd: InfluxServer, sc: Scenario) -> Path:
    shared = 'shared_group = "bench"\n' if sc.workers > 1 else ""
    path = tmp / "ingest.toml"
    path.write_text(
        f"""\
stats_interval_s = 60

[mqtt]
host = "127.0.0.1"
port = {broker.port}
client_id = "bench-ingest"
{shared}
[influx]
url = "{influxd.url}"
database = "{DATABASE}"

[dead_letter]
path = "{tmp / "ingest-state" / "dead-letters.sqlite3"}"

[derive]
enabled = {"true" if sc.derive else "false"}
"""
    )
    return path


def _spawn(argv: list[str], log: Path) -> "subprocess.Popen[bytes]":
    """Start the system under test with its output in ``log`` (a pipe could fill and stall it)."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


async def _wait_for_log(log: Path, text: str, times: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(log.read_text, errors="replace")).count(text) < times:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
            raise RuntimeError(f"consumer not ready (exit {proc.poll()}); {log}:\n{tail}")
        await asyncio.sleep(0.1)


async def _run_consumer(
    sc: Scenario,
    tmp: Path,
    broker: MosquittoServer,
    influxd: InfluxServer,
    influx: Influx,
    start: str,
) -> Result:
    plan = Plan(sc.readings, sc.batch)
    log = tmp / f"{sc.system}.log"
    if sc.system == "ecotel":
        config = _ingest_config(tmp, broker, influxd, sc)
        argv = [str(Path(sys.executable).with_name("ecotel-ingest"))]
        if sc.profile is not None:
            # The same entry point under cProfile; SIGTERM ends it cleanly, so the profile is written.
            argv = _python("cProfile", "-o", sc.profile, "-m", "pipelines")
        argv += ["--config", str(config), "run"]
        if sc.workers > 1:
            argv += ["--workers", str(sc.workers)]
        ready, times = "ingest connected to", sc.workers
    else:
        options = {"port": broker.port, "influx-url": influxd.url, "database": DATABASE}
        argv = _python("bench.ingest_bridge", *_flags(options))
        ready, times = "ready", 1
    consumer = await asyncio.to_thread(_spawn, argv, log)
    publishers = _publishers(sc, broker.port, start, probes=True)
    try:
        await asyncio.gather(_wait_for_log(log, ready, times, consumer), _start_all(publishers))
        watch = ProcessWatch(
            {"mosquitto": broker.pid or 0, "influxd": influxd.pid or 0, sc.system: consumer.pid}
        )
        watch.start()
        probes = ProbeWatch(influx)
        probing = asyncio.create_task(probes.run())
        first, acked, figures = await _publish(publishers)
        sent_probes = sum(f["probes"] for f in figures)
        await _until(lambda: _stat(probes.seen), sent_probes)
        stored, finished = await _until(
            lambda: influx.count_points(MEASUREMENTS), plan.messages * sc.batch
        )
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probing
        usage = await watch.stop()
    finally:
        for p in publishers:
            await p.stop()
        consumer.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(consumer.wait, 30)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
    usage["publisher"] = _publisher_usage(figures)
    result = Result(
        sc,
        expected=plan.messages * sc.batch,
        stored=stored,
        seconds=finished - first,
        publish_s=acked - first,
        usage=usage,
        latencies=probes.latencies,
    )
    if stored != result.expected:
        result.notes.append(f"MISSING {result.expected - stored} readings; log {log}")
        tail = log.read_text(errors="replace").splitlines()[-5:]
        result.notes.extend(tail)
    if sc.system == "bridge":
        result.notes.append(log.read_text(errors="replace").splitlines()[-1])
    return result


async def _stat(value: int) -> int:
    return value


async def _until(measure: Any, target: int) -> tuple[int, float]:
    """Poll ``measure()`` until it reaches ``target`` or stops growing for _STALL_S; its last
    value, and the time the call that gave it started (what it found was there by then)."""
    last, progressed = -1, time.monotonic()
    while True:
        asked = time.time()
        value: int = await measure()
        if value >= target:
            return value, asked
        if value != last:
            last, progressed = value, time.monotonic()
        elif time.monotonic() - progressed > _STALL_S:
            return value, asked
        await asyncio.sleep(_COUNT_POLL_S)


async def run_scenario(sc: Scenario) -> Result:
    """One scenario on its own fresh Mosquitto and InfluxDB."""
    with tempfile.TemporaryDirectory(prefix="ecotel-bench-ingest-") as name:
        tmp = Path(name)
        start = start_for(Plan(sc.readings, sc.batch)).isoformat()
        async with (
            MosquittoServer(tmp / "mosquitto") as broker,
            InfluxServer(tmp / "influxdb") as influxd,
        ):
            influx = Influx(influxd.url, DATABASE)
            try:
                await influx.create_database()
                if sc.system == "broker":
                    return await _run_broker(sc, broker, start)
                if sc.system == "influx":
                    return await _run_influx(sc, influxd, influx, start)
                return await _run_consumer(sc, tmp, broker, influxd, influx, start)
            finally:
                await influx.aclose()


def scenarios(*, quick: bool, batches: Sequence[int], workers: Sequence[int]) -> list[Scenario]:
    """The default set: raw limits, then ecotel and the bridge per batch size, then the latency runs."""
    scale = 10 if quick else 1

    def size(batch: int) -> int:
        # Several seconds at each target (100,000/s batched, 10,000/s one by one), and
        # runs that stay within minutes where a system is slower.
        return (300_000 if batch >= 50 else 50_000) // scale

    found: list[Scenario] = []
    for batch in batches:
        found.append(Scenario("broker", batch, size(batch)))
    found.append(Scenario("influx", 50, size(50)))
    for batch in batches:
        found.extend(Scenario("ecotel", batch, size(batch), workers=w) for w in workers)
        # Without the derived analytics: the same work as the bridge, plus validation.
        found.extend(
            Scenario("ecotel", batch, size(batch), workers=w, derive=False) for w in workers
        )
        found.append(Scenario("bridge", batch, size(batch)))
    rate, seconds = 10_000, (5 if quick else 20)
    found.append(Scenario("ecotel", 50, rate * seconds, rate=rate))
    found.append(Scenario("ecotel", 50, rate * seconds, rate=rate, derive=False))
    found.append(Scenario("bridge", 50, rate * seconds, rate=rate))
    return found


def _cell(usage: dict[str, Usage], role: str) -> str:
    u = usage.get(role)
    return f"{u.cpu_s:.1f} s / {u.peak_rss_mb:.0f} MB" if u else ""


def table(results: list[Result]) -> str:
    """A Markdown table of the results."""
    head = (
        "| scenario | readings stored / sent | s | readings/s | p50 s | p99 s | "
        "system under test CPU / peak RSS | mosquitto | influxd | publisher | publish s |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    rows = [head]
    for r in results:
        sut = {"broker": "subscriber", "influx": "writer"}.get(r.scenario.system, r.scenario.system)
        lat = (
            (f"{percentile(r.latencies, 50):.2f}", f"{percentile(r.latencies, 99):.2f}")
            if r.latencies
            else ("", "")
        )
        rows.append(
            f"| {r.scenario.name} | {r.stored:,} / {r.expected:,} | {r.seconds:.1f} | "
            f"{r.per_s:,.0f} | {lat[0]} | {lat[1]} | {_cell(r.usage, sut)} | "
            f"{_cell(r.usage, 'mosquitto')} | {_cell(r.usage, 'influxd')} | "
            f"{_cell(r.usage, 'publisher')} | "
            f"{'' if r.publish_s != r.publish_s else f'{r.publish_s:.1f}'} |"
        )
    return "\n".join(rows)


def run(
    *,
    quick: bool = False,
    batches: Sequence[int] = (1, 50),
    workers: Sequence[int] = (1, 2),
    only: Sequence[str] = (),
    json_path: Path | None = None,
) -> list[Result]:
    """Run the scenarios one after another, printing each result as it comes; return them all."""
    chosen = [
        s
        for s in scenarios(quick=quick, batches=batches, workers=workers)
        if not only or s.system in only
    ]
    print(f"load before: {_uptime()}", flush=True)
    results = []
    for sc in chosen:
        print(f"- {sc.name}: {sc.readings:,} readings ...", flush=True)
        result = asyncio.run(run_scenario(sc))
        results.append(result)
        print(f"  {json.dumps(result.row())}", flush=True)
    print(f"load after: {_uptime()}\n")
    print(table(results))
    if json_path is not None:
        json_path.write_text(json.dumps([r.row() for r in results], indent=2))
    return results


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
