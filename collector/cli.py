"""``ecotel-gateway``: run a field gateway from its TOML configuration, or check that file."""

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from collector.broker_link import tls_context
from collector.config import load_gateway_config
from collector.durable_sqlite import StoreUnusable
from collector.gateway import BrokerRefused, Gateway
from collector.log_options import add_log_level
from collector.process_lock import InUse
from collector.settings_loader import ConfigError
from collector.systemd_notify import keep_watchdog_fed, notify


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecotel-gateway",
        description="Poll field devices and publish their readings to MQTT (ecotel wire contract v1).",
        epilog="Environment variables ECOTEL_GW_<SECTION>__<KEY> override the file, "
        "e.g. ECOTEL_GW_BROKER__PORT=1884. Samples: deploy/gateway/*.toml",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway until Ctrl-C or SIGTERM")
    run.add_argument("--config", "-c", type=Path, required=True, help="gateway TOML file")
    add_log_level(run, "INFO")
    check = sub.add_parser("check", help="validate a configuration file and print it")
    check.add_argument("--config", "-c", type=Path, required=True, help="gateway TOML file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_gateway_config(args.config)
        tls_context(settings.broker, str(args.config))
    except ConfigError as exc:
        print(f"ecotel-gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(settings.model_dump_json(indent=2))
        return 0
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_run(Gateway(settings, source=str(args.config))))
    except BrokerRefused as exc:
        print(f"ecotel-gateway: {exc}", file=sys.stderr)
        # EX_CONFIG: the unit's RestartPreventExitStatus keeps systemd from looping on it.
        return 78
    except InUse as exc:
        # A second gateway on the same outbox (gateway.state_dir and gateway.id).
        print(f"ecotel-gateway: {exc}; stop it first", file=sys.stderr)
        return 2
    except StoreUnusable as exc:
        print(
            f"ecotel-gateway: {exc} (gateway.state_dir in {args.config}, or "
            "ECOTEL_GW_GATEWAY__STATE_DIR)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _run(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    watchdog: asyncio.Task[None] | None = None
    stopped = False

    def stopping() -> None:
        # Said once, when the stop begins: the drain that follows takes up to its timeout,
        # which systemd bounds with TimeoutStopSec, not the watchdog.
        nonlocal stopped
        if not stopped:
            stopped = True
            if watchdog is not None:
                watchdog.cancel()
            notify("STOPPING=1")

    def stop() -> None:
        stopping()
        gateway.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    running = asyncio.create_task(gateway.run())
    ready = asyncio.create_task(gateway.ready.wait())
    try:
        # READY=1 once the outbox is open (systemd then starts what comes After= us); a
        # gateway that cannot open it (held, damaged) exits without ever saying it. Until
        # READY, TimeoutStartSec bounds the start; from then on, the watchdog.
        await asyncio.wait((running, ready), return_when=asyncio.FIRST_COMPLETED)
        if gateway.ready.is_set() and not stopped:
            notify("READY=1")
            watchdog = asyncio.create_task(keep_watchdog_fed())
        await running
    finally:
        ready.cancel()
        stopping()
