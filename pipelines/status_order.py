"""When a gateway's status point is stamped, so that its latest point is its latest status.

A status's own time comes from two clocks: the gateway's (``online``, a clean
``offline``) and the ingest's (the last will has none and is stamped on
arrival). An ingest that takes a will late, after a restart, stamped it after
the ``online`` that followed it, and a gateway sending data looked offline
(its alert fired); so did a gateway whose clock was a little behind, restored
from an old save, or unset. The broker sends one gateway's statuses to one
subscriber in the order they happened (a shared group's are taken by worker 0
alone, pipelines/config.py), so each is stamped after the one before it.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from collector.wire import GatewayStatus
from pipelines.config import InfluxSettings
from pipelines.decode import TimeWindow
from pipelines.influx_query import query_influx
from pipelines.influx_writer import InfluxError
from pipelines.line_protocol import STATUS_MEASUREMENT, moment_ns

log = logging.getLogger("ecotel.ingest")

_STEP = timedelta(microseconds=1)
_LOOK_BACK_DAYS = 400
"""Statuses are written only on change: a gateway may have had none for months."""
_READ_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class _Last:
    at: datetime
    state: str


class StatusOrder:
    """The time to stamp each live status with: its own (or its arrival), after the last one."""

    def __init__(self, influx: InfluxSettings, window: TimeWindow) -> None:
        self._influx = influx
        self._window = window
        self._last: dict[tuple[str, str], _Last] = {}
        self._read = False

    async def stamp(
        self, site: str, gateway: str, status: GatewayStatus, received_at: datetime
    ) -> datetime:
        at = status.at
        if at is None or self._window.problem_at(at, None, received_at) is not None:
            at = received_at  # a will, or a clock that cannot be right
        if not self._read:
            await self._read_stored()
        key = (site, gateway)
        last = self._last.get(key)
        if last is not None and at < last.at:
            if status.state == last.state:
                # The same state again (a retained status at a resubscribe, a redelivery):
                # it overwrites the latest point rather than adding one after it.
                return last.at
            at = last.at + _STEP
        self._last[key] = _Last(at, status.state)
        return at

    async def _read_stored(self) -> None:
        """Each gateway's latest stored status, read once (statuses are rare); until it can be
        read (InfluxDB away), the statuses seen since start are what is known."""
        query = (
            f'SELECT last("state") FROM "{STATUS_MEASUREMENT}" '
            f'WHERE time > now() - {_LOOK_BACK_DAYS}d GROUP BY "site", "gateway"'
        )
        try:
            # Bounded: a hung InfluxDB must not hold up the messages behind this one.
            async with asyncio.timeout(_READ_TIMEOUT_S):
                found = await query_influx(self._influx, query, epoch="ns")
        except (InfluxError, httpx.HTTPError, OSError, TimeoutError) as exc:
            log.warning("gateway statuses: the latest stored were not read (%s)", exc)
            return
        for series in found:
            key = (series.tags.get("site", ""), series.tags.get("gateway", ""))
            for row in series.rows():
                stored = _Last(moment_ns(int(row["time"])), str(row["last"]))
                seen = self._last.get(key)
                if seen is None or stored.at > seen.at:
                    self._last[key] = stored
        self._read = True
