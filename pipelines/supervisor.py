"""Run several ingest workers as child processes on one shared subscription; restart any that dies."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence

log = logging.getLogger("ecotel.ingest.supervisor")

WorkerId = int | None
"""A worker's number; None for the session of a single ingest before the group (retiring)."""
Command = Callable[[WorkerId], list[str]]
"""The command line of worker number N."""


def worker_name(number: WorkerId) -> str:
    return "the single ingest's session" if number is None else f"worker {number}"


# EX_CONFIG: a worker refused by the broker for its settings (pipelines/cli.py). Restarting
# cannot mend it, and every worker shares the settings: stop them all and exit with it.
EX_CONFIG = 78
# A refusal at start (exit 2, as argparse's): for a retiring session, final.
EX_USAGE = 2


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``, from a returncode as asyncio reports it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """Keep ``workers`` processes running until stop(); each is restarted with backoff if it dies.

    A worker must come back after a crash, not merely be replaced: the broker
    keeps queueing its share of a shared subscription for its session (its
    client id) and hands those messages to no other member
    (../shared/RELIABILITY.md). So worker N is always restarted as worker N.
    The backoff (``backoff_min_s`` doubling to ``backoff_max_s``) starts again
    once a worker has run ``stable_after_s``.

    ``retiring`` are numbers of workers the group no longer runs whose sessions the broker
    still keeps (None: a single ingest's from before the group): each runs (``command(number)`` retires it) until it exits 0, its session
    taken and discarded; if it dies first it is restarted like the others.
    """

    def __init__(
        self,
        workers: int,
        command: Command,
        *,
        retiring: Sequence[WorkerId] = (),
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 30.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"need at least one worker, not {workers}")
        self.workers = workers
        self.retiring = list(dict.fromkeys(retiring))
        if any(number is not None and number < workers for number in self.retiring):
            raise ValueError(
                f"workers to retire {self.retiring} must be numbered {workers} or more"
            )
        self.command = command
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self.restarts: dict[WorkerId, int] = dict.fromkeys([*range(workers), *self.retiring], 0)
        self.exit_code = 0
        """0, or EX_CONFIG once a worker has exited with it and the others were stopped."""
        self._procs: dict[WorkerId, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    @property
    def pids(self) -> dict[WorkerId, int]:
        """Worker number -> pid of its running process."""
        return {n: p.pid for n, p in self._procs.items() if p.returncode is None}

    async def run(self) -> None:
        """Start every worker and keep them running; return once stop() has stopped them all.

        SIGTERM and SIGINT call stop(); a second signal is forwarded again, as
        a second Ctrl-C would reach a single ingest.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            async with asyncio.TaskGroup() as tasks:
                for number in self.restarts:
                    tasks.create_task(self._keep_running(number), name=f"worker-{number}")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("supervisor: all %d workers stopped", self.workers)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Ask every worker to stop (SIGTERM) and not restart them."""
        if not self._stopping.is_set():
            log.info("supervisor: %s, stopping %d workers", sig.name, len(self._procs))
        self._stopping.set()
        for proc in self._procs.values():
            self._terminate(proc)

    async def _keep_running(self, number: WorkerId) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_min_s
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(*self.command(number))
            self._procs[number] = proc
            log.info("supervisor: %s started: pid %d", worker_name(number), proc.pid)
            if self._stopping.is_set():
                # stop() came while this one was being started.
                self._terminate(proc)
            started = loop.time()
            returncode = await self._wait(number, proc)
            del self._procs[number]
            if self._stopping.is_set():
                log.info(
                    "supervisor: %s (pid %d) stopped: %s",
                    worker_name(number),
                    proc.pid,
                    describe_exit(returncode),
                )
                return
            if returncode == 0 and number in self.retiring:
                log.info("supervisor: %s retired (pid %d)", worker_name(number), proc.pid)
                return
            if returncode == EX_USAGE and number in self.retiring:
                # Its session in use by another process, or its record damaged: retrying
                # cannot mend that, and the next start tries again.
                log.error(
                    "supervisor: %s (pid %d) cannot be retired now (exit %d; its log says why); "
                    "not restarting it",
                    worker_name(number),
                    proc.pid,
                    returncode,
                )
                return
            if returncode == EX_CONFIG:
                log.error(
                    "supervisor: %s (pid %d) exited %d: its settings were refused "
                    "(its log says which); not restarting, stopping every worker",
                    worker_name(number),
                    proc.pid,
                    EX_CONFIG,
                )
                self.exit_code = EX_CONFIG
                self.stop()
                return
            if loop.time() - started >= self.stable_after_s:
                delay = self.backoff_min_s
            self.restarts[number] += 1
            log.warning(
                "supervisor: %s (pid %d) died: %s; restarting it in %.1f s (restart %d)",
                worker_name(number),
                proc.pid,
                describe_exit(returncode),
                delay,
                self.restarts[number],
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, self.backoff_max_s)

    async def _wait(self, number: WorkerId, proc: asyncio.subprocess.Process) -> int:
        """The worker's returncode; once stopping, SIGKILL it after ``stop_timeout_s``."""
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                try:
                    async with asyncio.timeout(self.stop_timeout_s):
                        await asyncio.shield(exited)
                except TimeoutError:
                    log.error(
                        "supervisor: %s (pid %d) still running %g s after SIGTERM; killing it",
                        worker_name(number),
                        proc.pid,
                        self.stop_timeout_s,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            return await exited
        except BaseException:
            # The supervisor itself is failing: no worker may outlive it and
            # keep its session while a new supervisor starts another one.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            stopping.cancel()

    @staticmethod
    def _terminate(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
