"""An SQLite file opened for durability: WAL, ``synchronous=FULL``, its schema, ``async with``.

Shared by the gateway's outbox and the ingest's stores, some of them one file for several
worker processes: all promise that what they committed survives kill -9 and power loss.
"""

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TextIO

import aiosqlite

from collector.process_lock import lock_exclusively

log = logging.getLogger("ecotel.sqlite")


class StoreUnusable(RuntimeError):
    """A store's file cannot be opened: the message names the file and SQLite's reason."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        hint = (
            "; damaged, or not this store's file: move it aside together with its -wal and "
            "-shm files (keep them, they may hold data) and start again"
            if isinstance(cause, sqlite3.DatabaseError) and "not a database" in str(cause)
            else ""
        )
        super().__init__(f"cannot open {path}: {cause}{hint}")
        self.path = path


class DurableSqlite:
    """Base of a store in one SQLite file; subclasses set ``schema`` and may extend ``opened``."""

    schema: ClassVar[str]
    busy_timeout_s: ClassVar[float] = 5.0
    """SQLite's own wait for another connection's lock, per statement."""
    open_timeout_s: ClassVar[float] = 60.0
    """How long opening retries a file another process holds locked."""
    single_process: ClassVar[bool] = False
    """Refuse a file another process has open (``<file>.lock``): for a store whose counters
    live in its one process's memory, which a second writer would silently corrupt."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._process_lock: TextIO | None = None

    async def __aenter__(self) -> Self:
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
            if self.single_process:
                lock = self.path.with_name(f"{self.path.name}.lock")
                self._process_lock = await asyncio.to_thread(lock_exclusively, lock, str(self.path))
            self._db = await aiosqlite.connect(self.path, timeout=self.busy_timeout_s)
            try:
                await self._prepare()
            except BaseException:
                # The connection's thread is not a daemon: left open, it would keep a failed
                # process alive (a hung worker that its supervisor never restarts).
                await self._db.close()
                self._db = None
                raise
        except BaseException as exc:
            self._unlock()
            # ProgrammingError, InterfaceError: a bug in this code, not the file's fault.
            if isinstance(exc, sqlite3.DatabaseError | OSError) and not isinstance(
                exc, sqlite3.ProgrammingError | sqlite3.InterfaceError
            ):
                raise StoreUnusable(self.path, exc) from exc
            raise
        return self

    def _unlock(self) -> None:
        if self._process_lock is not None:
            self._process_lock.close()
            self._process_lock = None

    async def _prepare(self) -> None:
        # Two workers creating a shared file at once: switching it to WAL can fail at once
        # with "database is locked", without SQLite's busy wait (1 start in ~25 measured).
        deadline = time.monotonic() + self.open_timeout_s
        delay = 0.05
        while True:
            try:
                await self._setup()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s is locked by another process (%s); retrying", self.path, exc)
                await self.db.rollback()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _setup(self) -> None:
        db = self.db
        # WAL lets readers (an operator's sqlite3 shell) work while we write;
        # FULL, because with NORMAL a committed transaction can roll back
        # after a power cut (../shared/RELIABILITY.md, edge storage).
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(self.schema)
        await db.commit()
        await self.opened()

    async def opened(self) -> None:
        """Called once the file is open and its schema in place; again if opening is retried
        (the file was locked), so it must be safe to repeat."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._db is not None:
                await self._db.close()
                self._db = None
        finally:
            self._unlock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"{type(self).__name__} at {self.path} is not open")
        return self._db
