"""What the ingest benchmark measures: CPU and memory per process, points in InfluxDB, probe latency."""

import asyncio
import contextlib
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.ingest_messages import PROBE_PREFIX
from devices import KINDS

_SAMPLE_S = 0.2


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Usage:
    """CPU seconds over the measured span and peak resident memory of one role's processes."""

    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def _peak_rss_mb(proc: psutil.Process) -> float:
    """The kernel's high-water mark of the process's resident set (Linux), else its current RSS."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float(proc.memory_info().rss) / 1_048_576
    except (OSError, psutil.Error):
        return 0.0


class ProcessWatch:
    """CPU seconds from ``start()`` to ``stop()`` and peak RSS of named processes and their children.

    Children are discovered while sampling (the ingest's supervisor starts its
    workers); a process's last seen CPU time counts if it exits before stop().
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self._roots = {role: psutil.Process(pid) for role, pid in roots.items()}
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._peak: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    def _processes(self) -> list[tuple[str, psutil.Process]]:
        found = []
        for role, root in self._roots.items():
            with contextlib.suppress(psutil.Error):
                found.append((role, root))
                found.extend((role, child) for child in root.children(recursive=True))
        return found

    def _sample(self, first: bool = False) -> None:
        for role, proc in self._processes():
            try:
                times = proc.cpu_times()
                cpu = times.user + times.system
            except psutil.Error:
                continue
            self._role[proc.pid] = role
            if first or proc.pid not in self._base:
                # A child started after start() counts from zero.
                self._base[proc.pid] = cpu if first else 0.0
            self._last[proc.pid] = cpu
            self._peak[proc.pid] = max(self._peak.get(proc.pid, 0.0), _peak_rss_mb(proc))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_SAMPLE_S)
            await asyncio.to_thread(self._sample)

    def start(self) -> None:
        self._sample(first=True)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Usage]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        usage: dict[str, Usage] = {role: Usage() for role in self._roots}
        for pid, role in self._role.items():
            usage[role].cpu_s += self._last[pid] - self._base[pid]
            # Processes of one role run side by side: their peaks add up.
            usage[role].peak_rss_mb += self._peak[pid]
        return usage


class Influx:
    """The few InfluxQL statements the benchmark needs, on one database."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self._http = httpx.AsyncClient(base_url=url, timeout=60, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(self, q: str) -> list[dict[str, object]]:
        response = await self._http.post(
            "/query", data={"q": q, "db": self.database, "epoch": "ns"}
        )
        response.raise_for_status()
        series: list[dict[str, object]] = []
        for result in response.json().get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxDB: {result['error']} in {q}")
            series.extend(result.get("series", []))
        return series

    async def create_database(self) -> None:
        await self.query(f'CREATE DATABASE "{self.database}"')

    async def count_points(self, measurements: list[str]) -> int:
        """Points in these kinds' measurements, counted on a field every reading of the kind has.

        Not count(*): over the nine kinds that counts every field of every kind, 420 ms of
        InfluxDB CPU and 230 ms per count at 300,000 points, against 100 and 60 ms here;
        the count polled while a run ends would load the database it measures.
        """
        total = 0
        query = "; ".join(f'SELECT count("{_required(m)}") FROM "{m}"' for m in measurements)
        for series in await self.query(query):
            rows = series["values"]
            assert isinstance(rows, list)
            total += max(v for v in rows[0][1:] if isinstance(v, int))
        return total


def _required(kind: str) -> str:
    """A field every reading of ``kind`` carries."""
    return next(name for name, info in KINDS[kind].model_fields.items() if info.is_required())


@dataclass
class ProbeWatch:
    """Polls InfluxDB for probe readings; a probe's latency is when it was first seen minus its time.

    The probe's time is its publish time, so a latency covers publish, broker,
    ingest, write and InfluxDB making it queryable; it is an upper bound,
    late by at most one poll interval plus one query.
    """

    influx: Influx
    interval_s: float = 0.05
    latencies: list[float] = field(default_factory=list)
    _seen: set[tuple[str, str, int]] = field(default_factory=set)

    async def run(self) -> None:
        query = f"SELECT * FROM /.*/ WHERE device =~ /^{PROBE_PREFIX}/ AND time > now() - 1h"
        while True:
            await asyncio.sleep(self.interval_s)
            result = await self.influx.query(query)
            now = time.time()
            for series in result:
                columns = series["columns"]
                rows = series["values"]
                assert isinstance(columns, list)
                assert isinstance(rows, list)
                device = columns.index("device")
                for row in rows:
                    key = (str(series["name"]), str(row[device]), int(row[0]))
                    if key not in self._seen:
                        self._seen.add(key)
                        self.latencies.append(now - row[0] / 1e9)

    @property
    def seen(self) -> int:
        return len(self._seen)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (NaN if there are no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1
    return ordered[rank]
