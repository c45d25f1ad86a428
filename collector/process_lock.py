"""One process at a time on a store or data dir: an exclusive ``flock`` on a lock file, with the
holder's pid written in it so that a refusal can name it."""

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TextIO


class InUse(RuntimeError):
    """Another process holds the lock."""


def lock_exclusively(path: Path, what: str) -> TextIO:
    """Hold ``path`` for this process until the returned file is closed (or the process ends,
    kill -9 included: the kernel drops the lock), or raise InUse naming the holder's pid.

    Blocking file I/O: call it through asyncio.to_thread from async code.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise InUse(f"{what} is in use by another process (pid {holder}; lock {path})") from None
    except BaseException:
        lock.close()
        raise
    # The pid only names the holder: a full disk must not keep the gateway from starting.
    with contextlib.suppress(OSError):
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    return lock
