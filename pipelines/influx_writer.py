"""Batched writes to InfluxDB's v1 ``/write`` endpoint (served by 1.x, 2.x and 3.x) with retries.

Batches close at a size or after a delay, whichever comes first. Transient
failures (connection errors, 429 and 5xx) are retried with backoff, honouring
Retry-After, forever: a point is never dropped because the database is away.
Points the server refuses outright are isolated by bisection and handed back
with the server's answer, so one bad point does not take its batch with it.
With a spool (pipelines/spool.py), a batch that fails transiently goes to disk
instead of waiting, and a drainer writes it back when InfluxDB returns.
If either background task fails unexpectedly, ``watch()`` raises: the ingest stops
(to be restarted) rather than run on without writing.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import httpx

from pipelines.config import BatchSettings, InfluxSettings
from pipelines.points import Chunk, Point
from pipelines.spool import Spool
from pipelines.stats import IngestStats

__all__ = [
    "Chunk",
    "Done",
    "InfluxError",
    "InfluxWriter",
    "Point",
    "Refused",
    "WriterFailed",
    "no_op",
]

log = logging.getLogger("ecotel.ingest.influx")

_YIELD_POINTS = 200
"""Points put between two turns of the event loop (~3 ms of decoding at batch 50)."""


class InfluxError(Exception):
    """InfluxDB refused a request; carries the server's status and answer."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"InfluxDB answered {status}: {body.strip()}")
        self.status = status
        self.body = body


class WriterFailed(RuntimeError):
    """The writer's or the spool drainer's task ended with an unexpected error (its cause)."""


Refused = Callable[[list[Point], InfluxError], Awaitable[None]]
Done = Callable[[], None]


def no_op() -> None:
    return None


class InfluxWriter:
    """Collect points from many messages into batches and write them in the background."""

    def __init__(
        self,
        influx: InfluxSettings,
        batch: BatchSettings,
        stats: IngestStats,
        on_refused: Refused,
        spool: Spool | None = None,
    ) -> None:
        self._spool = spool
        self._spool_ready = asyncio.Event()
        self._spool_drained = asyncio.Event()
        self._spool_drained.set()
        self._influx_down = False
        self._influx = influx
        self._batch = batch
        self._stats = stats
        self._on_refused = on_refused
        self._queue: asyncio.Queue[tuple[list[Chunk], int, Done]] = asyncio.Queue()
        self._pending = 0
        self._unyielded = 0
        self._space = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flush_now = asyncio.Event()
        # Zero once the ingest is stopping (drain_now): nothing waits for more points.
        self._max_delay_s = batch.max_delay_s
        self._timer: asyncio.Timeout | None = None
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self.failure: WriterFailed | None = None
        """Set once a background task has failed: nothing is written any more."""
        self._failed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._http = httpx.AsyncClient(
            base_url=self._influx.url,
            timeout=self._influx.timeout_s,
            auth=self._influx.credentials,
            # Proxy variables meant for the outside world must not divert database writes.
            trust_env=False,
        )
        try:
            if self._spool is not None:
                await self._spool.__aenter__()
                self._note_spool()
            if self._influx.create_database:
                await self._create_database()
        except BaseException:
            # Stopped while waiting for InfluxDB: close what is open, or the spool's
            # SQLite thread keeps the process alive after the ingest has stopped.
            await self.__aexit__(None, None, None)
            raise
        self._task = asyncio.create_task(self._run(), name="influx-writer")
        self._task.add_done_callback(self._task_ended)
        if self._spool is not None:
            self._drainer = asyncio.create_task(self._drain_spool(), name="spool-drainer")
            self._drainer.add_done_callback(self._task_ended)
        return self

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        # Both tasks loop until cancelled: an exception left alone here was seen only at the
        # exit, after hours of a ready-looking ingest that wrote nothing (a full spool disk).
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error(
            "the %s task failed; stopping the ingest (unwritten messages stay unacknowledged: "
            "the broker redelivers them after a restart)",
            task.get_name(),
            exc_info=exc,
        )
        if self.failure is None:
            self.failure = WriterFailed(f"{task.get_name()} failed: {type(exc).__name__}: {exc}")
            self.failure.__cause__ = exc
            self._failed.set()

    async def watch(self) -> None:
        """Wait until a background task fails, then raise WriterFailed (run beside the user)."""
        await self._failed.wait()
        assert self.failure is not None
        raise self.failure

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in (self._task, self._drainer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._spool is not None:
            await self._spool.__aexit__(None, None, None)
        if self._http is not None:
            await self._http.aclose()

    @property
    def pending(self) -> int:
        """Points accepted but not yet written (or refused)."""
        return self._pending

    async def put(self, points: list[Point], done: Done = no_op) -> None:
        """Queue points for writing; ``done`` is called once they are written or refused.

        Waits while too many points are pending (backpressure).
        """
        await self.put_chunks(Chunk.group(points), done)

    async def put_chunks(self, chunks: list[Chunk], done: Done = no_op) -> None:
        """``put`` for points already in chunks (a message's readings: pipelines/points.py)."""
        size = sum(len(chunk.lines) for chunk in chunks)
        if not size:
            done()
            return
        if self._pending >= self._batch.max_pending_points:
            # The condition only when full: taking it for every message cost ~4 us at batch 1.
            async with self._space:
                await self._space.wait_for(lambda: self._pending < self._batch.max_pending_points)
        self._pending += size
        self._idle.clear()
        self._queue.put_nowait((chunks, size, done))
        self._unyielded += size
        if self._unyielded >= _YIELD_POINTS:
            # A consumer with messages ready never suspends, and the write in flight waits
            # for its I/O meanwhile: in a backlog 5,000 points took 200-400 ms to POST
            # instead of 35 ms and the writer fell behind the decoding. Let the loop turn.
            self._unyielded = 0
            await asyncio.sleep(0)

    def flush_soon(self) -> None:
        """Close the current batch now (the broker's window of unacknowledged messages is full)."""
        self._flush_now.set()

    def drain_now(self) -> None:
        """From now on write what is queued without waiting for the batch delay (stopping)."""
        self._max_delay_s = 0.0
        # An expired timer is ending its wait anyway (and refuses a reschedule).
        if self._timer is not None and not self._timer.expired():
            self._timer.reschedule(asyncio.get_running_loop().time())

    async def wait_idle(self) -> None:
        """Return once every queued point is written or refused, the spool included."""
        while True:
            await self._idle.wait()
            await self._spool_drained.wait()
            if self._idle.is_set():
                return

    @property
    def spooled(self) -> int:
        """Points on disk waiting for InfluxDB."""
        return self._spool.points if self._spool is not None else 0

    def _note_spool(self) -> None:
        self._stats.spool_points = self.spooled
        if self.spooled:
            self._spool_drained.clear()
            self._spool_ready.set()
        else:
            self._spool_drained.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunks, size, done = await self._queue.get()
            batch, callbacks = list(chunks), [done]
            # Take what is already queued before looking at _flush_now: flush_soon()
            # during the previous write left it set, and without this the next batch
            # closed after one item (8,323 POSTs of 3.6 points for 30,000 one-reading
            # messages; docs/performance.md, ingest CPU 11.1 -> 6.6 s).
            while size < self._batch.max_points and not self._queue.empty():
                chunks, more, done = self._queue.get_nowait()
                batch.extend(chunks)
                size += more
                callbacks.append(done)
            deadline = loop.time() + self._max_delay_s
            while size < self._batch.max_points and not self._flush_now.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # asyncio.timeout: 3.11's wait_for can lose a cancellation. A pause
                    # in the stream closes the batch too: at the end of a burst the last
                    # points waited the whole delay for nothing (~1 s of a 5 s backlog).
                    async with asyncio.timeout(
                        min(remaining, self._batch.max_quiet_s)
                    ) as self._timer:
                        chunks, more, done = await self._queue.get()
                except TimeoutError:
                    break
                finally:
                    self._timer = None
                batch.extend(chunks)
                size += more
                callbacks.append(done)
            self._flush_now.clear()
            await self._write(batch, size)
            for callback in callbacks:
                callback()
            async with self._space:
                self._pending -= size
                self._space.notify_all()
                if self._pending == 0:
                    self._idle.set()

    async def _write(self, batch: list[Chunk], size: int, *, may_spool: bool = True) -> None:
        """Write ``size`` points in chunks."""
        try:
            written = await self._post_with_retry(batch, size, may_spool=may_spool)
        except InfluxError as exc:
            if exc.status == 413 or size > 1:
                # Too large, or some point in it refused: halve until the
                # refused points stand alone. Rewriting accepted points is
                # harmless, a point's identity makes it overwrite itself.
                if size == 1:
                    await self._on_refused(batch[0].points(), exc)
                    return
                for half in _halves(batch):
                    await self._write(half, sum(len(c.lines) for c in half), may_spool=may_spool)
                return
            log.error("InfluxDB refused a point: %s", exc)
            await self._on_refused(batch[0].points(), exc)
            return
        if written:
            self._stats.count_written(batch)

    async def _spooled(self, batch: list[Chunk], size: int) -> bool:
        if self._spool is None or not await self._spool.add(
            [point for chunk in batch for point in chunk.points()]
        ):
            return False
        self._stats.spooled += size
        self._note_spool()
        return True

    async def _post_with_retry(
        self, batch: list[Chunk], size: int, *, may_spool: bool = True
    ) -> bool:
        """True once written; False if the batch went to the spool instead (InfluxDB away)."""
        if may_spool and self._influx_down and await self._spooled(batch, size):
            return False
        body = "\n".join([chunk.text for chunk in batch]).encode()
        params = {"db": self._influx.database, "precision": "ns"}
        delay = 0.5
        while True:
            started = time.perf_counter()
            wait = delay
            try:
                response = await self.http.post("/write", params=params, content=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 204:
                    self._stats.write_batches += 1
                    self._stats.record_write_latency(time.perf_counter() - started)
                    self._influx_down = False
                    return True
                # 4xx (but 429) will not get better by retrying; 429 and 5xx may.
                if response.status_code // 100 == 4 and response.status_code != 429:
                    raise InfluxError(response.status_code, response.text)
                problem = f"{response.status_code}: {response.text.strip()}"
                wait = max(delay, _retry_after(response))
            self._influx_down = True
            if may_spool and await self._spooled(batch, size):
                log.warning(
                    "write of %d points failed (%s); spooled to disk (%d points waiting)",
                    size,
                    problem,
                    self.spooled,
                )
                return False
            self._stats.write_retries += 1
            log.warning("write of %d points failed (%s); retrying in %.1f s", size, problem, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._batch.retry_max_s)

    async def write_lines(self, lines: list[str]) -> InfluxError | None:
        """Write lines now, beside the batches (a replayed point); None once written.

        Transient failures are retried as for a batch, never spooled: the caller waits.
        A refusal (4xx) is returned, not dead-lettered, and covers the whole request.
        Counted as a write batch, not as readings written (a line's role is not known).
        """
        if not lines:
            return None
        chunk = Chunk.of(lines, [""] * len(lines), "", reading=False)
        try:
            await self._post_with_retry([chunk], len(lines), may_spool=False)
        except InfluxError as exc:
            return exc
        return None

    async def _drain_spool(self) -> None:
        assert self._spool is not None
        # Written, but their delete failed (a full disk takes no delete either): the rest of
        # the spool is written first, then the deletes are retried.
        undeleted: list[int] = []
        delay = 0.5
        while True:
            await self._spool_ready.wait()
            oldest = await self._spool.oldest(after=undeleted[-1] if undeleted else 0)
            if oldest is None:
                while undeleted and await self._spool.remove(undeleted[0]):
                    undeleted.pop(0)
                    if not undeleted and not self.spooled:
                        log.info("spool drained: InfluxDB has everything again")
                if undeleted:
                    self._note_spool()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._batch.retry_max_s)
                    continue
                delay = 0.5
                self._spool_ready.clear()
                self._note_spool()
                continue
            batch_id, batch = oldest
            # Retries in place: the drainer is the one that waits for InfluxDB.
            await self._write(Chunk.group(batch), len(batch), may_spool=False)
            if not await self._spool.remove(batch_id):
                undeleted.append(batch_id)
            self._note_spool()
            if not self.spooled:
                log.info("spool drained: InfluxDB has everything again")

    async def reachable(self) -> str | None:
        """None if InfluxDB answers its /ping and the writer runs, else what went wrong."""
        if self.failure is not None:
            return f"not writing: {self.failure}"
        try:
            response = await self.http.get("/ping", timeout=2.0)
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 204:
            return f"/ping answered {response.status_code}"
        return None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("InfluxWriter used outside 'async with'")
        return self._http

    async def _create_database(self) -> None:
        name = self._influx.database.replace("\\", "\\\\").replace('"', '\\"')
        delay = 0.5
        while True:
            try:
                response = await self.http.post("/query", data={"q": f'CREATE DATABASE "{name}"'})
            except httpx.TransportError as exc:
                log.warning("waiting for InfluxDB at %s (%s)", self._influx.url, exc)
            else:
                if response.status_code == 200 and '"error"' not in response.text:
                    return
                raise InfluxError(response.status_code, response.text)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._batch.retry_max_s)


def _halves(batch: list[Chunk]) -> tuple[list[Chunk], list[Chunk]]:
    """A batch of two points or more in two, by chunks or, for one chunk, by its lines."""
    if len(batch) == 1:
        first, second = batch[0].split()
        return [first], [second]
    middle = len(batch) // 2
    return batch[:middle], batch[middle:]


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0
