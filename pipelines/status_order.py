"""When a gateway's status point is stamped, so that its latest point is its latest status.

A status's own time comes from two clocks: the gateway's (``online``, a clean
``offline``) and the ingest's (the last will has none and is stamped on
arrival). An ingest that takes a will late, after a restart, stamped it after
the ``online`` that followed it, and a gateway sending data looked offline
(its alert fired); so did a gateway whose clock was a little behind, restored
from an old save, or unset. The broker sends one gateway's statuses in the
order they happened, so each is stamped after the one before it.
"""

import logging
from datetime import UTC, datetime, timedelta

from collector.wire import GatewayStatus
from pipelines.config import InfluxSettings
from pipelines.influx_query import query_influx
from pipelines.influx_writer import InfluxError
from pipelines.line_protocol import STATUS_MEASUREMENT

log = logging.getLogger("ecotel.ingest")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_AHEAD = timedelta(minutes=10)
"""As far as a status's own time may be ahead of the ingest's clock (decode's max_future)."""
_STEP = timedelta(microseconds=1)
_LOOK_BACK_DAYS = 400
"""Statuses are written only on change: a gateway may have had none for months."""


class StatusOrder:
    """The time to stamp each live status with: its own (or its arrival), after the last one."""

    def __init__(self, influx: InfluxSettings) -> None:
        self._influx = influx
        self._last: dict[tuple[str, str], datetime] | None = None

    async def stamp(
        self, site: str, gateway: str, status: GatewayStatus, received_at: datetime
    ) -> datetime:
        at = status.at
        if at is None or not _EARLIEST <= at <= received_at + _AHEAD:
            at = received_at  # a will, or a clock that cannot be right
        known = await self._stored()
        last = known.get((site, gateway))
        if last is not None and at < last:
            at = last + _STEP
        known[(site, gateway)] = at
        return at

    async def _stored(self) -> dict[tuple[str, str], datetime]:
        """Each gateway's latest status time in InfluxDB, read once (statuses are rare)."""
        if self._last is not None:
            return self._last
        query = (
            f'SELECT last("online") FROM "{STATUS_MEASUREMENT}" '
            f'WHERE time > now() - {_LOOK_BACK_DAYS}d GROUP BY "site", "gateway"'
        )
        try:
            found = await query_influx(self._influx, query, epoch="u")
        except (InfluxError, OSError) as exc:
            # Not cached: asked again at the next status.
            log.warning("gateway statuses: the latest stored were not read (%s)", exc)
            return {}
        self._last = {
            (s.tags.get("site", ""), s.tags.get("gateway", "")): _EPOCH
            + timedelta(microseconds=int(row["time"]))
            for s in found
            for row in s.rows()
        }
        return self._last
