"""Two ptys joined back to back like a null-modem cable, for programs that open both ends of a
serial line by path (pymodbus's serial server on one, a driver on the other)."""

import asyncio
import contextlib
import os
from types import TracebackType
from typing import Self

from devices.emulators.pty_link import PtyLink, open_pty_link


class NullModem:
    """What is written to ``path_a`` is read from ``path_b`` and the other way round."""

    def __init__(self) -> None:
        self._a = open_pty_link()
        self._b = open_pty_link()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def path_a(self) -> str:
        return self._a.path

    @property
    def path_b(self) -> str:
        return self._b.path

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._a.master_fd, self._copy, self._a, self._b)
        self._loop.add_reader(self._b.master_fd, self._copy, self._b, self._a)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None:
            for link in (self._a, self._b):
                self._loop.remove_reader(link.master_fd)
        self._a.close()
        self._b.close()

    @staticmethod
    def _copy(source: PtyLink, sink: PtyLink) -> None:
        try:
            data = os.read(source.master_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # nobody has the slave open right now
        # Frames here are a few hundred bytes: a pty's buffer takes them whole.
        with contextlib.suppress(BlockingIOError):
            os.write(sink.master_fd, data)
