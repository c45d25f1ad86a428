"""The gateway's message sequence number, kept on disk so a restart never reuses one."""

import asyncio
import os
from pathlib import Path


class SequenceStore:
    """Hands out per-gateway message numbers; each is persisted before it is used.

    Reserving before publishing means a crash can leave a gap (a number that
    was never sent) but never reuses a number for different content, so the
    ingest's duplicate count stays truthful.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._next = 0

    @property
    def path(self) -> Path:
        return self._path

    async def open(self) -> None:
        self._next = await asyncio.to_thread(self._load)

    async def reserve(self) -> int:
        seq = self._next
        self._next += 1
        await asyncio.to_thread(self._save, self._next)
        return seq

    def _load(self) -> int:
        try:
            return int(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _save(self, value: int) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, self._path)
