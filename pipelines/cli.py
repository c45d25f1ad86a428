"""``ecotel-ingest``: run the ingest service, or inspect its dead-letter store."""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from collector.broker_link import context_from
from collector.durable_sqlite import StoreUnusable
from collector.log_options import add_log_level
from collector.process_lock import InUse, lock_exclusively
from collector.settings_loader import ConfigError, build_settings
from collector.stdout_pipe import reader_left
from pipelines.config import (
    ApiUnavailable,
    IngestSettings,
    SpoolSettings,
    for_worker,
    load_ingest_config,
)
from pipelines.dead_letter import DeadLetter, DeadLetterStore
from pipelines.derive_cli import (
    InfluxAway,
    add_derive_parser,
    influx_where,
    open_influx,
    run_derive,
)
from pipelines.group_sessions import (
    forget_session,
    record_sessions,
    refusal,
    session_lock_path,
    stranded_sessions,
    to_retire,
)
from pipelines.influx_writer import InfluxError, WriterFailed
from pipelines.mqtt_consumer import MqttRefused
from pipelines.service import IngestService
from pipelines.supervisor import Supervisor

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [worker {worker}]: %(message)s"
RETIRE_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [retiring {session}]: %(message)s"
# How often a worker checks that the process that started it is still there.
_PARENT_CHECK_S = 1.0

RUN_DESCRIPTION = """Run the ingest until Ctrl-C or SIGTERM. Either stops reading messages,
writes and acknowledges those received (at most mqtt.stop_timeout_s, default
10 s; a second signal stops at once, leaving the rest to be redelivered) and
disconnects.

Without --workers: one process, one MQTT session (client id mqtt.client_id,
suffixed -K if mqtt.worker is K).

With --workers N: a supervisor starts N worker processes (worker ids
0..N-1, the same configuration) that share one subscription through the
broker: mqtt.shared_group must be set, and every topic filter is subscribed
as $share/<group>/<filter>, so each message goes to one worker. Worker K has
its own persistent session, client id <mqtt.client_id>-K. A worker that dies
is restarted as the same worker K (backoff 0.5 s doubling to 30 s, logged):
the broker keeps its share queued for that session and gives it to no other
worker. SIGTERM or SIGINT to the supervisor stops all workers; it exits once
they have stopped. Its log names every worker's pid.

--worker K runs a single worker K (what the supervisor starts; also for one
process per systemd unit).

Fewer workers than the group has had: the supervisor also starts each
recorded worker K it no longer runs with --retire, which leaves the group,
takes what the broker queued for K's session, writes it (and K's spool),
then discards the session; K is then forgotten (mqtt-sessions.json beside
the dead-letter store). So is the session of a single ingest with the same
client id that ran before the group. --worker K --retire (or --retire
alone, for that single ingest's session) does the same by hand (exit 0 once
retired, 75 if stopped before)."""


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


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
    run = sub.add_parser(
        "run",
        help="run the service until Ctrl-C or SIGTERM (--workers N: N processes)",
        description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Also accepted after the command; SUPPRESS keeps a --config given before it.
    run.add_argument(
        "--config", "-c", type=Path, default=argparse.SUPPRESS, help="ingest TOML file"
    )
    add_log_level(run, "INFO")
    how_many = run.add_mutually_exclusive_group()
    how_many.add_argument(
        "--workers",
        type=_count(1),
        metavar="N",
        help="supervise N worker processes on the shared subscription mqtt.shared_group, "
        "restarting any that dies (see above)",
    )
    how_many.add_argument(
        "--worker",
        type=_count(0),
        metavar="K",
        help="run as worker K: client id <mqtt.client_id>-K (also mqtt.worker, "
        "ECOTEL_INGEST_MQTT__WORKER)",
    )
    run.add_argument(
        "--retire",
        action="store_true",
        help="take what the broker queued for worker K's session (with --worker K) or for the "
        "single ingest's before the group (alone), then discard the session (see above)",
    )
    dl = sub.add_parser("dead-letters", help="inspect refused messages and readings")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    ls = dl_sub.add_parser("list", help="one line per dead letter")
    ls.add_argument("--reason", help="only this reason code")
    ls.add_argument("--limit", type=_count(1), default=50, help="at most this many (default 50)")
    ls.add_argument(
        "--after",
        type=_count(0),
        default=0,
        metavar="ID",
        help="those after this id (the next page: the last id shown)",
    )
    show = dl_sub.add_parser("show", help="everything kept of one dead letter")
    show.add_argument("id", type=int)
    dl_sub.add_parser("counts", help="dead letters per reason")
    again = dl_sub.add_parser(
        "replay",
        help="run dead letters through today's checks again; store what passes",
        description="Re-validate dead letters with the current configuration (after a fix) and "
        "write what passes to InfluxDB: those are removed from the store; what fails again "
        "stays, under its new reason. Sequence numbers are not counted again.",
    )
    again.add_argument("ids", type=int, nargs="*", help="dead letter ids")
    again.add_argument("--reason", help="replay the oldest --limit letters of this reason")
    again.add_argument("--limit", type=int, default=100)
    again.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up when InfluxDB does not answer at start for this long (default 30)",
    )
    add_derive_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = str(args.config) if args.config else "defaults and environment"
    try:
        settings = (
            load_ingest_config(args.config)
            if args.config
            else build_settings(IngestSettings, {}, source=source)
        )
        if args.command == "run":
            context_from(settings.mqtt.tls, source, section="mqtt")
    except ConfigError as exc:
        print(f"ecotel-ingest: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        if args.retire and (args.workers is not None or settings.mqtt.shared_group is None):
            print(
                "ecotel-ingest: --retire needs the shared group the session leaves "
                "(mqtt.shared_group), and --worker K or nothing (the single ingest's session), "
                "not --workers",
                file=sys.stderr,
            )
            return 2
        if args.workers is not None:
            return _supervise(settings, args)
        if args.worker is not None:
            settings = for_worker(settings, args.worker)
        if args.retire:
            pass  # a session leaving: neither checked against the record nor added to it
        elif settings.mqtt.shared_group is not None and args.worker is None:
            # One process alone in a group: it must not strand a former worker's share.
            problem = _group_sessions_problem(settings, [settings.mqtt.session_id])
            if problem is not None:
                print(f"ecotel-ingest: {problem}", file=sys.stderr)
                return 2
        elif settings.mqtt.shared_group is not None or args.worker is None:
            # A worker started by hand (one unit each), or a single ingest: recorded, so that
            # a supervisor started later retires what it no longer runs.
            try:
                record_sessions(settings, [settings.mqtt.session_id])
            except ValueError as exc:
                print(f"ecotel-ingest: {exc}", file=sys.stderr)
                return 2
        worker = settings.mqtt.worker
        # Workers share the supervisor's stderr: each line says whose it is.
        if args.retire:
            log_format = RETIRE_LOG_FORMAT.format(session=settings.mqtt.session_id)
        elif worker is None:
            log_format = LOG_FORMAT
        else:
            log_format = WORKER_LOG_FORMAT.format(worker=worker)
        logging.basicConfig(level=args.log_level.upper(), format=log_format)
        if logging.getLogger().level > logging.DEBUG:
            # httpx logs every request at INFO: a line per batch written buries the ingest's own.
            logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            # One process per MQTT session: two on one session take it from each other, and
            # a retirement would discard a session still in use (its later share lost).
            session_lock = lock_exclusively(
                session_lock_path(settings), f"MQTT session {settings.mqtt.session_id}"
            )
        except InUse as exc:
            print(f"ecotel-ingest: {exc}", file=sys.stderr)
            return 2
        with session_lock:
            return _run_one(settings, args, source)
    try:
        if args.command == "derive":
            return asyncio.run(run_derive(settings, args))
        return asyncio.run(_dead_letters(settings, args))
    except BrokenPipeError:
        return reader_left()  # `dead-letters list | head`
    except StoreUnusable as exc:
        print(f"ecotel-ingest: {exc}", file=sys.stderr)
        return 1


def _run_one(settings: IngestSettings, args: argparse.Namespace, source: str) -> int:
    """One ingest process (a worker, a single ingest, or a retiring session) until it stops."""
    refused: MqttRefused | None = None
    unusable: StoreUnusable | OSError | None = None
    failed: WriterFailed | None = None
    service = IngestService(settings, retire=args.retire)
    try:
        asyncio.run(_run(service, watch_parent=args.worker is not None))
    except* MqttRefused as group:
        first = group.exceptions[0]
        assert isinstance(first, MqttRefused)
        refused = first
    except* (StoreUnusable, ApiUnavailable) as group:
        first_error = group.exceptions[0]
        assert isinstance(first_error, StoreUnusable | ApiUnavailable)
        unusable = first_error
    except* WriterFailed as group:
        first_failure = group.exceptions[0]
        assert isinstance(first_failure, WriterFailed)
        failed = first_failure
    if failed is not None:
        # Logged with its traceback already: one line here, exit 1 (restarted; nothing
        # unwritten was acknowledged).
        print(f"ecotel-ingest: {failed}", file=sys.stderr)
        return 1
    if unusable is not None:
        # Exit (a supervisor or systemd restarts it): never hang on a file it cannot use,
        # nor run without the API its settings ask for.
        where = f"{source}: " if isinstance(unusable, ApiUnavailable) else ""
        print(f"ecotel-ingest: {where}{unusable}", file=sys.stderr)
        return 1
    if refused is not None:
        print(
            f"ecotel-ingest: {source}: {refused.setting(settings.mqtt.username)}",
            file=sys.stderr,
        )
        # EX_CONFIG, as the gateway: a unit's RestartPreventExitStatus stops the loop.
        return 78
    if args.retire:
        return _retired(settings, service)
    return 0


def _retired(settings: IngestSettings, service: IngestService) -> int:
    """Forget a worker whose session is retired: 0; 75 (EX_TEMPFAIL) if it stopped before."""
    if not service.retired:
        logging.getLogger("ecotel.ingest").warning(
            "ingest: stopped before session %s was retired; run it again to finish",
            settings.mqtt.session_id,
        )
        return 75
    try:
        forget_session(settings, settings.mqtt.session_id, gone=service.found_gone is True)
    except ValueError as exc:  # the record was damaged meanwhile: the session is gone anyway
        print(f"ecotel-ingest: session retired, but {exc}", file=sys.stderr)
        return 2
    return 0


def _group_sessions_problem(settings: IngestSettings, sessions: list[str]) -> str | None:
    """Why the group must not start with only ``sessions``, or None (then they are recorded)."""
    try:
        stranded = stranded_sessions(settings, sessions)
    except ValueError as exc:
        return str(exc)
    if stranded:
        return refusal(settings, stranded, sessions)
    record_sessions(settings, sessions)
    return None


def _supervise(settings: IngestSettings, args: argparse.Namespace) -> int:
    if settings.mqtt.shared_group is None:
        print(
            "ecotel-ingest: --workers needs a shared subscription: set mqtt.shared_group "
            "(or ECOTEL_INGEST_MQTT__SHARED_GROUP); without it every worker would get "
            "every message",
            file=sys.stderr,
        )
        return 2
    sessions = [for_worker(settings, number).mqtt.session_id for number in range(args.workers)]
    try:
        # Workers it had and no longer runs, and a single ingest of this client id before (its
        # session gets a copy of every message), are retired; another client id's it cannot.
        retiring, others = to_retire(settings, sessions)
    except ValueError as exc:
        print(f"ecotel-ingest: {exc}", file=sys.stderr)
        return 2
    if others:
        print(f"ecotel-ingest: {refusal(settings, others, sessions)}", file=sys.stderr)
        return 2
    record_sessions(settings, sessions)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    # Workers read the same file and inherit the environment, so
    # ECOTEL_INGEST_* overrides reach them too.
    config = ["--config", str(args.config.absolute())] if args.config else []

    def command(number: int | None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pipelines",
            *config,
            "run",
            *(["--worker", str(number)] if number is not None else []),
            "--log-level",
            args.log_level,
            *(["--retire"] if number in retiring else []),
        ]

    mqtt = settings.mqtt
    logging.getLogger("ecotel.ingest.supervisor").info(
        "supervisor: %d workers on shared group %s, client ids %s-0..%s-%d",
        args.workers,
        mqtt.shared_group,
        mqtt.client_id,
        mqtt.client_id,
        args.workers - 1,
    )
    if retiring:
        logging.getLogger("ecotel.ingest.supervisor").info(
            "supervisor: retiring the sessions the group no longer runs: %s (what the broker "
            "queued for them is taken and written, then they are discarded)",
            ", ".join(
                mqtt.client_id if number is None else f"{mqtt.client_id}-{number}"
                for number in retiring
            ),
        )
    supervisor = Supervisor(args.workers, command, retiring=retiring)
    asyncio.run(supervisor.run())
    return supervisor.exit_code


async def _run(service: IngestService, *, watch_parent: bool = False) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    log = logging.getLogger("ecotel.ingest")
    bound = service.settings.mqtt.stop_timeout_s

    def give_up() -> None:
        log.warning(
            "ingest: stopping now; messages received but not yet written stay "
            "unacknowledged (the broker redelivers them)"
        )
        task.cancel()

    def stop_gracefully() -> None:
        if service.stats.messages == 0:
            # Nothing received yet (still waiting for InfluxDB or the broker): nothing to
            # write or acknowledge, so no reason to wait.
            log.info("ingest: stopping; nothing received yet")
            task.cancel()
            return
        # A second signal, or the bound (below the supervisor's 30 s before SIGKILL),
        # stops at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, give_up)
        loop.call_later(bound, give_up)
        log.info("ingest: stopping; writing what was received (at most %g s)", bound)
        service.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_gracefully)
    watcher = asyncio.create_task(_exit_with_parent(task)) if watch_parent else None
    try:
        await service.run(own_process=True)
        log.info("ingest stopped: %s", service.summary())
    except asyncio.CancelledError:
        log.info("ingest stopped: %s", service.summary())
    finally:
        if watcher is not None:
            watcher.cancel()


async def _exit_with_parent(main: asyncio.Task[None]) -> None:
    """Cancel ``main`` once the process that started this worker is gone.

    An orphaned worker would keep its client id, and the worker a new
    supervisor starts with that id would take the session over and back
    again, over and over.
    """
    parent = os.getppid()
    # Nothing signals a parent's death to an asyncio loop, so poll (cheap: one syscall).
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(_PARENT_CHECK_S)
    logging.getLogger("ecotel.ingest").warning(
        "ingest: parent process %d is gone; stopping this worker", parent
    )
    main.cancel()


async def _dead_letters(settings: IngestSettings, args: argparse.Namespace) -> int:
    path = settings.dead_letter.path
    if not path.exists():
        print(
            f"no dead-letter store at {path} (dead_letter.path; the ingest makes it when it "
            "first starts; the local stack's: --config ecotel-data/ingest/ingest.toml)",
            file=sys.stderr,
        )
        return 1
    if args.action == "replay":
        return await _replay(settings, args)
    async with DeadLetterStore(path) as store:
        if args.action == "counts":
            counts = await store.counts()
            if not counts:
                print(f"no dead letters in {path}")
            for reason, count in counts.items():
                print(f"{count:8d}  {reason}")
        elif args.action == "list":
            await _list(store, args)
        else:
            found = await store.get(args.id)
            if found is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(json.dumps(_as_json(found), indent=2, ensure_ascii=False))
    return 0


async def _list(store: DeadLetterStore, args: argparse.Namespace) -> None:
    """Oldest first, one line each; says what was left out and how to see it."""
    letters = await store.list(reason=args.reason, limit=args.limit, after_id=args.after)
    for letter in letters:
        print(
            f"{letter.id:6d}  {letter.received_at:%Y-%m-%d %H:%M:%S}  "
            f"{letter.reason:<16} {letter.topic}  {letter.detail[:100]}"
        )
    counts = await store.counts()
    if letters:
        rest = len(await store.list(reason=args.reason, limit=1, after_id=letters[-1].id))
        if rest:
            # On stderr: `list | wc -l` still counts letters.
            print(
                f"(more after id {letters[-1].id}: --after {letters[-1].id} for the next "
                f"{args.limit}; per reason: dead-letters counts)",
                file=sys.stderr,
            )
    elif not counts:
        print(f"no dead letters in {store.path}")
    elif args.reason is not None and args.reason not in counts:
        unknown = await store.unknown_reason(args.reason)
        print(
            f"no dead letters of reason {args.reason!r} in {store.path}; its reasons: "
            f"{', '.join(counts)}" + (f" ({unknown})" if unknown else "")
        )
    else:
        print(f"no dead letters after id {args.after} in {store.path}")


async def _replay(settings: IngestSettings, args: argparse.Namespace) -> int:
    from pipelines.replay import replay

    if not args.ids and args.reason is None:
        print("ecotel-ingest: name dead letter ids, or --reason", file=sys.stderr)
        return 2
    if args.ids and args.reason is not None:
        print(
            "ecotel-ingest: name dead letter ids or --reason, not both "
            "(--reason would select other letters)",
            file=sys.stderr,
        )
        return 2
    # No spool: a running ingest may be draining its own; these writes wait for InfluxDB.
    service = IngestService(settings.model_copy(update={"spool": SpoolSettings(enabled=False)}))
    refused = 0
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(service.dead_letters)
        try:
            await open_influx(stack, service.writer, args.wait)
        except (InfluxAway, InfluxError) as exc:
            print(
                f"ecotel-ingest dead-letters replay: {influx_where(settings, args)}: {exc}",
                file=sys.stderr,
            )
            return 1
        await stack.enter_async_context(service.derive)
        ids = list(args.ids)
        if not ids:
            letters = await service.dead_letters.list(reason=args.reason, limit=args.limit)
            ids = [letter.id for letter in letters]
        for letter_id in ids:
            result = await replay(service, letter_id)
            refused += result.outcome != "stored"
            line = f"{result.id:6d}  {result.outcome:<14}"
            if result.outcome == "stored":
                # A readings letter stores readings; a status, health or refused point one point.
                line += f" {result.stored} {'point' if result.stored == 1 else 'points'} written"
                if result.new_dead_letters:
                    line += f", {result.new_dead_letters} refused again as new dead letters"
            elif result.reason is not None:
                # One line per letter: a validation error's detail spans several.
                line += f" {result.reason}: {' '.join((result.detail or '').split())[:100]}"
            print(line)
        # The windows the stored readings touched: recomputed before this command ends.
        windows = await service.derive.recompute_marked()
        if windows:
            print(
                f"{windows} derived windows recomputed (those these readings touched, and any "
                "a running ingest had marked)"
            )
    return 1 if refused or service.derive.failures else 0


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
