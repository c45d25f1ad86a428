"""The gateway runtime: poll every device on its schedule, keep every reading on disk, publish over MQTT."""

import asyncio
import contextlib
import errno
import logging
import math
import os
import shutil
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from collector import wire
from collector.broker_link import (
    make_client,
    misconfiguration,
    settings_fingerprint,
    tls_context,
)
from collector.clock import Anchor, ClockGuard, WallClock, read_boot_id
from collector.config import DeviceSettings, GatewaySettings
from collector.health import START, read_host_health
from collector.outbox import DiskFull, Lane, Outbox, OutgoingMessage
from collector.sources import ReadingSource, open_source
from devices import Reading

log = logging.getLogger("ecotel.gateway")

_IN_FLIGHT = 8
"""Most messages published and not yet acknowledged at once (paho allows 20)."""
# How often the outbox's budget is fitted to the free space again.
_BUDGET_CHECK_S = 10.0
# Kept aside beside the outbox while there is room (at most a quarter of the free space),
# and deleted when a disk that something else filled leaves no room to send.
_RESERVE_BYTES = 8_000_000
_RESERVE_MIN_BYTES = 256_000


def _raise_failure(sending: set[asyncio.Task[None]]) -> None:
    """Forget the sends that are done; re-raise the first that failed (a lost link)."""
    for task in [t for t in sending if t.done()]:
        sending.discard(task)
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure


class BrokerRefused(Exception):
    """The broker refused the gateway's credentials or certificate at its first connection."""


@dataclass
class GatewayStats:
    """What the gateway has done since it started; read by the stack's progress display."""

    polled: int = 0
    published: int = 0
    messages: int = 0
    dropped: int = 0
    reconnects: int = 0
    device_errors: Counter[str] = field(default_factory=Counter)
    connected: bool = False


class Gateway:
    """One field gateway: a poller per device, a committer to the outbox, one MQTT publisher.

    A reading is committed to the outbox (collector/outbox.py) before it can be
    published, and leaves it only when the broker has acknowledged its message
    (QoS 1 PUBACK). Readings stored while the broker was away are the backlog:
    it drains oldest first at ``backlog_readings_per_s`` while live readings
    go out as they come, so a returning station neither floods the broker nor
    starves its live data.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        source: str = "gateway configuration",
        wall_clock: WallClock | None = None,
    ) -> None:
        self.settings = settings
        self.clock = ClockGuard(
            settings.clock.earliest_valid, settings.clock.jump_threshold_s, wall=wall_clock
        )
        self._wall = wall_clock or WallClock()
        self._source = source
        self._tls: ssl.SSLContext | None = None
        self._fingerprint = 0
        self._settings_proven = False
        self._refused: str | None = None
        self.stats = GatewayStats()
        ident = settings.gateway
        self._topic = wire.readings_topic(ident.site, ident.id)
        self._status_topic = wire.status_topic(ident.site, ident.id)
        self.outbox = Outbox(
            ident.state_dir / f"{ident.id}.outbox.sqlite3",
            max_bytes=int(ident.outbox_max_mb * 1_000_000),
            policy=ident.outbox_full_policy,
            boot_id=read_boot_id(),
        )
        self._taken: list[Reading] = []
        self._taken_mono: list[float | None] = []
        self._committed = asyncio.Event()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once the outbox is open: from then on every reading taken is kept."""
        self._budget_capped = False
        self._journal_limited = False
        self._polling_done = asyncio.Event()
        self._all_committed = asyncio.Event()
        self._last_drop_log = -math.inf
        # Backlog token bucket (readings) and when live readings began to wait.
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._live_since: float | None = None

    def stop(self) -> None:
        """Ask the gateway to stop polling, flush what it holds and go offline."""
        self._stop.set()
        self._committed.set()

    @property
    def pending(self) -> int:
        """Readings taken but not yet acknowledged by the broker (in memory or on disk)."""
        return len(self._taken) + self.outbox.pending

    async def run(self, *, drain_timeout_s: float = 10.0) -> None:
        """Run until stop() (or cancellation); then publish what is left for ``drain_timeout_s``.

        Whatever is not published by then stays in the outbox for the next start.
        """
        # Certificates are read now, so a bad file fails at start and names its setting.
        self._tls = await asyncio.to_thread(tls_context, self.settings.broker, self._source)
        self._fingerprint = await asyncio.to_thread(settings_fingerprint, self.settings.broker)
        sources = {d.id: open_source(d) for d in self.settings.devices}
        ident = self.settings.gateway
        async with self.outbox:
            log.info(
                "gateway %s at %s: %d devices, broker %s:%d, %d readings waiting in %s",
                ident.id,
                ident.site,
                len(sources),
                self.settings.broker.host,
                self.settings.broker.port,
                self.outbox.pending,
                self.outbox.path,
            )
            await self._fit_budget_to_disk()
            self.ready.set()
            async with asyncio.TaskGroup() as tasks:
                pollers = [
                    tasks.create_task(self._poll(d, sources[d.id])) for d in self.settings.devices
                ]
                committer = tasks.create_task(self._commit_until_stopped())
                clock_watch = tasks.create_task(self._watch_clock())
                budget_watch = tasks.create_task(self._refit_budget())
                publisher = tasks.create_task(self._publish_until_stopped())
                await self._stop.wait()
                await asyncio.gather(*pollers)
                # Only now is nothing more being taken: the last group can be committed.
                self._polling_done.set()
                await committer
                clock_watch.cancel()
                budget_watch.cancel()
                for source in sources.values():
                    await source.close()
                if self.outbox.pending:
                    # Otherwise a stop with the link down looks like a hang for drain_timeout_s.
                    log.info(
                        "gateway %s stopping: publishing %d readings from the outbox (up to "
                        "%g s; the rest stays there for the next start)",
                        ident.id,
                        self.outbox.pending,
                        drain_timeout_s,
                    )
                try:
                    async with asyncio.timeout(drain_timeout_s):
                        await asyncio.shield(publisher)
                except TimeoutError:
                    publisher.cancel()
                    log.warning(
                        "gateway %s stopped with %d readings kept in the outbox",
                        ident.id,
                        self.outbox.pending,
                    )
            # Every reading taken is accounted for: sent, still kept, or dropped and counted.
            log.info(
                "gateway %s stopped: %d readings taken, %d published, %d dropped since start "
                "(%d in all); %d kept in %s",
                ident.id,
                self.stats.polled,
                self.stats.published,
                self.stats.dropped,
                self.outbox.dropped,
                self.outbox.pending,
                self.outbox.path,
            )
        if self._refused is not None:
            raise BrokerRefused(self._refused)

    async def _fit_budget_to_disk(self) -> None:
        """A budget larger than the disk would fill it: then the outbox keeps a third of the free space.

        A full disk leaves no room even to send (each message is written to the outbox
        before it goes), so the budget's policy must act before that; the rest is for
        SQLite's page overhead, its journal and the messages in flight. Checked again every
        _BUDGET_CHECK_S: once space is freed the configured budget applies again, or the
        policy would go on dropping readings the disk now has room for."""
        ident = self.settings.gateway
        configured = int(ident.outbox_max_mb * 1_000_000)
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, ident.state_dir)).free
        except OSError:
            return
        free = await self._keep_reserve(free)
        # The file takes up to 1.5 times the readings' JSON (small readings, SQLite's pages).
        room = min(configured, self.outbox.pending_bytes + free // 3)
        if free // 8 < 4_000_000 and not self._journal_limited:
            await self.outbox.limit_journal(free // 8)
            self._journal_limited = True
        capped = room < configured
        if capped and not self._budget_capped:
            log.warning(
                "gateway %s: gateway.outbox_max_mb = %g MB does not fit on %s (%.1f MB free): "
                "the outbox keeps at most %.1f MB (policy %s) until there is room; free space "
                "or lower it",
                ident.id,
                ident.outbox_max_mb,
                ident.state_dir,
                free / 1e6,
                room / 1e6,
                ident.outbox_full_policy,
            )
        elif self._budget_capped and not capped:
            log.info(
                "gateway %s: %.1f MB free on %s: the outbox's budget is gateway.outbox_max_mb "
                "(%g MB) again",
                ident.id,
                free / 1e6,
                ident.state_dir,
                ident.outbox_max_mb,
            )
        self._budget_capped = capped
        self.outbox.max_bytes = room

    @property
    def _reserve_path(self) -> Path:
        return self.outbox.path.with_name(f"{self.outbox.path.name}.reserve")

    async def _keep_reserve(self, free: int) -> int:
        """Make the reserve file if it is missing and there is room; the free space left.

        Sending writes each message to the outbox first, and SQLite's write-ahead log cannot
        grow on a full disk: a disk that something else filled would stop the drain that
        frees room. Deleting the reserve then lets the backlog go (and its pages be reused)."""
        path = self._reserve_path
        size = min(_RESERVE_BYTES, free // 4)
        if size < _RESERVE_MIN_BYTES or await asyncio.to_thread(path.exists):
            return free
        try:
            await asyncio.to_thread(_allocate, path, size)
        except OSError as exc:
            log.warning(
                "gateway %s: cannot keep a reserve in %s: %s", self.settings.gateway.id, path, exc
            )
            return free
        return free - size

    async def _release_reserve(self) -> bool:
        """Delete the reserve (the disk is full and nothing can be sent); False if none."""
        path = self._reserve_path
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        log.warning(
            "gateway %s: disk full: deleted the reserve %s (%.1f MB) so that the backlog can be "
            "sent; it is made again once there is room",
            self.settings.gateway.id,
            path,
            size / 1e6,
        )
        return True

    async def _refit_budget(self) -> None:
        while True:
            await asyncio.sleep(_BUDGET_CHECK_S)
            await self._fit_budget_to_disk()

    async def _poll(self, device: DeviceSettings, source: ReadingSource) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        failing = 0
        while not self._stop.is_set():
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow
            # a cancellation that races its timeout, leaving the task unkillable.
            stamp = self.clock.stamp()
            try:
                async with asyncio.timeout(device.interval_s):
                    readings = await source.read(stamp.time)
            except Exception as exc:
                self.stats.device_errors[device.id] += 1
                failing += 1
                # The first failure, then every 60th: a device dead for days must
                # not drown the journal, and its count is in every health report.
                if failing % 60 == 1:
                    log.warning("device %s: poll failed (%d in a row): %s", device.id, failing, exc)
            else:
                if failing:
                    log.info("device %s answers again after %d failed polls", device.id, failing)
                    failing = 0
                self.stats.polled += len(readings)
                if not stamp.trusted:
                    readings = [r.model_copy(update={"clock": "unsynced"}) for r in readings]
                self._taken.extend(readings)
                self._taken_mono.extend([None if stamp.trusted else stamp.mono] * len(readings))
            # A fixed grid, not sleep(interval): a slow read must not make the
            # schedule drift, and missed ticks are skipped, not bunched.
            tick = max(tick + 1, math.ceil((loop.time() - start) / device.interval_s))
            delay = start + tick * device.interval_s - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0)):
                    await self._stop.wait()

    async def _commit_until_stopped(self) -> None:
        # Group commit: one fsync per interval instead of one per poll.
        interval = self.settings.gateway.commit_interval_s
        while True:
            last = self._polling_done.is_set()
            if self._taken:
                taken, self._taken = self._taken, []
                monos, self._taken_mono = self._taken_mono, []
                try:
                    dropped = await self.outbox.add(taken, monos)
                except DiskFull as full:
                    # Not fatal: the publisher deletes what the broker acknowledges, and
                    # a later group fits again. Stopping would lose every poll meanwhile.
                    await self._report_drop(full.dropped, full)
                else:
                    if dropped:
                        await self._report_drop(dropped)
                self._committed.set()
            if last:
                self._all_committed.set()
                self._committed.set()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._polling_done.wait()

    async def _report_drop(self, dropped: int, full: DiskFull | None = None) -> None:
        self.stats.dropped += dropped
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            # Once per 10 s at most: a full outbox drops on every commit.
            self._last_drop_log = now
            ident = self.settings.gateway
            if full is not None:
                log.error(
                    "gateway %s: no room on disk for %s (%s; %s): %d readings dropped since "
                    "start, %d in all; still running, sending the backlog frees room",
                    ident.id,
                    self.outbox.path,
                    full.cause,
                    await self._free_space(),
                    self.stats.dropped,
                    self.outbox.dropped,
                )
                return
            log.error(
                "gateway %s: outbox at its budget of %g MB, policy %s: %d readings dropped "
                "since start, %d in all",
                ident.id,
                self.outbox.max_bytes / 1e6,
                ident.outbox_full_policy,
                self.stats.dropped,
                self.outbox.dropped,
            )

    async def _free_space(self) -> str:
        where = self.settings.gateway.state_dir
        try:
            usage = await asyncio.to_thread(shutil.disk_usage, where)
        except OSError as exc:
            return f"free space of {where} unknown: {exc}"
        return f"{usage.free / 1e6:.1f} MB free on {where}"

    async def _publish_until_stopped(self) -> None:
        broker = self.settings.broker
        delay = full_delay = 0.5
        connected_at = 0.0
        while True:
            try:
                async with self._client() as client:
                    self.stats.connected = True
                    if not self._settings_proven:
                        self._settings_proven = True
                        try:
                            await self.outbox.remember("broker_settings_ok", self._fingerprint)
                        except DiskFull as full:
                            # Only the next start's exit 78 depends on it: written next time.
                            log.warning(
                                "gateway %s: cannot record that these broker settings work: %s",
                                self.settings.gateway.id,
                                full,
                            )
                    delay = 0.5
                    connected_at = asyncio.get_running_loop().time()
                    await self._announce(client, "online", "connected")
                    self.outbox.mark_live()
                    log.info(
                        "gateway %s connected to %s:%d, %d readings to send",
                        self.settings.gateway.id,
                        broker.host,
                        broker.port,
                        self.outbox.pending,
                    )
                    watchers = [
                        asyncio.create_task(self._publish_health(client)),
                        asyncio.create_task(self._watch_progress()),
                    ]
                    try:
                        await self._publish_batches(client)
                    finally:
                        for watcher in watchers:
                            watcher.cancel()
                        await asyncio.gather(*watchers, return_exceptions=True)
                    await self._announce(client, "offline", "shutdown")
                    return
            except DiskFull as full:
                # Reserving or acknowledging a message found no room. What is in flight
                # goes again from the outbox after a reconnect (a repeated seq, no loss).
                # Its own backoff: a connect that works resets ``delay``, and on a disk that
                # stays full every connect does. A minute of sending without it starts it over.
                self.stats.connected = False
                if await self._release_reserve():
                    continue  # room to send again: at once
                if asyncio.get_running_loop().time() - connected_at > 60:
                    full_delay = 0.5
                log.error(
                    "gateway %s: no room on disk to send from %s (%s; %s); retrying in %.1f s",
                    self.settings.gateway.id,
                    self.outbox.path,
                    full.cause,
                    await self._free_space(),
                    full_delay,
                )
                await asyncio.sleep(full_delay)
                full_delay = min(full_delay * 2, broker.reconnect_max_s)
            except aiomqtt.MqttError as exc:
                self.stats.connected = False
                self.stats.reconnects += 1
                problem = misconfiguration(exc, broker)
                if problem is not None and not await self._proven():
                    # Settings that never worked: retrying will not fix a wrong password
                    # or certificate. Stop and say so; what was taken stays in the outbox.
                    log.error("gateway %s: %s: %s", self.settings.gateway.id, self._source, problem)
                    self._refused = f"{self._source}: {problem}"
                    self.stop()
                    return
                if problem is not None:
                    # These very settings worked before, so the broker's side changed
                    # (rotated password?): an unattended station keeps collecting.
                    log.error("gateway %s: %s; retrying", self.settings.gateway.id, problem)
                log.warning(
                    "gateway %s: broker link lost (%s); retrying in %.1f s, %d pending",
                    self.settings.gateway.id,
                    exc,
                    delay,
                    self.pending,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, broker.reconnect_max_s)
            finally:
                self.stats.connected = False

    async def _watch_progress(self) -> None:
        """Warn once per spell when the link is up, readings wait and no message has been
        acknowledged for ``gateway.stall_warn_s``; say when sending resumes. A station that
        sends nothing must not be silent about it."""
        stall_s = self.settings.gateway.stall_warn_s
        loop = asyncio.get_running_loop()
        acknowledged, since, stalled = self.stats.messages, loop.time(), False
        while True:
            await asyncio.sleep(min(stall_s / 4, 10.0))
            if self.stats.messages != acknowledged:
                if stalled:
                    log.info(
                        "gateway %s: sending again after %.0f s",
                        self.settings.gateway.id,
                        loop.time() - since,
                    )
                acknowledged, since, stalled = self.stats.messages, loop.time(), False
                continue
            waiting = self.outbox.pending - self.outbox.held
            if stalled or waiting <= 0:
                since = since if waiting > 0 else loop.time()
                continue
            if loop.time() - since >= stall_s:
                stalled = True
                live, backlog = await self.outbox.lanes()
                in_flight = sorted(self.outbox.sending_seqs())
                log.warning(
                    "gateway %s: connected but no message acknowledged for %.0f s with %d "
                    "readings waiting (live %d, backlog %d, held for the clock %d); in flight: "
                    "%s; the broker may be stalled or refusing the messages (its log says)",
                    self.settings.gateway.id,
                    loop.time() - since,
                    waiting,
                    live,
                    backlog,
                    self.outbox.held,
                    ", ".join(f"seq {seq}" for seq in in_flight) or "none",
                )

    async def _watch_clock(self) -> None:
        # Held readings are corrected against the latest trusted pair of clocks,
        # checked every time: a group committed after the clock was set is caught too.
        held_full = False  # said once per spell of a full disk, not every check
        while True:
            self.clock.check()
            if self.clock.trusted and self.outbox.held:
                wall, mono = self._wall.read()
                try:
                    corrected = await self.outbox.correct_held(Anchor(wall, mono))
                except DiskFull as full:
                    # Corrected bodies are longer; they stay held and are tried again.
                    if not held_full:
                        log.warning(
                            "gateway %s: cannot correct held readings yet: %s",
                            self.settings.gateway.id,
                            full,
                        )
                    held_full, corrected = True, 0
                else:
                    held_full = False
                if corrected:
                    log.info(
                        "gateway %s: %d readings taken before the clock was set got their "
                        "time from the monotonic clock",
                        self.settings.gateway.id,
                        corrected,
                    )
                    self._committed.set()
            await asyncio.sleep(self.settings.clock.check_interval_s)

    async def _proven(self) -> bool:
        if not self._settings_proven:
            stored = await self.outbox.remembered("broker_settings_ok")
            self._settings_proven = stored == self._fingerprint
        return self._settings_proven

    async def _publish_health(self, client: aiomqtt.Client) -> None:
        ident = self.settings.gateway
        topic = wire.health_topic(ident.site, ident.id)
        while True:
            host = await asyncio.to_thread(read_host_health, ident.state_dir)
            oldest = await self.outbox.oldest_taken_at()
            now = datetime.now(UTC)
            report = wire.GatewayHealth(
                gateway=ident.id,
                site=ident.site,
                at=now,
                uptime_s=time.monotonic() - START,
                cpu_temperature_c=host.cpu_temperature_c,
                load_1m=host.load_1m,
                memory_available_mb=host.memory_available_mb,
                disk_free_mb=host.disk_free_mb,
                outbox_readings=self.outbox.pending,
                outbox_bytes=self.outbox.pending_bytes,
                oldest_unsent_age_s=(now - oldest).total_seconds() if oldest else None,
                link_up=self.stats.connected,
                reconnects=self.stats.reconnects,
                dropped_total=self.outbox.dropped,
                device_errors=dict(self.stats.device_errors),
                clock_state=self.clock.state,
                clock_jumps=self.clock.jumps,
                readings_held=self.outbox.held,
            )
            await client.publish(topic, report.encode(), qos=wire.QOS)
            await asyncio.sleep(ident.health_interval_s)

    def _client(self) -> aiomqtt.Client:
        ident = self.settings.gateway
        will = wire.GatewayStatus(
            gateway=ident.id, site=ident.site, state="offline", reason="connection_lost"
        )
        return make_client(
            self.settings.broker,
            client_id=self.settings.client_id,
            will=aiomqtt.Will(self._status_topic, will.encode(), qos=wire.QOS, retain=True),
            context=self._tls,
        )

    async def _announce(self, client: aiomqtt.Client, state: str, reason: str) -> None:
        ident = self.settings.gateway
        message = wire.GatewayStatus.model_validate(
            {
                "gateway": ident.id,
                "site": ident.site,
                "state": state,
                "reason": reason,
                "at": datetime.now(UTC),
            }
        )
        await client.publish(self._status_topic, message.encode(), qos=wire.QOS, retain=True)

    async def _publish_batches(self, client: aiomqtt.Client) -> None:
        # Messages reserved before a crash or a lost link go first, with the same
        # seq and bytes (the broker may have had them), and are acknowledged
        # before anything new is reserved.
        sending = {
            asyncio.create_task(self._send(client, m))
            for m in await self.outbox.inflight_messages()
        }
        try:
            while sending:
                await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
                _raise_failure(sending)
            # Several messages wait for their PUBACK at once: one at a time, a fast
            # drain spends most of its time waiting for round trips. About a second
            # of the backlog rate, so that on a link just fast enough for that rate
            # no PUBACK waits longer than the client's timeout (10 s) in the queue.
            ident = self.settings.gateway
            window = math.ceil(ident.backlog_readings_per_s / ident.batch_max_readings)
            window = max(1, min(_IN_FLIGHT, window))
            while True:
                _raise_failure(sending)
                if len(sending) >= window:
                    await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
                    continue
                message = await self._next_message()
                if message is not None:
                    sending.add(asyncio.create_task(self._send(client, message)))
                    continue
                if self._all_committed.is_set() and not self.outbox.pending:
                    return
                self._committed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._committed.wait()
        finally:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def _send(self, client: aiomqtt.Client, message: OutgoingMessage) -> None:
        await client.publish(self._topic, message.payload, qos=wire.QOS)
        # Shielded: once the broker has it, a cancelled publisher must not leave
        # the acknowledgement half written.
        await asyncio.shield(self.outbox.acknowledged(message))
        self.stats.messages += 1
        self.stats.published += len(message.ids)

    async def _next_message(self) -> OutgoingMessage | None:
        """Live readings first, in full batches or once the oldest has waited long enough;
        the backlog as the token bucket allows."""
        ident = self.settings.gateway
        now = time.monotonic()
        rate = ident.backlog_readings_per_s
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        live, backlog = await self.outbox.lanes()
        if not live:
            self._live_since = None
        elif self._live_since is None:
            self._live_since = now
        lane: Lane | None = None
        limit = ident.batch_max_readings
        if live and (
            live >= ident.batch_max_readings
            or self._stop.is_set()
            or now - (self._live_since or now) >= ident.batch_max_delay_s
        ):
            lane = "live"
        elif backlog and self._tokens >= 1:
            # A batch as large as the bucket allows: at most a second's worth.
            lane, limit = "backlog", min(limit, int(self._tokens))
        if lane is None:
            return None
        message = await self.outbox.reserve(lane, limit, ident.id, ident.site, datetime.now(UTC))
        if message is not None and lane == "backlog":
            self._tokens -= len(message.ids)
        if lane == "live":
            self._live_since = None
        return message


def _allocate(path: Path, size: int) -> None:
    """A file of ``size`` bytes that really takes them on disk (not sparse)."""
    with path.open("wb") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            file.write(bytes(size))
