"""Derived measurements in the ingest's stream: per-reading points beside the raw ones, and
a recomputer for the windows the written readings touched (docs/analytics.md)."""

import asyncio
import logging
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
        absorb: Path | None = None,
    ) -> None:
        self.settings = settings
        self.windows = WindowDeriver(settings, ingest.influx)
        self._writer = writer
        # More than two full batches waiting: the writer is not keeping up (a backlog).
        self._behind_points = 2 * ingest.batch.max_points
        self._state = DirtyWindows(state)
        self._absorb = absorb
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
        # each window is then recomputed once, not once per worker. A worker's own file
        # from before is taken over.
        own = derive.state_for(worker, settings.dead_letter.path)
        shared = derive.state_for(None, settings.dead_letter.path)
        return cls(derive, settings, writer, shared, absorb=own)

    async def __aenter__(self) -> Self:
        if self.settings.enabled:
            await self._state.__aenter__()
            if self._absorb is not None and await asyncio.to_thread(self._absorb.exists):
                taken = await self._state.absorb(self._absorb)
                log.info("derive: %d marked windows taken over from %s", taken, self._absorb)
            pending = await self._state.count()
            if pending:
                log.info(
                    "derive: %d windows marked before the last stop wait for recomputation", pending
                )
            self._tasks = [
                asyncio.create_task(self._commit_marks(), name="derive-marks"),
                asyncio.create_task(self._recompute(), name="derive-recompute"),
            ]
        return self

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

    async def _commit_marks(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._written = self._written, []
            keys: set[WindowKey] = set().union(*(k for k, _ in batch))
            while True:
                try:
                    await self._state.mark(keys)
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
                # While behind, only windows past their ceiling: the backlog's later readings
                # would touch the others again and the query load slows the catch-up.
                held = self._writer.pending > self._behind_points
                for key, version in await self._state.claim(delays, held=held):
                    try:
                        await self.recompute(key)
                    except (InfluxError, httpx.HTTPError):
                        raise
                    except Exception:
                        # A rule that cannot take this window's data must not stop the
                        # others: say which window, and try it again after its delay.
                        log.exception("derive: cannot recompute %s; retrying later", key)
                        self.failures += 1
                        await self._state.defer(key)
                        continue
                    await self._state.clear(key, version)
            except (InfluxError, httpx.HTTPError) as exc:
                log.warning("derive: recomputation waits for InfluxDB (%s)", exc)
                await asyncio.sleep(_RETRY_S)

    async def recompute_marked(self) -> int:
        """Recompute every marked window now, whatever its delay; the number recomputed.

        A one-shot command's last step (``dead-letters replay``): nobody may be left to wait.
        A window that cannot be recomputed stays marked for the ingest, and is logged.
        """
        if not self.settings.enabled:
            return 0
        count = 0
        for key, version in await self._state.due(dict.fromkeys(Window, timedelta(0))):
            try:
                await self.recompute(key)
            except Exception:
                log.exception("derive: cannot recompute %s; it stays marked", key)
                self.failures += 1
                continue
            await self._state.clear(key, version)
            count += 1
        return count

    async def recompute(self, key: WindowKey) -> None:
        """Compute one window from InfluxDB and write it (deleting a stale figure first)."""
        started = time.perf_counter()
        await rewrite_window(self.windows, self._writer, key)
        self.recomputed += 1
        log.debug("derive: %s recomputed in %.1f ms", key, (time.perf_counter() - started) * 1e3)
