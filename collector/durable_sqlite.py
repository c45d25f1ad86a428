"""An SQLite file opened for durability: WAL, ``synchronous=FULL``, its schema, ``async with``.

Shared by the gateway's outbox and the ingest's dead-letter store: both
promise that what they committed survives kill -9 and power loss.
"""

from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import aiosqlite


class DurableSqlite:
    """Base of a store in one SQLite file; subclasses set ``schema`` and may extend ``opened``."""

    schema: ClassVar[str]

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        # WAL lets readers (an operator's sqlite3 shell) work while we write;
        # FULL, because with NORMAL a committed transaction can roll back
        # after a power cut (../shared/RELIABILITY.md, edge storage).
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.executescript(self.schema)
        await self._db.commit()
        await self.opened()
        return self

    async def opened(self) -> None:
        """Called once the file is open and its schema in place."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"{type(self).__name__} at {self.path} is not open")
        return self._db
