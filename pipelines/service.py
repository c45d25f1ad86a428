"""The ingest service: subscribe, decode, validate, batch into InfluxDB, dead-letter what is refused."""

import asyncio
import contextlib
import gc
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from collector import wire
from collector.broker_link import context_from
from pipelines.acks import Done, InOrderAcks
from pipelines.config import IngestSettings
from pipelines.dead_letter import DeadLetterStore
from pipelines.decode import (
    Checks,
    DecodedReadings,
    MessageRejected,
    Rejection,
    TimeWindow,
    decode_readings,
)
from pipelines.derive_stream import Deriver
from pipelines.group_sessions import group_has_subscriber, note_subscribed
from pipelines.influx_writer import Chunk, InfluxError, InfluxWriter, Point, no_op
from pipelines.line_protocol import (
    HEALTH_MEASUREMENT,
    STATUS_MEASUREMENT,
    health_to_lines,
    status_to_line,
)
from pipelines.mqtt_consumer import MqttLinkError, MqttRefused, MqttSession
from pipelines.quality import QualityChecker
from pipelines.quality_history import load_quality_history
from pipelines.sequence_ledger import SequenceLedger
from pipelines.sequence_tracker import Seen, SequenceTracker
from pipelines.site_limits import SiteLimits
from pipelines.spool import Spool
from pipelines.stats import IngestStats
from pipelines.stats_points import STATS_MEASUREMENT, stats_to_lines
from pipelines.status_order import StatusOrder

log = logging.getLogger("ecotel.ingest")

RETIRE_TOPIC = "ecotel-ingest/retire"
"""A retiring worker's marker goes to <this>/<its client id> (outside the gateways' topics)."""
_MARKER_PREFIX = f"{RETIRE_TOPIC}/"
_GROUP_POLL_S = 0.5
_GROUP_WAIT_LOG_S = 5.0
# A queue of millions of messages takes minutes: only then is a missing marker worth a word.
_MARKER_WARN_S = 300.0


@dataclass
class Outcome:
    """What became of one message: refused whole, or its stored points and refused readings."""

    refused: Rejection | None = None
    stored: int = 0
    rejections: list[Rejection] = field(default_factory=list)


class IngestService:
    """One ingest worker. ``run()`` until ``stop()`` or cancelled; ``stats`` shows what it has done.

    The MQTT session is persistent (fixed client id, clean_session off), so
    the broker queues QoS 1 messages while the worker is away and delivers
    them when it returns. With ``mqtt.shared_group`` several workers share
    the subscription (pipelines/supervisor.py runs them); each needs its own
    client id (``mqtt.worker``), and none can judge gateways' gaps alone.
    """

    def __init__(self, settings: IngestSettings, *, retire: bool = False) -> None:
        self.settings = settings
        # Retiring: take what the broker queued for this worker's session, then discard the
        # session (a group run with fewer workers than it had; docs/ingest.md).
        self._retire = retire
        self._marker_topic = f"{RETIRE_TOPIC}/{settings.mqtt.session_id}"
        self._marker_tokens: set[str] = set()
        self._reminder: asyncio.Task[None] | None = None
        self._drained = False
        # This worker's subscription to its group is in the sessions' record.
        self._noted = False
        self.found_gone: bool | None = None
        """Retiring: whether the broker had no session at the first connect (None: not known)."""
        self.retired = False
        """Set once retiring is finished: queue taken, spool written, session discarded."""
        self.stats = IngestStats()
        self.connected = asyncio.Event()
        self.sequences = SequenceTracker(shared=settings.mqtt.shared_group is not None)
        # A shared group judges gaps together, from one ledger per host.
        self.ledger = (
            SequenceLedger(
                settings.sequences.path_for(settings.dead_letter.path),
                grace_s=settings.sequences.grace_s,
            )
            if settings.mqtt.shared_group is not None
            else None
        )
        validation = settings.validation
        self.quality = QualityChecker(validation.quality) if validation.quality.enabled else None
        self.checks = Checks(
            TimeWindow(validation.earliest_time, timedelta(seconds=validation.max_future_s)),
            SiteLimits(validation.sites),
            self.quality,
            {
                (site, gateway): frozenset(g.devices)
                for site, sv in validation.sites.items()
                for gateway, g in sv.gateways.items()
                if g.devices is not None
            },
        )
        self.acks: InOrderAcks | None = None
        self._stopping = asyncio.Event()
        self._session: MqttSession | None = None
        self._dead_letters = DeadLetterStore(settings.dead_letter.path)
        self._status_order = StatusOrder(settings.influx, self.checks.window)
        spool = settings.spool
        self._writer = InfluxWriter(
            settings.influx,
            settings.batch,
            self.stats,
            self._refused_by_influx,
            Spool(
                spool.path_for(settings.mqtt.worker, settings.dead_letter.path),
                max_bytes=int(spool.max_mb * 1_000_000),
            )
            if spool.enabled
            else None,
        )
        self._derive = Deriver.for_service(settings, self._writer)

    async def run(self, *, own_process: bool = False) -> None:
        """Consume until stopped; ``own_process``: the process is this worker's alone (the CLI),
        so its garbage collector may be tuned for the stream."""
        mqtt = self.settings.mqtt
        log.info(
            "ingest: MQTT %s:%d topics %s -> InfluxDB %s database %s; dead letters in %s",
            mqtt.host,
            mqtt.port,
            ", ".join(mqtt.subscriptions),
            self.settings.influx.url,
            self.settings.influx.database,
            self._dead_letters.path,
        )
        if mqtt.shared_group is not None:
            log.info(
                "ingest: worker %s of shared group %s: gateways' missing and repeated messages "
                "are judged group-wide in %s",
                mqtt.session_id,
                mqtt.shared_group,
                self.ledger.path if self.ledger is not None else None,
            )
        ledger = self.ledger if self.ledger is not None else contextlib.nullcontext()
        async with self._dead_letters, ledger, asyncio.TaskGroup() as tasks:
            helpers = []
            if self.ledger is not None:
                helpers.append(tasks.create_task(self.ledger.run()))
            # A retiring session's process has no API: its port is a worker's.
            if self.settings.api.enabled and not self._retire:
                # Imported here: FastAPI and uvicorn load only when the API is on.
                from pipelines.api_server import serve_api

                # Before the writer waits for InfluxDB: /healthz answers and /readyz names
                # the problem while it is away (a liveness probe must not kill the wait).
                helpers.append(tasks.create_task(serve_api(self)))
            async with self._writer, self._derive:
                # A writer that died stops the ingest (WriterFailed): restarted, never a zombie.
                helpers.append(tasks.create_task(self._writer.watch()))
                if self.quality is not None and self.settings.validation.quality.history_s > 0:
                    await load_quality_history(
                        self.quality,
                        self.settings.influx,
                        self.settings.validation.quality.history_s,
                    )
                helpers.append(tasks.create_task(self._log_stats()))
                if own_process:
                    _settle_heap()
                await self._consume()
                if self._drained:
                    await self._finish_retiring()
                # Stopped: everything received is durable and acknowledged. The helpers
                # use the writer: they end before it closes.
                for helper in helpers:
                    helper.cancel()

    def stop(self) -> None:
        """Stop gracefully: read no more messages, write and acknowledge those received,
        disconnect; ``run()`` then returns. Cancelling ``run()`` instead drops the unwritten
        ones unacknowledged (the broker redelivers them)."""
        self._stopping.set()
        if self._session is not None:
            self._session.stop_reading()

    @property
    def dead_letters(self) -> DeadLetterStore:
        return self._dead_letters

    @property
    def writer(self) -> InfluxWriter:
        return self._writer

    @property
    def derive(self) -> Deriver:
        return self._derive

    async def wait_idle(self) -> None:
        """Return once everything received so far is written or dead-lettered."""
        await self._writer.wait_idle()

    async def _consume(self) -> None:
        mqtt = self.settings.mqtt
        delay = 0.5
        proven = False
        while not self._stopping.is_set():
            try:
                session = await self._mqtt_session()
                async with session:
                    self._session = session
                    if self._stopping.is_set():
                        session.stop_reading()
                    # At-least-once: the broker keeps a message until its readings
                    # are in InfluxDB or in the dead-letter store.
                    acks = self.acks = InOrderAcks(
                        session.ack,
                        backlog=mqtt.max_unacked_messages,
                        on_backlog=self._writer.flush_soon,
                    )
                    if self._retire:
                        await self._start_retiring(session)
                    else:
                        # Subscribe on every connect: a consumer that reconnects
                        # but does not resubscribe is the commonest bug of the field.
                        for topic in mqtt.subscriptions:
                            await session.subscribe(topic, wire.QOS)
                        # What the session may hold from another role (a single ingest before,
                        # a group's shared statuses of an earlier version): not taken twice.
                        for topic in mqtt.every_form:
                            if topic not in mqtt.subscriptions:
                                await session.unsubscribe(topic)
                        # Left by a retirement stopped before its end: its markers stop.
                        await session.unsubscribe(self._marker_topic)
                        if mqtt.shared_group is not None and not self._noted:
                            # A session retiring from the group waits for one such as this.
                            await asyncio.to_thread(note_subscribed, self.settings)
                            self._noted = True
                    self.connected.set()
                    proven = True
                    delay = 0.5
                    log.info(
                        "ingest connected to %s:%d as %s", mqtt.host, mqtt.port, mqtt.session_id
                    )
                    while messages := await session.next_batch():
                        # All that one socket read brought, in one wakeup.
                        for topic, payload, mid, qos in messages:
                            if topic.startswith(_MARKER_PREFIX):
                                acks.ticket(mid, qos)()
                                self._marker(session, topic, payload)
                                continue
                            await self.handle(topic, payload, acks.ticket(mid, qos))
                        if acks.unacked >= mqtt.max_unacked_messages:
                            # The broker stops sending at its in-flight limit:
                            # write now rather than wait for the batch timer.
                            self._writer.flush_soon()
                    # stop(): the socket is no longer read. Write what was received
                    # now, and leave once every PUBACK is due (sent on the way out,
                    # before DISCONNECT).
                    if self._drained:
                        log.info(
                            "ingest: retiring session %s: its marker is back, so everything "
                            "queued for it is received; writing what is not yet written",
                            mqtt.session_id,
                        )
                    else:
                        log.info("ingest stopping: writing %d messages received", acks.unacked)
                    self._writer.drain_now()
                    await acks.all_done()
                    return
            except MqttRefused as exc:
                self.connected.clear()
                if not proven:
                    # Settings that never worked: retrying will not mend a wrong password
                    # or CA. Stop (ecotel-ingest exits 78); the broker keeps the queue.
                    raise
                # They worked in this run, so the broker's side changed: keep trying.
                log.error("ingest: %s; retrying in %.1f s", exc.setting(mqtt.username), delay)
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, max(mqtt.reconnect_max_s, 30.0))
            except MqttLinkError as exc:
                self.connected.clear()
                if self._stopping.is_set():
                    # Nothing left to acknowledge on a lost link: the broker redelivers.
                    return
                log.warning("ingest: broker link lost (%s); reconnecting in %.1f s", exc, delay)
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, mqtt.reconnect_max_s)
            finally:
                self._session = None
                if self._reminder is not None:
                    self._reminder.cancel()

    async def _mqtt_session(self, *, clean: bool = False) -> MqttSession:
        """A link for this worker's client id, with the configured credentials and TLS."""
        mqtt = self.settings.mqtt
        # File problems were reported at start (ecotel-ingest checks them before running).
        tls = await asyncio.to_thread(context_from, mqtt.tls, "ingest settings", section="mqtt")
        return MqttSession(
            mqtt.host,
            mqtt.port,
            mqtt.session_id,
            keepalive_s=mqtt.keepalive_s,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
            tls=tls,
            clean=clean,
        )

    async def _start_retiring(self, session: MqttSession) -> None:
        """Leave the group, then queue a marker behind what the broker holds for the session.
        Once this run's marker comes back, everything queued before it has been received."""
        mqtt = self.settings.mqtt
        if self.found_gone is None:
            # No session at the first connect: it had gone already (checked after a retirement,
            # in case the broker restored it from a save older than that).
            self.found_gone = not session.session_present
        waited = 0.0
        while not await asyncio.to_thread(group_has_subscriber, self.settings):
            # The group's first start: until one of its workers has subscribed, a message
            # published after this session left would meet no subscriber and be lost.
            if waited == _GROUP_WAIT_LOG_S:
                log.info(
                    "ingest: retiring session %s waits for a worker of group %s to subscribe",
                    mqtt.session_id,
                    mqtt.shared_group,
                )
            await asyncio.sleep(_GROUP_POLL_S)
            waited += _GROUP_POLL_S
        # Both forms: a worker's session has the shared filters, a single ingest's the plain
        # ones. From now on the broker queues nothing more for this session.
        for topic in mqtt.every_form:
            await session.unsubscribe(topic)
        await session.subscribe(self._marker_topic, wire.QOS)
        await self._send_marker(session)
        self._reminder = asyncio.create_task(self._remind(session), name="retire-reminder")
        log.info(
            "ingest: retiring session %s: unsubscribed, so that group %s gets every message; "
            "taking what the broker queued for it, then discarding it",
            mqtt.session_id,
            mqtt.shared_group,
        )

    async def _send_marker(self, session: MqttSession) -> None:
        token = uuid.uuid4().hex
        self._marker_tokens.add(token)
        await session.publish(self._marker_topic, token.encode())

    async def _remind(self, session: MqttSession) -> None:
        """While the marker does not come back: say so, and send another (a full queue or a
        broker's ACL may have dropped it, though the broker acknowledged it)."""
        while True:
            await asyncio.sleep(_MARKER_WARN_S)
            log.warning(
                "ingest: retiring: no marker back on %s after %.0f s more (%d messages taken); "
                "sending another. If the broker has ACLs, allow this user to publish and "
                "subscribe to %s/#. The session is kept meanwhile: nothing is lost",
                self._marker_topic,
                _MARKER_WARN_S,
                self.stats.messages,
                RETIRE_TOPIC,
            )
            try:
                await self._send_marker(session)
            except MqttLinkError:
                return  # the next connection sends its own

    def _marker(self, session: MqttSession, topic: str, payload: bytes) -> None:
        """A retirement's marker arrived: this run's means the session's queue is empty."""
        if topic == self._marker_topic and payload.decode(errors="replace") in self._marker_tokens:
            self._drained = True
            session.stop_reading()
            return
        # An earlier run's (more may follow it), or another session's seen through a filter.
        log.info("ingest: a retirement marker on %s, not this run's: skipped", topic)

    async def _finish_retiring(self) -> None:
        """Write the spool, give up the windows' hold, and discard the session at the broker."""
        mqtt = self.settings.mqtt
        if self._writer.spooled:
            log.info(
                "ingest: retiring session %s: writing its %d spooled points first",
                mqtt.session_id,
                self._writer.spooled,
            )
        await self._writer.wait_idle()
        await self._derive.let_go()
        delay = 0.5
        while True:
            try:
                # A clean CONNECT under its client id: the broker drops the session.
                async with await self._mqtt_session(clean=True):
                    break
            except MqttLinkError as exc:
                if self._stopping.is_set():
                    return
                log.warning("ingest: cannot discard the session yet (%s); retrying", exc)
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, mqtt.reconnect_max_s)
        self.retired = True
        log.info(
            "ingest: session %s retired: %d messages taken, every reading written; the "
            "broker no longer keeps it",
            mqtt.session_id,
            self.stats.messages,
        )

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    async def submit(self, topic: str, payload: bytes) -> Outcome:
        """Process one message as if it came from the broker; return once it is durable.

        The HTTP API's ingest: the same decoding, checks and dead letters as MQTT.
        """
        done, stored = _durable()
        outcome = await self.handle(topic, payload, done)
        await stored
        return outcome

    async def store_decoded(self, decoded: DecodedReadings, topic: str) -> None:
        """Write a replay's readings with their derived points; return once durable.

        The windows they touch are marked for recomputation, as for live readings.
        """
        done, stored = _durable()
        points = [
            Point(line, kind, topic)
            for line, kind in zip(decoded.lines, decoded.kinds, strict=True)
        ]
        await self._writer.put(*self._derive.stream(decoded, topic, points, done))
        await stored

    async def handle(self, topic: str, payload: bytes, done: Done = no_op) -> Outcome:
        """Process one MQTT message; ``done`` is called once it is durably stored or dead-lettered.

        Public so that tests and replays can feed messages directly.
        """
        self.stats.messages += 1
        if topic.endswith(("/status", "/health")):
            await self._handle_gateway(topic, payload, done)
            return Outcome()
        try:
            decoded = decode_readings(
                topic, payload, max_bytes=self.settings.mqtt.max_message_bytes, checks=self.checks
            )
        except MessageRejected as exc:
            await self._refuse_message(topic, payload, exc.rejection)
            done()
            return Outcome(refused=exc.rejection)
        done = self._track_sequence(decoded.site, decoded.gateway, decoded.seq, done)
        self.stats.received += len(decoded.lines) + len(decoded.rejections)
        if decoded.rejections:
            for r in decoded.rejections:
                self.stats.rejected_readings[r.reason] += 1
            first = decoded.rejections[0]
            log.warning(
                "rejected %d readings of %s seq %d, first: #%s %s: %s",
                len(decoded.rejections),
                topic,
                decoded.seq,
                first.reading_index,
                first.reason,
                first.detail,
            )
            await self._dead_letters.add_many(
                topic,
                [(r.reason, r.detail, r.reading_index, r.reading) for r in decoded.rejections],
            )
        # The readings as one chunk, not a Point each; derived measurements
        # (docs/analytics.md) beside them, windows marked once written.
        derived, done = self._derive.stream(decoded, topic, [], done)
        chunks = Chunk.group(derived)
        if decoded.lines:
            chunks.insert(0, Chunk.of(decoded.lines, decoded.kinds, topic))
        await self._writer.put_chunks(chunks, done)
        return Outcome(stored=len(decoded.lines), rejections=decoded.rejections)

    def _track_sequence(self, site: str, gateway: str, seq: int, done: Done) -> Done:
        """Count the number; ``done`` as it must be called (in a group, once the ledger has it)."""
        before = self.sequences.missing(site, gateway)
        seen = self.sequences.observe(site, gateway, seq)
        if seen is Seen.REPEAT:
            self.stats.repeated_messages += 1
        elif seen is Seen.GAP:
            log.warning(
                "gateway %s at %s: messages before seq %d missing (%d now)",
                gateway,
                site,
                seq,
                self.sequences.missing(site, gateway),
            )
        self.stats.missing_messages += self.sequences.missing(site, gateway) - before
        if self.ledger is not None:
            return self.ledger.record(site, gateway, seq, done)
        return done

    async def _refuse_message(self, topic: str, payload: bytes, rejection: Rejection) -> None:
        """Count, log and dead-letter a message refused whole."""
        self.stats.rejected_messages[rejection.reason] += 1
        log.warning("rejected message on %s: %s: %s", topic, rejection.reason, rejection.detail)
        await self._dead_letters.add_message(topic, payload, rejection.reason, rejection.detail)

    async def _handle_gateway(self, topic: str, payload: bytes, done: Done) -> None:
        received_at = datetime.now(UTC)
        try:
            message = parse_gateway_message(topic, payload)
        except MessageRejected as exc:
            await self._refuse_message(topic, payload, exc.rejection)
            done()
            return
        status_at = None
        if message.status is not None:
            self.stats.status_updates += 1
            status_at = await self._status_order.stamp(
                message.site, message.gateway, message.status, received_at
            )
        points = gateway_points(
            message, topic, received_at=received_at, status_at=status_at, window=self.checks.window
        )
        await self._writer.put(points, done)

    async def store_points(self, points: list[Point]) -> None:
        """Write a replayed status or health message's points; return once durable."""
        done, stored = _durable()
        await self._writer.put(points, done)
        await stored

    async def _refused_by_influx(self, points: list[Point], error: InfluxError) -> None:
        self.stats.rejected_readings["influx_refused"] += len(points)
        for point in points:
            await self._dead_letters.add_many(
                point.topic, [("influx_refused", str(error), None, point.line)]
            )

    def summary(self) -> str:
        """The counters in one line, saying when missing messages are not counted."""
        if self.ledger is not None:
            figures = self.ledger.view.values()
            self.stats.group_repeated_messages = sum(f.repeats for f in figures)
            self.stats.group_missing_messages = sum(f.missing for f in figures)
        summary = self.stats.summary()
        if self.settings.mqtt.shared_group is not None:
            summary += (
                " (shared subscription: missing_messages not counted per worker; group_* are "
                f"the whole group {self.settings.mqtt.shared_group}'s)"
            )
        return summary

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval_s)
            # summary() also brings the group's sequence figures into the stats.
            log.info("ingest: %s pending=%d", self.summary(), self._writer.pending)
            # Stored too, for the fleet dashboard: rate, rejections by reason, write latency.
            lines = stats_to_lines(self.settings.mqtt.session_id, self.stats, datetime.now(UTC))
            await self._writer.put(
                [Point(line, STATS_MEASUREMENT, "ingest/stats", reading=False) for line in lines]
            )


@dataclass(frozen=True)
class GatewayMessage:
    """A gateway's status or health message, checked."""

    site: str
    gateway: str
    status: wire.GatewayStatus | None = None
    health: wire.GatewayHealth | None = None


def parse_gateway_message(topic: str, payload: bytes) -> GatewayMessage:
    """A status or health message, or MessageRejected (``bad_status``, ``bad_health``): live
    messages and replayed dead letters take this one path."""
    if topic.endswith("/status"):
        try:
            site, gateway, _ = wire.parse_topic(topic)
            status = wire.GatewayStatus.model_validate_json(payload)
        except (wire.TopicError, ValidationError) as exc:
            raise MessageRejected("bad_status", str(exc)) from None
        return GatewayMessage(site, gateway, status=status)
    try:
        site, gateway, _ = wire.parse_topic(topic)
        health = wire.GatewayHealth.model_validate_json(payload)
        if (health.site, health.gateway) != (site, gateway):
            raise ValueError(f"payload speaks for {health.site}/{health.gateway}")
    except (wire.TopicError, ValidationError, ValueError) as exc:
        raise MessageRejected("bad_health", str(exc)) from None
    return GatewayMessage(site, gateway, health=health)


def gateway_points(
    message: GatewayMessage,
    topic: str,
    *,
    received_at: datetime,
    status_at: datetime | None,
    window: TimeWindow,
) -> list[Point]:
    """The points of a gateway's message. ``status_at`` stamps a status (StatusOrder); without
    it, its own time or arrival. A health report has its own time while the gateway trusts its
    clock and ``window`` takes it, else its arrival: a report of an unset clock stamped 1970
    would fall outside every panel's range, the very report that says the clock is wrong."""
    site, gateway = message.site, message.gateway
    if message.status is not None:
        at = status_at or message.status.at or received_at
        line = status_to_line(site, gateway, message.status, at=at)
        return [Point(line, STATUS_MEASUREMENT, topic, reading=False)]
    health = message.health
    assert health is not None
    trusted = health.clock_state == "ok" and window.problem_at(health.at, None, received_at) is None
    return [
        Point(line, HEALTH_MEASUREMENT, topic, reading=False)
        for line in health_to_lines(site, gateway, health, at=health.at if trusted else received_at)
    ]


def _settle_heap() -> None:
    """Keep the garbage collector off the long-lived heap and out of the per-message path.

    What start-up built (modules, FastAPI's schemas, settings) never becomes garbage:
    frozen, a full collection no longer walks it. A first-generation collection every
    700 allocations ran several times per message of 50 readings; every 20,000 keeps
    young garbage bounded and cost ~1 us less per reading at batch 50 (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _durable() -> tuple[Done, "asyncio.Future[None]"]:
    """A ``done`` callback and the future it resolves."""
    stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done() -> None:
        if not stored.done():
            stored.set_result(None)

    return done, stored
