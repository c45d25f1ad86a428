"""``ecotel-trace``: record MQTT traffic to a trace file, replay it, import captures, inspect and trim traces."""

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from pydantic import SecretStr, ValidationError

from collector.broker_link import misconfiguration
from collector.config import BrokerSettings, TlsSettings
from collector.log_options import add_log_level
from collector.settings_loader import ConfigError
from collector.stdout_pipe import reader_left
from deploy.traces.broker import broker_from_file
from deploy.traces.file_format import (
    ReadStats,
    TraceError,
    TraceHeader,
    TraceRecord,
    TraceWriter,
    load_trace,
    read_items,
    read_trace,
    write_trace,
)
from deploy.traces.frame_publisher import PublishError
from deploy.traces.inspect import render, summarise
from deploy.traces.record import RecordOptions, SubscriptionRefused, record
from deploy.traces.replay import ReplayOptions, ReplayProgress, replay
from deploy.traces.rewrite import Rewrite, parse_mapping
from deploy.traces.trim import parse_when, trim_items

PASSWORD_ENV = "ECOTEL_TRACE_PASSWORD"


def _broker_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker (as the gateway's [broker] settings)")
    group.add_argument(
        "--broker-config",
        type=Path,
        help="a TOML file with a [broker] table, e.g. a gateway configuration; "
        "the options below override it",
    )
    group.add_argument("--host", help="default 127.0.0.1")
    group.add_argument("--port", type=int, help="default 1883")
    group.add_argument("--username")
    group.add_argument("--ca-file", type=Path, help="TLS: CA the broker's certificate chains to")
    group.add_argument("--cert-file", type=Path, help="TLS: client certificate")
    group.add_argument("--key-file", type=Path, help="TLS: the client certificate's key")
    group.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    group.add_argument("--client-id", help="default: ecotel-trace-<command>-<random>")
    group.add_argument(
        "--mqtt", choices=["3.1.1", "5"], default="5", help="protocol version (default 5)"
    )


def _broker(args: argparse.Namespace) -> tuple[BrokerSettings, str]:
    source = str(args.broker_config) if args.broker_config else "command line"
    base = broker_from_file(args.broker_config) if args.broker_config else BrokerSettings()
    # A gateway's client id is its own: connecting with it would disconnect the live gateway
    # (the broker keeps one connection per id). Only --client-id sets ours.
    base = base.model_copy(update={"client_id": None})
    update: dict[str, object] = {}
    for key in ("host", "port", "username", "client_id"):
        if getattr(args, key) is not None:
            update[key] = getattr(args, key)
    password = os.environ.get(PASSWORD_ENV)
    if password:
        update["password"] = SecretStr(password)
    if args.tls or args.ca_file or args.cert_file or args.key_file:
        update["tls"] = TlsSettings(
            ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file
        )
    try:
        merged = BrokerSettings.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return merged, source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecotel-trace",
        description="Record MQTT traffic into trace files, replay them, import packet captures, "
        "inspect and trim traces (docs/traces.md).",
        epilog=f"The broker password comes from the environment: {PASSWORD_ENV}.",
    )
    add_log_level(parser, "WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("record", help="subscribe and write every message to a trace file")
    _broker_args(rec)
    rec.add_argument("-o", "--out", type=Path, required=True, help="trace file (.trace.gz)")
    rec.add_argument(
        "-t", "--topic", action="append", help="topic filter, repeatable (default ecotel/v1/#)"
    )
    rec.add_argument("--qos", type=int, default=2, choices=[0, 1, 2], help="subscription QoS")
    rec.add_argument(
        "--append",
        action="store_true",
        help="add a session to an existing trace file (rotating: new parts after the last one)",
    )
    rec.add_argument("--rotate-mb", type=float, help="start a new numbered part at this size")
    rec.add_argument("--rotate-s", type=float, help="start a new numbered part this often")
    rec.add_argument("--count", type=int, help="stop after this many messages")
    rec.add_argument("--duration", type=float, help="stop after this many seconds")
    rec.add_argument("--note", help="free text kept in the header")

    rep = sub.add_parser("replay", help="publish a trace to a broker")
    _broker_args(rep)
    rep.add_argument("traces", type=Path, nargs="+", help="trace files, played in this order")
    speed = rep.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=1.0, help="1 = original spacing (default)")
    speed.add_argument("--max-speed", action="store_true", help="as fast as the broker takes it")
    rep.add_argument("--loop", type=int, default=1, help="play this many times; 0 = until Ctrl-C")
    rep.add_argument("--map-site", action="append", default=[], metavar="OLD=NEW")
    rep.add_argument("--map-gateway", action="append", default=[], metavar="OLD=NEW")
    rep.add_argument(
        "--map-prefix", action="append", default=[], metavar="OLD=NEW", help="topic prefix"
    )
    rep.add_argument(
        "--restamp",
        action="store_true",
        help="shift the readings' own times (sent_at, time, at) so the trace looks live",
    )
    rep.add_argument("--qos", type=int, choices=[0, 1, 2], help="override the recorded QoS")
    rep.add_argument("--window", type=int, default=1000, help="unacknowledged publishes at most")
    rep.add_argument("--quiet", action="store_true", help="no progress lines")

    imp = sub.add_parser("import-pcap", help="turn a pcap/pcapng capture of MQTT into a trace")
    imp.add_argument("capture", type=Path)
    imp.add_argument("-o", "--out", type=Path, required=True)
    imp.add_argument(
        "--broker-port", type=int, action="append", help="broker TCP port, repeatable (1883)"
    )
    imp.add_argument(
        "--direction",
        choices=["to-broker", "from-broker", "both"],
        default="to-broker",
        help="client publishes (default), broker deliveries, or both",
    )
    imp.add_argument(
        "--assume-version",
        choices=["3.1.1", "5"],
        default="3.1.1",
        help="MQTT version of connections whose CONNECT is not in the capture",
    )

    ins = sub.add_parser("inspect", help="summarise a trace")
    ins.add_argument("traces", type=Path, nargs="+")
    ins.add_argument("--json", action="store_true", help="machine-readable summary")
    ins.add_argument("--buckets", type=int, default=20, help="time slices for the rate table")

    cut = sub.add_parser("trim", help="keep a time range and/or some topics of a trace")
    cut.add_argument("traces", type=Path, nargs="+")
    cut.add_argument("-o", "--out", type=Path, required=True)
    cut.add_argument("--from", dest="start", help="ISO time, or +SECONDS after the first message")
    cut.add_argument("--to", dest="end", help="ISO time, or +SECONDS after the first message")
    cut.add_argument("-t", "--topic", action="append", help="topic filter, repeatable")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "record":
            return asyncio.run(_record(args))
        if args.command == "replay":
            return asyncio.run(_replay(args))
        if args.command == "import-pcap":
            return _import(args)
        if args.command == "inspect":
            return _inspect(args)
        return _trim(args)
    except BrokenPipeError:
        return reader_left()  # `inspect | head`
    except (ConfigError, TraceError, ValueError, SubscriptionRefused) as exc:
        print(f"ecotel-trace: {exc}", file=sys.stderr)
        return 2
    except (aiomqtt.MqttError, PublishError) as exc:
        print(f"ecotel-trace: broker: {exc}", file=sys.stderr)
        return 1


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _record(args: argparse.Namespace) -> int:
    broker, source = _broker(args)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    try:
        return await _record_until_stopped(args, broker, source, stop)
    except aiomqtt.MqttError as exc:
        # Name the setting when the broker refused ours (password, certificate).
        why = misconfiguration(exc, broker)
        if why is None:
            raise
        raise ConfigError(f"{source}: {why}") from None


async def _record_until_stopped(
    args: argparse.Namespace, broker: BrokerSettings, source: str, stop: asyncio.Event
) -> int:
    if args.duration is not None:
        asyncio.get_running_loop().call_later(args.duration, stop.set)
    options = RecordOptions(
        filters=args.topic or ["ecotel/v1/#"],
        out=args.out,
        version=args.mqtt,
        qos=args.qos,
        append=args.append,
        rotate_bytes=int(args.rotate_mb * 1_000_000) if args.rotate_mb else None,
        rotate_s=args.rotate_s,
        max_messages=args.count,
        note=args.note,
    )
    subscribed = asyncio.Event()
    task = asyncio.create_task(record(broker, options, stop, source=source, subscribed=subscribed))
    waiter = asyncio.create_task(subscribed.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if subscribed.is_set():
        print(
            f"recording {', '.join(options.filters)} into {args.out}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
    stats = await task
    print(
        f"recorded {stats.messages:,} messages ({stats.payload_bytes:,} payload bytes) into "
        + ", ".join(str(p) for p in stats.files),
        file=sys.stderr,
    )
    return 0


async def _replay(args: argparse.Namespace) -> int:
    broker, source = _broker(args)
    records, stats = await asyncio.to_thread(load_trace, args.traces)
    for path in stats.truncated:
        print(
            f"warning: {path} ends in a truncated member; its whole lines are replayed",
            file=sys.stderr,
        )
    rewrite = Rewrite(
        sites=parse_mapping(args.map_site, "--map-site"),
        gateways=parse_mapping(args.map_gateway, "--map-gateway"),
        prefixes=list(parse_mapping(args.map_prefix, "--map-prefix").items()),
        restamp=args.restamp,
    )
    if args.speed is not None and args.speed <= 0:
        raise ValueError("--speed must be above 0")
    options = ReplayOptions(
        speed=None if args.max_speed else args.speed,
        loops=args.loop,
        rewrite=rewrite,
        qos=args.qos,
        version=args.mqtt,
        window=args.window,
    )
    stop = asyncio.Event()
    _stop_on_signals(stop)

    def show(progress: ReplayProgress) -> None:
        if not args.quiet:
            print(progress.line(), file=sys.stderr, flush=True)

    progress = await replay(broker, records, options, source=source, stop=stop, on_progress=show)
    print(f"done: {progress.line()}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    # scapy takes a second to import: only this command pays for it.
    from deploy.traces.pcap_import import CaptureError, import_capture

    if args.out.exists():
        # Before parsing the capture, which may take minutes: import never adds to a trace.
        raise TraceError(f"{args.out} exists; choose another name for the imported trace")
    try:
        records, stats = import_capture(
            args.capture,
            broker_ports=set(args.broker_port or [1883]),
            direction=args.direction,
            assume_version=5 if args.assume_version == "5" else 4,
        )
    except CaptureError as exc:
        print(f"ecotel-trace: {exc}", file=sys.stderr)
        return 2
    first = records[0].arrived if records else datetime.now(UTC)
    header = TraceHeader(
        broker=f"capture {args.capture.name}",
        filters=["#"],
        started_at=first,
        source="pcap",
        note=f"direction {args.direction}",
    )
    write_trace(args.out, header, records)
    versions = ", ".join(f"MQTT {v}: {n}" for v, n in sorted(stats.versions.items()))
    print(
        f"{len(records):,} PUBLISH messages from {stats.connections} TCP connections ({versions}; "
        f"{stats.packets:,} packets) into {args.out}"
    )
    if stats.gaps:
        print(f"warning: {stats.gaps} streams miss bytes (lost by the capture); cut there")
    if stats.truncated_packets:
        print(
            f"warning: the capture cut {stats.truncated_packets} packets short (snap length, or "
            "loopback packets larger than the interface MTU)"
        )
    if stats.undecoded:
        print(f"warning: {stats.undecoded} connections are not readable MQTT (TLS? start missing?)")
    if stats.qos2_resends:
        print(
            f"{stats.qos2_resends} QoS 2 re-sends before PUBREL left out "
            "(the broker passes each on once)"
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    stats = ReadStats()
    summary = summarise(read_trace(args.traces, stats), stats, buckets=args.buckets)
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
    else:
        print(render(summary))
    return 0


def _trim(args: argparse.Namespace) -> int:
    if args.out.exists():
        # Before reading the input, which may be large: trim never adds to or overwrites a trace.
        raise TraceError(f"{args.out} exists; choose another name for the trimmed trace")
    stats = ReadStats()
    items = list(read_items(args.traces, stats))
    records = [item for item in items if isinstance(item, TraceRecord)]
    for path in stats.truncated:
        print(
            f"warning: {path} ends in a truncated member (recorder killed?): its whole lines "
            f"were read; the trimmed trace's header says so",
            file=sys.stderr,
        )
    first = records[0].t_us if records else 0
    start_us = parse_when(args.start, first) if args.start else None
    end_us = parse_when(args.end, first) if args.end else None
    if start_us is not None and end_us is not None and end_us <= start_us:
        raise TraceError(f"--to {args.end} is not after --from {args.start}: nothing to keep")
    kept = list(trim_items(items, start_us=start_us, end_us=end_us, topics=args.topic))
    kept_records = [item for item in kept if isinstance(item, TraceRecord)]
    base = stats.headers[0] if stats.headers else None
    note = (
        f"trimmed from {', '.join(p.name for p in args.traces)}"
        f" (from {args.start or 'start'} to {args.end or 'end'})"
    )
    if stats.truncated:
        note += (
            f"; {', '.join(p.name for p in stats.truncated)} ended in a truncated member: "
            "what was cut off is not here"
        )
    header = TraceHeader(
        broker=base.broker if base else "unknown",
        filters=args.topic or (base.filters if base else ["#"]),
        started_at=kept_records[0].arrived if kept_records else datetime.now(UTC),
        source="trim",
        note=note,
    )
    with TraceWriter(args.out, header) as writer:
        for item in kept:
            # The sessions' own headers stay where they were: their notes, reconnect gaps.
            if isinstance(item, TraceHeader):
                writer.buffer_header(item)
            else:
                writer.write(item)
    print(f"kept {len(kept_records):,} of {len(records):,} messages in {args.out}")
    return 0
