"""One process at a time on a store, a data dir or a short rewrite of a shared file: an exclusive
``flock`` on a lock file (held with the holder's pid written in it, so a refusal can name it)."""

import contextlib
import fcntl
import os
from collections.abc import Iterator
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
    # Written unbuffered: a buffered write that failed would fail again at close().
    with contextlib.suppress(OSError):
        os.ftruncate(lock.fileno(), 0)
        os.pwrite(lock.fileno(), f"{os.getpid()}\n".encode(), 0)
    return lock


@contextlib.contextmanager
def taking_turns(path: Path) -> Iterator[None]:
    """Wait for ``path``, hold it for the block: processes rewriting one shared file in turn.

    Blocking: for code that runs before the event loop starts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
