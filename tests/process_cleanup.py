"""No test leaves a process running: whatever a test started (an ingest, a gateway, a stack, a
supervisor and its workers) is stopped after it, even when an assertion failed midway."""

import warnings
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

TERM_GRACE_S = 20.0
"""How long the processes have to stop on SIGTERM (a supervisor stops its workers)."""
_KILL_WAIT_S = 10.0


class ProcessLeft(UserWarning):
    """A test that passed left a process running: its own stop code has a gap."""


def _descendants() -> set[psutil.Process]:
    return {process for process in psutil.Process().children(recursive=True) if _ours(process)}


_SERVERS = frozenset({"mosquitto", "influxd"})
"""Started by deploy/servers.py, whose fixtures stop them at the end of their scope, even after
a failure; a test may restart a module's server (a new process) for the tests after it."""


def _ours(process: psutil.Process) -> bool:
    """Not a server of a fixture, nor multiprocessing's resource tracker: it serves pytest's
    process until it exits (a test using multiprocessing starts it once) and ignores SIGTERM."""
    with suppress(psutil.Error):
        command = process.cmdline()
        if command and Path(command[0]).name in _SERVERS:
            return False
        return "multiprocessing.resource_tracker" not in " ".join(command)
    return False


def _running(process: psutil.Process) -> bool:
    """Not exited: a killed child not yet waited for is a zombie, gone but for its exit code."""
    with suppress(psutil.Error):
        return process.status() != psutil.STATUS_ZOMBIE
    return False


def _describe(process: psutil.Process) -> str:
    with suppress(psutil.Error):
        return f"{process.pid} {' '.join(process.cmdline())[:120]}"
    return str(process.pid)


def stop_processes(processes: set[psutil.Process]) -> None:
    """SIGTERM to the topmost of ``processes``, then SIGKILL to those of them (and their
    children) still running ``TERM_GRACE_S`` later."""
    if not processes:
        return
    pids = {process.pid for process in processes}
    for process in processes:
        # Only the topmost: a supervisor stops its own workers (or restarts one killed alone).
        with suppress(psutil.NoSuchProcess):
            if process.ppid() not in pids:
                process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=TERM_GRACE_S)
    stubborn = set(alive)
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            stubborn.update(process.children(recursive=True))
    for process in stubborn:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(stubborn, timeout=_KILL_WAIT_S)


@pytest.fixture(autouse=True)
def no_process_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stops the processes this process gained while the test ran. Session and module
    servers are older (higher scopes are set up first) and function fixtures stop theirs
    before this teardown (autouse: set up first, torn down last)."""
    before = _descendants()
    failed = request.session.testsfailed
    yield
    left = _descendants() - before
    running = {process for process in left if _running(process)}
    # The call's report is counted before teardown: a failed test's leftovers are expected.
    if running and request.session.testsfailed == failed:
        described = "; ".join(sorted(_describe(process) for process in running))
        warnings.warn(
            ProcessLeft(f"{request.node.nodeid} left running (stopped now): {described}"),
            stacklevel=1,
        )
    stop_processes(left)
