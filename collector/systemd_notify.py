"""systemd's notify protocol (READY=1, WATCHDOG=1) over $NOTIFY_SOCKET, so a hung gateway is restarted.

The protocol is one datagram per message to a Unix socket (sd_notify(3)); a
few lines of stdlib do it, no library needed. Without $NOTIFY_SOCKET (not
under systemd) every call does nothing.
"""

import asyncio
import logging
import os
import socket

log = logging.getLogger("ecotel.gateway.systemd")


def notify(message: str) -> None:
    """Send one notification; a no-op outside systemd.

    A failure is logged, not raised: the gateway's readings matter more than its report to
    systemd (which, missing READY=1 or the watchdog, restarts it anyway).
    """
    given = os.environ.get("NOTIFY_SOCKET")
    if not given:
        return
    address = "\0" + given[1:] if given.startswith("@") else given  # @: abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("could not tell systemd %s at NOTIFY_SOCKET=%s: %s", message, given, exc)


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (systemd passes it as $WATCHDOG_USEC), or None when not set."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


async def keep_watchdog_fed() -> None:
    """Ping the watchdog while the event loop runs: if the loop hangs, systemd restarts us."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
