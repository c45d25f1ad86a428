"""The local stack: Mosquitto, InfluxDB, the ingest and one simulated gateway per domain, in one command.

deploy/ is the composition root: it wires the parts of the data flow
together and so may import each of them, the dashboards included.
"""

import asyncio
import contextlib
import logging
import secrets
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

import httpx

from collector.config import DeviceSettings, GatewaySettings, SimulatorSource, load_gateway_config
from collector.gateway import Gateway
from collector.process_lock import InUse, lock_exclusively
from collector.settings_loader import ConfigError
from dashboards.provisioning import write_provisioning
from deploy.servers import InfluxServer, MosquittoServer, find_free_port, require_binaries
from deploy.stack_ingest_config import DATABASE, write_stack_ingest_config
from devices import KINDS, Domain
from pipelines.config import load_ingest_config
from pipelines.influx_query import influx_query
from pipelines.service import IngestService

log = logging.getLogger("ecotel.stack")

STACK_LOCK = "stack.lock"
GATEWAY_SAMPLES = ("ecology.toml", "highway.toml", "datacenter.toml")


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    duration_s: float | None = None
    fresh: bool = False
    interval_s: float | None = None
    """Poll every simulated device at this interval instead of its configured one."""
    scale: int = 1
    """Copies of each simulated device per gateway (for load measurements)."""
    progress_every_s: float = 2.0


@dataclass(frozen=True)
class StackReport:
    """What a run did: elapsed time, readings per domain, what InfluxDB holds afterwards."""

    elapsed_s: float
    published: int
    dropped: int
    """Readings the gateways' full buffers dropped before publishing (counted, logged)."""
    written_by_domain: dict[str, int]
    rejected: int
    """Readings refused one by one (their messages' other readings were stored)."""
    rejected_messages: int
    """Whole messages refused (not UTF-8, not JSON, another gateway's topic, ...)."""
    repeated_messages: int
    """Readings messages the ingest took again (a gateway's sequence number it had seen)."""
    stored_by_measurement: dict[str, int]
    influx_url: str
    mqtt_port: int

    @property
    def written(self) -> int:
        return sum(self.written_by_domain.values())


def sample_gateways(options: StackOptions, mqtt_port: int) -> list[GatewaySettings]:
    """The shipped sample gateway configs, pointed at this stack's broker and data dir."""
    gateways = []
    folder = resources.files("deploy") / "gateway"
    for name in GATEWAY_SAMPLES:
        with resources.as_file(folder / name) as path:
            settings = load_gateway_config(path)
        devices: list[DeviceSettings] = []
        for copy in range(options.scale):
            for device in settings.devices:
                raw = device.model_dump()
                if options.scale > 1:
                    raw["id"] = f"{device.id}-{copy:03d}"
                    if isinstance(device.source, SimulatorSource):
                        raw["source"]["seed"] = device.source.seed + 1000 * copy
                if options.interval_s is not None:
                    # A traffic count covers at least one second (the catalog's interval_s).
                    floor = 1.0 if device.kind == "traffic_detector" else 0.0
                    raw["interval_s"] = max(options.interval_s, floor)
                # Validated again, so an override the device cannot take fails here, named.
                devices.append(DeviceSettings.model_validate(raw))
        gateways.append(
            settings.model_copy(
                update={
                    "gateway": settings.gateway.model_copy(
                        update={"state_dir": options.data_dir / "gateways"}
                    ),
                    "broker": settings.broker.model_copy(
                        update={"host": "127.0.0.1", "port": mqtt_port}
                    ),
                    "devices": devices,
                }
            )
        )
    return gateways


async def run_stack(options: StackOptions, stop: asyncio.Event) -> StackReport:
    """Run everything until ``stop`` is set or the duration has passed; then shut down cleanly."""
    require_binaries()
    data, lock = await asyncio.to_thread(_prepare_data_dir, options)
    print(f"ecotel stack: data under {data}")
    async with (
        _held(lock),
        MosquittoServer(data / "mosquitto") as broker,
        InfluxServer(data / "influxdb") as influx,
    ):
        print(f"  Mosquitto  {broker.url}   (log {broker.log_path})")
        print(f"  InfluxDB   {influx.url}   database {DATABASE}   (log {influx.log_path})")
        written = write_provisioning(data / "grafana", influx_url=influx.url, database=DATABASE)
        print(f"  dashboards {len(written)} Grafana provisioning files under {data / 'grafana'}")
        api_port = find_free_port()
        token_file, token = await asyncio.to_thread(_api_token, data)
        # One file for the stack's ingest and for the operator's `ecotel-ingest --config`.
        config = await asyncio.to_thread(
            write_stack_ingest_config,
            data,
            mqtt_port=broker.port,
            influx_url=influx.url,
            api_port=api_port,
            token=token,
        )
        ingest = IngestService(await asyncio.to_thread(load_ingest_config, config))
        print(
            f"  ingest API http://127.0.0.1:{api_port}   (/metrics, /readyz, /docs; bearer token "
            f"in {token_file})"
        )
        print(
            f"  dead letters {Path(sys.executable).parent / 'ecotel-ingest'} "
            f"--config {shlex.quote(str(config))} dead-letters list   (counts, show N, replay N)"
        )
        gateways = [Gateway(s) for s in sample_gateways(options, broker.port)]
        for gw in gateways:
            ident = gw.settings.gateway
            print(f"  gateway    {ident.id} at {ident.site}: {len(gw.settings.devices)} devices")
        print(f"  watch the traffic: mosquitto_sub -p {broker.port} -t 'ecotel/v1/#' -v")
        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            ingest_task = tasks.create_task(ingest.run())
            async with asyncio.timeout(30):
                await ingest.connected.wait()
            # Said once the ingest is connected, so the lines above can be used now.
            print(
                "Ctrl-C stops"
                + (f"; stopping after {options.duration_s:g} s" if options.duration_s else ""),
                flush=True,
            )
            gateway_tasks = [tasks.create_task(gw.run()) for gw in gateways]
            draining = asyncio.Event()
            progress = tasks.create_task(_progress(ingest, gateways, started, options, draining))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.duration_s):
                    await stop.wait()
            print("stopping: gateways flush what they hold, the ingest writes what it has ...")
            draining.set()
            for gw in gateways:
                gw.stop()
            await asyncio.gather(*gateway_tasks)
            await _settle(ingest, sum(gw.stats.published for gw in gateways))
            progress.cancel()
            ingest_task.cancel()
        elapsed = time.monotonic() - started
        stored = await _stored_counts(influx.url)
        report = StackReport(
            elapsed_s=elapsed,
            published=sum(gw.stats.published for gw in gateways),
            dropped=sum(gw.stats.dropped for gw in gateways),
            written_by_domain=_by_domain(ingest.stats.written_by_kind),
            rejected=ingest.stats.rejected,
            rejected_messages=sum(ingest.stats.rejected_messages.values()),
            repeated_messages=ingest.stats.repeated_messages,
            stored_by_measurement=stored,
            influx_url=influx.url,
            mqtt_port=broker.port,
        )
    _print_report(report, data)
    return report


def _api_token(data: Path) -> tuple[Path, str]:
    """The stack's operator token for the ingest API: made once, kept in the data dir (0600)."""
    path = data / "ingest" / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    return path, path.read_text(encoding="utf-8").strip()


@contextlib.asynccontextmanager
async def _held(lock: TextIO) -> AsyncIterator[None]:
    try:
        yield
    finally:
        lock.close()


def _prepare_data_dir(options: StackOptions) -> tuple[Path, TextIO]:
    """The data dir, held by this stack: a second one there would start a second Mosquitto
    and InfluxDB on the same files, and a second gateway on each outbox."""
    data = options.data_dir.absolute()
    lock = lock_exclusively(data / STACK_LOCK, f"the stack's data dir {data}")
    # The last run's ports: until this run writes its own, a query finds none rather than those.
    (data / "ingest" / "ingest.toml").unlink(missing_ok=True)
    if options.fresh:
        for entry in data.iterdir():
            if entry.name == STACK_LOCK:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return data, lock


async def _settle(ingest: IngestService, published: int, timeout_s: float = 30.0) -> None:
    """Wait until the ingest has taken every published reading and written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ingest.stats.received >= published:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                    await ingest.wait_idle()
            except TimeoutError:
                log.warning(
                    "InfluxDB has not taken everything before the stop timeout: %d points "
                    "wait in the ingest's spool and %d more in memory; the spool is written "
                    "at the next start, and the broker gives the rest again then",
                    ingest.writer.spooled,
                    ingest.writer.pending,
                )
            return
        await asyncio.sleep(0.1)
    log.warning(
        "ingest received %d of %d published readings before the stop timeout",
        ingest.stats.received,
        published,
    )


def _by_domain(by_kind: Counter[str]) -> dict[str, int]:
    out = {d.value: 0 for d in Domain}
    for kind, count in by_kind.items():
        if kind in KINDS:
            out[KINDS[kind].domain.value] += count
    return out


async def _progress(
    ingest: IngestService,
    gateways: list[Gateway],
    started: float,
    options: StackOptions,
    draining: asyncio.Event,
) -> None:
    previous = _by_domain(ingest.stats.written_by_kind)
    last = time.monotonic()
    while True:
        await asyncio.sleep(options.progress_every_s)
        now = time.monotonic()
        current = _by_domain(ingest.stats.written_by_kind)
        rates = "  ".join(
            f"{domain} {(current[domain] - previous[domain]) / (now - last):7.1f}/s"
            for domain in current
        )
        pending = sum(gw.pending for gw in gateways)
        # Polling has stopped while the gateways drain: the rates falling to 0 are expected.
        state = " draining:" if draining.is_set() else ""
        print(
            f"[{now - started:6.0f} s]{state} stored/s: {rates}   stored {ingest.stats.written:,}"
            f"   rejected {ingest.stats.rejected} readings, "
            f"{sum(ingest.stats.rejected_messages.values())} messages   in flight {pending}",
            flush=True,
        )
        previous, last = current, now


async def _stored_counts(influx_url: str) -> dict[str, int]:
    """Points per measurement: the raw kinds first, then whatever else the ingest wrote."""
    shown = await influx_query(influx_url, "SHOW MEASUREMENTS", database=DATABASE)
    present = {row[0] for s in shown for row in s.values}
    counts: dict[str, int] = {}
    for kind in [*KINDS, *sorted(present - set(KINDS))]:
        series = await influx_query(influx_url, f'SELECT count(*) FROM "{kind}"', database=DATABASE)
        # count(*) gives one column per field; the largest is the point count.
        counts[kind] = max(
            (max(int(v) for v in row[1:] if v is not None) for s in series for row in s.values),
            default=0,
        )
    return counts


def _measurement_group(name: str) -> str:
    """What a measurement that is not a device kind is: the fleet's and ingest's own, or derived."""
    return "fleet" if name.startswith(("gateway_", "ingest_")) else "derived"


def _print_report(report: StackReport, data: Path) -> None:
    rate = report.written / report.elapsed_s if report.elapsed_s else 0.0
    print(
        f"\nstopped after {report.elapsed_s:.0f} s: {report.published:,} readings published, "
        f"{report.written:,} written to InfluxDB ({rate:,.1f}/s), {report.rejected} readings "
        f"and {report.rejected_messages} whole messages rejected (kept as dead letters)"
        + (f", {report.dropped:,} dropped by full gateway buffers" if report.dropped else "")
    )
    extra = report.written - report.published
    if extra > 0:
        # The ingest writes what reaches it by any way, not only from the stack's gateways;
        # what it can tell apart are the repeats (a sequence number seen before).
        repeats = (
            f"{report.repeated_messages:,} messages came twice (a sequence number seen "
            "before; InfluxDB stores a point written twice once)"
            if report.repeated_messages
            else "not repeats: no message came twice"
        )
        print(
            f"  ({extra:,} more written than the stack's gateways published; {repeats}.\n"
            "   The ingest also writes readings posted to its API, published to this broker by\n"
            "   other clients (ecotel-trace replay), replayed from dead letters, or kept by the\n"
            "   broker from an earlier run; and a gateway counts a message published once it\n"
            "   saw the broker's PUBACK, which one sent just before its stop may not have had.)"
        )
    print("stored in InfluxDB now (all runs in this data dir):")
    for name, count in report.stored_by_measurement.items():
        domain = KINDS[name].domain.value if name in KINDS else _measurement_group(name)
        print(f"  {name:<20} {domain:<11} {count:>10,} points")
    bin_dir = Path(sys.executable).parent
    query = shlex.quote("SELECT * FROM water_quality ORDER BY time DESC LIMIT 5")
    config = shlex.quote(str(data / "ingest" / "ingest.toml"))
    print(
        "\nlook at the data:\n"
        f"  {bin_dir / 'ecotel-stack'} query --data-dir {shlex.quote(str(data))} {query}\n"
        f"  {bin_dir / 'ecotel-ingest'} --config {config} dead-letters list\n"
        f"  Grafana: mount {data / 'grafana' / 'provisioning'} as /etc/grafana/provisioning "
        f"and {data / 'grafana' / 'dashboards'} as its dashboards folder (deploy/grafana/README.md)"
    )


async def query_stack(data_dir: Path, query: str) -> list[str]:
    """One InfluxQL query on a stack's data, formatted: through its InfluxDB while it runs, else
    on an InfluxDB started on its data dir for the query."""
    data = await asyncio.to_thread(data_dir.absolute)
    if not await asyncio.to_thread((data / "influxdb" / "meta").is_dir):
        raise StackDataMissing(
            f"no stack data under {data} (run ecotel-stack first, or give --data-dir)"
        )
    try:
        lock = await asyncio.to_thread(lock_exclusively, data / STACK_LOCK, str(data))
    except InUse:
        # The stack runs: its own InfluxDB answers (a second one on its files must not start).
        try:
            running = await asyncio.to_thread(load_ingest_config, data / "ingest" / "ingest.toml")
            return await _query(running.influx.url, query)
        except (ConfigError, httpx.TransportError):
            raise StackDataMissing(
                f"the stack at {data} is starting or stopping (its InfluxDB is not up); "
                "try again in a moment"
            ) from None
    with lock:
        require_binaries()
        async with InfluxServer(data / "influxdb") as influx:
            return await _query(influx.url, query)


class StackDataMissing(RuntimeError):
    """``ecotel-stack query`` on a directory where no stack has run."""


async def _query(url: str, query: str) -> list[str]:
    lines: list[str] = []
    for series in await influx_query(url, query, database=DATABASE):
        tags = " ".join(f"{k}={v}" for k, v in series.tags.items())
        lines.append(f"{series.name} {tags}".rstrip())
        lines.append("  " + "\t".join(series.columns))
        lines += [
            "  " + "\t".join("" if v is None else str(v) for v in row) for row in series.values
        ]
    return lines or ["(no rows)"]
