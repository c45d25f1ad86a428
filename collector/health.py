"""The gateway's own health: uptime, CPU temperature and load, memory, disk, outbox and link."""

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

# The Raspberry Pi's SoC sensor; absent on most other machines.
_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
_MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class HostHealth:
    cpu_temperature_c: float | None
    load_1m: float
    memory_available_mb: float
    disk_free_mb: float


def read_host_health(state_dir: Path) -> HostHealth:
    """Read the host's figures (blocking file reads: call it in a thread)."""
    try:
        temperature: float | None = int(_THERMAL.read_text().strip()) / 1000
    except (OSError, ValueError):
        temperature = None
    available = 0.0
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 1024
                break
    except OSError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    return HostHealth(
        cpu_temperature_c=temperature,
        load_1m=os.getloadavg()[0],
        memory_available_mb=available,
        disk_free_mb=shutil.disk_usage(state_dir).free / 1_048_576,
    )


START = time.monotonic()
"""When this process started, for the uptime."""
