"""Is the gateway's wall clock to be trusted? A Pi has no battery-backed clock.

The wall clock is untrusted while it reads earlier than ``earliest_valid`` (an
unset clock starts in 1970, or at the last shutdown with fake-hwclock if that
is older). A step larger than ``jump_threshold_s`` between the wall clock and
the monotonic clock is a jump: counted and reported, and the new time is taken
as the truth when it is plausible (a jump is normally NTP or GPS setting the
clock). Readings taken while untrusted keep their monotonic time, so once the
clock is trusted again their true time is computed from it, within one boot.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

log = logging.getLogger("ecotel.gateway.clock")

ClockState = Literal["ok", "unset", "jumped"]

JUMP_REPORTED_S = 3600.0
"""How long health reports the state "jumped" after a jump."""

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """The kernel's id of this boot: monotonic times compare only within one boot."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return "unknown-boot"


@dataclass(frozen=True)
class Stamp:
    """When a poll happened: the wall time used for its readings and the monotonic time behind it."""

    time: datetime
    mono: float
    trusted: bool


@dataclass(frozen=True)
class Anchor:
    """A trusted pair of wall and monotonic time: any monotonic time of this boot maps to a wall time."""

    wall: datetime
    mono: float

    def wall_at(self, mono: float) -> datetime:
        return self.wall - timedelta(seconds=self.mono - mono)


class ClockGuard:
    """Watches the wall clock against the monotonic clock; call ``check()`` every second or so."""

    def __init__(
        self,
        earliest_valid: datetime,
        jump_threshold_s: float,
        *,
        wall: "WallClock | None" = None,
    ) -> None:
        self.earliest_valid = earliest_valid
        self.jump_threshold_s = jump_threshold_s
        self._clock = wall or WallClock()
        self.jumps = 0
        self.last_jump_s: float | None = None
        self._last_jump_mono = 0.0
        wall_now, mono_now = self._clock.read()
        self._last = (wall_now, mono_now)
        self.trusted = wall_now >= earliest_valid
        self.state: ClockState = "ok" if self.trusted else "unset"
        if not self.trusted:
            log.warning(
                "wall clock reads %s, before %s: unset; readings are held until it is set",
                wall_now.isoformat(),
                earliest_valid.date(),
            )

    def stamp(self) -> Stamp:
        wall_now, mono_now = self._clock.read()
        return Stamp(wall_now, mono_now, self.trusted and wall_now >= self.earliest_valid)

    def check(self) -> Anchor | None:
        """Look at the clocks; returns an anchor when the clock has just become trustworthy."""
        wall_now, mono_now = self._clock.read()
        last_wall, last_mono = self._last
        self._last = (wall_now, mono_now)
        step = (wall_now - last_wall).total_seconds() - (mono_now - last_mono)
        plausible = wall_now >= self.earliest_valid
        jumped = abs(step) > self.jump_threshold_s
        if jumped:
            self.jumps += 1
            self.last_jump_s = step
            self._last_jump_mono = mono_now
            log.warning("wall clock jumped by %+.1f s (now %s)", step, wall_now.isoformat())
        if plausible and not self.trusted:
            self.trusted, self.state = True, "jumped" if self.jumps else "ok"
            log.info("wall clock set to %s: trusted again", wall_now.isoformat())
            return Anchor(wall_now, mono_now)
        if not plausible:
            if self.trusted:
                log.warning("wall clock went back to %s: unset", wall_now.isoformat())
            self.trusted, self.state = False, "unset"
        elif jumped:
            self.state = "jumped"
        elif self.state == "jumped" and mono_now - self._last_jump_mono > JUMP_REPORTED_S:
            self.state = "ok"
        return None


class WallClock:
    """The system clocks; tests substitute one they can set."""

    def read(self) -> tuple[datetime, float]:
        return datetime.now(UTC), time.monotonic()
