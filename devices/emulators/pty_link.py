"""A pseudo-terminal pair: the emulator holds the master end, a driver opens the slave's path."""

import contextlib
import os
import tty
from dataclasses import dataclass


@dataclass
class PtyLink:
    master_fd: int
    slave_fd: int
    path: str
    """What a driver opens, e.g. /dev/pts/7."""

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_pty_link() -> PtyLink:
    """A raw pty pair; the slave fd stays open so the link survives drivers reopening it."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return PtyLink(master, slave, os.ttyname(slave))
