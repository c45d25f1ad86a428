"""``ecotel-ingest``: run the ingest service, or inspect its dead-letter store."""

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from collector.settings_loader import ConfigError, build_settings
from pipelines.config import IngestSettings, load_ingest_config
from pipelines.dead_letter import DeadLetter, DeadLetterStore
from pipelines.service import IngestService


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecotel-ingest",
        description="Subscribe to gateways' readings over MQTT, validate them against the device "
        "catalog and write them to InfluxDB; refused input goes to a dead-letter store.",
        epilog="Without --config the defaults apply (broker 127.0.0.1:1883, InfluxDB "
        "http://127.0.0.1:8086, database ecotel). Environment variables "
        "ECOTEL_INGEST_<SECTION>__<KEY> override, e.g. ECOTEL_INGEST_INFLUX__URL. "
        "Sample: deploy/ingest/ingest.toml",
    )
    parser.add_argument("--config", "-c", type=Path, help="ingest TOML file")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the service until Ctrl-C or SIGTERM")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    dl = sub.add_parser("dead-letters", help="inspect refused messages and readings")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    ls = dl_sub.add_parser("list", help="one line per dead letter")
    ls.add_argument("--reason", help="only this reason code")
    ls.add_argument("--limit", type=int, default=50)
    show = dl_sub.add_parser("show", help="everything kept of one dead letter")
    show.add_argument("id", type=int)
    dl_sub.add_parser("counts", help="dead letters per reason")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = (
            load_ingest_config(args.config)
            if args.config
            else build_settings(IngestSettings, {}, source="defaults and environment")
        )
    except ConfigError as exc:
        print(f"ecotel-ingest: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        asyncio.run(_run(IngestService(settings)))
        return 0
    return asyncio.run(_dead_letters(settings, args))


async def _run(service: IngestService) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await service.run()
    except asyncio.CancelledError:
        logging.getLogger("ecotel.ingest").info("ingest stopped: %s", service.stats.summary())


async def _dead_letters(settings: IngestSettings, args: argparse.Namespace) -> int:
    path = settings.dead_letter.path
    if not path.exists():
        print(f"no dead-letter store at {path}", file=sys.stderr)
        return 1
    async with DeadLetterStore(path) as store:
        if args.action == "counts":
            for reason, count in (await store.counts()).items():
                print(f"{count:8d}  {reason}")
        elif args.action == "list":
            letters = await store.list(reason=args.reason, limit=args.limit)
            if not letters:
                print(f"no dead letters in {path}")
            for letter in letters:
                print(
                    f"{letter.id:6d}  {letter.received_at:%Y-%m-%d %H:%M:%S}  "
                    f"{letter.reason:<16} {letter.topic}  {letter.detail[:100]}"
                )
        else:
            found = await store.get(args.id)
            if found is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(json.dumps(_as_json(found), indent=2, ensure_ascii=False))
    return 0


def _as_json(letter: DeadLetter) -> dict[str, object]:
    payload: object = None
    if letter.payload is not None:
        try:
            payload = letter.payload.decode("utf-8")
        except UnicodeDecodeError:
            payload = {"hex": letter.payload.hex()}
    return {
        "id": letter.id,
        "received_at": letter.received_at.isoformat(),
        "topic": letter.topic,
        "reason": letter.reason,
        "detail": letter.detail,
        "reading_index": letter.reading_index,
        "reading": letter.reading,
        "payload": payload,
    }
