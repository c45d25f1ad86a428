"""Stop quietly when stdout's reader goes away (``... | head``), as Unix tools do."""

import os
import signal
import sys


def reader_left() -> int:
    """Call on BrokenPipeError: keep the interpreter's final flush of stdout from raising
    again, and return the exit status of a process ended by SIGPIPE."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE
