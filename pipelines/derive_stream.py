"""Derived measurements in the ingest's stream: per-reading points beside the raw ones, and
a recomputer for the windows the written readings touched (docs/analytics.md)."""

import asyncio
import glob
import logging
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from pipelines.analytics.energy import Window
from pipelines.config import IngestSettings
from pipelines.decode import DecodedReadings
from pipelines.derive_config import DeriveSettings
from pipelines.derive_points import SOURCE_KINDS, derived_line
from pipelines.derive_range import rewrite_window
from pipelines.derive_state import DirtyWindows, WindowKey
from pipelines.derive_windows import WindowDeriver, keys_for_reading, window_kinds
from pipelines.influx_writer import Done, InfluxError, InfluxWriter
from pipelines.points import Point

log = logging.getLogger("ecotel.ingest.derive")

_TICK_S = 0.5
_RETRY_S = 2.0
_HOLD_WARN_S = 60.0


class Deriver:
    """The ingest's hook: ``stream`` adds derived points to a message's batch and defers its
    acknowledgement until the windows it touched are durably marked for recomputation."""

    def __init__(
        self,
        settings: DeriveSettings,
        ingest: IngestSettings,
        writer: InfluxWriter,
        state: Path,
        *,
        absorb: str | None = None,
    ) -> None:
        self.settings = settings
        self.windows = WindowDeriver(settings, ingest.influx)
        self._writer = writer
        # More than two full batches waiting: the writer is not keeping up (a backlog).
        self._behind_points = 2 * ingest.batch.max_points
        self._state = DirtyWindows(state)
        # Files of this host's workers from before a group shared one (glob beside ``state``).
        self._absorb = absorb
        # Its name in the file's holds while its raw points wait in its spool.
        self._holder = ingest.mqtt.session_id
        self._holding = False
        # A hold left by a killed run of this worker: released once its spool is empty.
        self._stale_hold = True
        # Deciding to hold or release and writing it to the file, as one step.
        self._hold_lock = asyncio.Lock()
        self._holds_checked = 0.0
        self._window_kinds = window_kinds(settings)
        self._written: list[tuple[set[WindowKey], Done]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.recomputed = 0
        self.failures = 0

    @classmethod
    def for_service(cls, settings: IngestSettings, writer: InfluxWriter) -> Self:
        derive, worker = settings.derive, settings.mqtt.worker
        if settings.mqtt.shared_group is None or worker is None:
            return cls(
                derive, settings, writer, derive.state_for(worker, settings.dead_letter.path)
            )
        # A shared group's workers mark windows in one file and claim those they recompute:
        # each window is then recomputed once, not once per worker. Workers' own files
        # from before are taken over.
        shared = derive.state_for(None, settings.dead_letter.path)
        absorb = f"{glob.escape(shared.stem)}-worker*{glob.escape(shared.suffix)}"
        return cls(derive, settings, writer, shared, absorb=absorb)

    async def __aenter__(self) -> Self:
        if self.settings.enabled:
            await self._state.__aenter__()
            try:
                pending = await self._take_over()
            except BaseException:
                # The file's SQLite thread is not a daemon: left open, it would keep a worker
                # that failed at start alive (never restarted by its supervisor).
                await self._state.__aexit__(None, None, None)
                raise
            if pending:
                log.info(
                    "derive: %d windows marked before the last stop wait for recomputation", pending
                )
            self._tasks = [
                asyncio.create_task(self._commit_marks(), name="derive-marks"),
                asyncio.create_task(self._recompute(), name="derive-recompute"),
            ]
        return self

    async def _take_over(self) -> int:
        """Absorb the old per-worker files; the number of windows marked."""
        if self._absorb is not None:
            folder, pattern = self._state.path.parent, self._absorb
            for old in await asyncio.to_thread(lambda: sorted(folder.glob(pattern))):
                taken = await self._state.absorb(old)
                log.info("derive: %d marked windows taken over from %s", taken, old)
        return await self._state.count()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.enabled:
            await self._state.__aexit__(None, None, None)

    def stream(
        self, decoded: DecodedReadings, topic: str, points: list[Point], done: Done
    ) -> tuple[list[Point], Done]:
        """The message's points plus its derived ones, and the ``done`` to give the writer."""
        if not self.settings.enabled:
            return points, done
        site, gateway = decoded.site, decoded.gateway
        keys: set[WindowKey] = set()
        last: tuple[str, str, datetime] | None = None
        thresholds = self.settings.congestion
        window_kinds = self._window_kinds
        for reading in decoded.readings:
            kind = reading.kind
            # Most kinds derive nothing: ask only those that do (~1 us per reading saved).
            measurement = SOURCE_KINDS.get(kind)
            if measurement is not None:
                line = derived_line(
                    site=site,
                    gateway=gateway,
                    device=reading.device,
                    channel=reading.channel,
                    time=reading.time,
                    values=reading.typed_values(),
                    thresholds=thresholds,
                )
                if line is not None:
                    points.append(Point(line, measurement, topic, reading=False))
            if kind not in window_kinds:
                continue
            # The channels of one device share its time: their windows once.
            touched = (kind, reading.device, reading.time)
            if touched != last:
                keys |= keys_for_reading(self.settings, site, *touched)
                last = touched
        if not keys:
            return points, done

        def written() -> None:
            # Raw points are in InfluxDB now: mark, then acknowledge (in _commit_marks).
            self._written.append((keys, done))
            self._wake.set()

        return points, written

    async def mark(self, keys: set[WindowKey]) -> None:
        """Mark windows whose raw readings were written outside ``stream`` (a replayed point)."""
        if self.settings.enabled:
            await self._state.mark(keys)

    async def let_go(self) -> None:
        """Release this worker's hold on the windows now (its spool is empty and it is
        retiring: no later run of it would release the hold)."""
        if not self.settings.enabled:
            return
        async with self._hold_lock:
            if self._writer.spooled:
                raise RuntimeError("points wait in the spool: the hold must stay")
            await self._state.release(self._holder)
            self._holding = self._stale_hold = False

    async def _commit_marks(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._written = self._written, []
            keys: set[WindowKey] = set().union(*(k for k, _ in batch))
            while True:
                try:
                    async with self._hold_lock:
                        if self._writer.spooled:
                            # Points wait in the spool: no worker may compute windows yet.
                            self._holding = True
                        await self._state.mark(keys, hold=self._holder if self._holding else None)
                    break
                except Exception:  # a disk problem: hold the acks and retry
                    log.exception("derive: cannot mark windows in %s; retrying", self._state.path)
                    await asyncio.sleep(_RETRY_S)
            for _, done in batch:
                done()

    async def _recompute(self) -> None:
        delays = {w: self.settings.delays.of(w) for w in Window}
        while True:
            await asyncio.sleep(_TICK_S)
            # Raw readings still in the spool are not in InfluxDB yet: wait for them.
            if self._writer.spooled:
                continue
            try:
                async with self._hold_lock:
                    if (self._holding or self._stale_hold) and not self._writer.spooled:
                        await self._state.release(self._holder)
                        self._holding = self._stale_hold = False
                # While behind, only windows past their ceiling: the backlog's later readings
                # would touch the others again and the query load slows the catch-up.
                while (
                    claimed := await self._state.claim(
                        delays, held=self._writer.pending > self._behind_points
                    )
                ) is not None:
                    key, version = claimed
                    try:
                        await self.recompute(key)
                    except (InfluxError, httpx.HTTPError):
                        await self._state.defer(key)
                        raise
                    except Exception:
                        # A rule that cannot take this window's data must not stop the
                        # others: say which window, and try it again after its delay.
                        log.exception("derive: cannot recompute %s; retrying later", key)
                        self.failures += 1
                        await self._state.defer(key)
                        continue
                    await self._state.clear(key, version)
                await self._warn_of_old_holds()
            except (InfluxError, httpx.HTTPError) as exc:
                log.warning("derive: recomputation waits for InfluxDB (%s)", exc)
                await asyncio.sleep(_RETRY_S)
            except sqlite3.Error as exc:  # locked beyond the busy timeout, a full disk
                log.warning("derive: recomputation waits for %s (%s)", self._state.path, exc)
                await asyncio.sleep(_RETRY_S)

    async def _warn_of_old_holds(self) -> None:
        """Once a minute: say which other workers' spools keep the windows waiting, if long."""
        now = time.time()
        if now - self._holds_checked < _HOLD_WARN_S:
            return
        self._holds_checked = now
        old = {
            holder: since
            for holder, since in (await self._state.holders()).items()
            if holder != self._holder and now - since > _HOLD_WARN_S
        }
        for holder, since in sorted(old.items()):
            log.warning(
                "derive: windows wait for %s's spooled points (held for %.0f s); if that worker "
                "no longer runs, start it once to write them (a hold left otherwise: "
                "DELETE FROM holds WHERE holder = '%s' in %s)",
                holder,
                now - since,
                holder,
                self._state.path,
            )

    async def recompute_marked(self) -> int:
        """Recompute every marked window now, whatever its delay; the number recomputed.

        A one-shot command's last step (``dead-letters replay``): nobody may be left to wait.
        It claims windows as the ingest's workers do, so none is recomputed by both, and
        none while a worker's points wait in its spool. A window that cannot be recomputed
        stays marked for the ingest, and is logged.
        """
        if not self.settings.enabled:
            return 0
        count = 0
        tried: set[WindowKey] = set()
        now = dict.fromkeys(Window, timedelta(0))
        while (claimed := await self._state.claim(now)) is not None:
            key, version = claimed
            if key in tried:  # failed once already: left to the ingest
                await self._state.defer(key)
                break
            tried.add(key)
            try:
                await self.recompute(key)
            except Exception:
                log.exception("derive: cannot recompute %s; it stays marked", key)
                self.failures += 1
                await self._state.defer(key)
                continue
            await self._state.clear(key, version)
            count += 1
        left = await self._state.holders()
        if left:
            log.warning(
                "derive: windows wait for the spools of %s; the ingest recomputes them",
                ", ".join(sorted(left)),
            )
        return count

    async def recompute(self, key: WindowKey) -> None:
        """Compute one window from InfluxDB and write it (deleting a stale figure first)."""
        started = time.perf_counter()
        await rewrite_window(self.windows, self._writer, key)
        self.recomputed += 1
        log.debug("derive: %s recomputed in %.1f ms", key, (time.perf_counter() - started) * 1e3)
