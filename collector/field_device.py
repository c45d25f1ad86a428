"""A device on a field bus: its driver's raw values, retried, scaled and grouped into readings."""

import logging
from collections import Counter
from datetime import datetime

from devices import Reading
from devices.drivers.base import DeviceError, Driver, FieldMap, SourceSettings

log = logging.getLogger("ecotel.gateway.devices")


class FieldDevice:
    """Polls one configured device through its protocol driver.

    A poll is one driver read, retried ``source.retries`` times; it fails with
    the last DeviceError. Every failed attempt is counted by reason in
    ``errors``, so a flaky line shows before it costs a reading.
    """

    def __init__(
        self,
        device_id: str,
        kind: str,
        fields: list[FieldMap],
        default_channel: str | None,
        source: SourceSettings,
        driver: Driver,
    ) -> None:
        self.device_id = device_id
        self.kind = kind
        self._fields = fields
        self._default_channel = default_channel
        self._retries = source.retries
        self._driver = driver
        self.errors: Counter[str] = Counter()

    async def read(self, at: datetime) -> list[Reading]:
        raw = await self._read_with_retries()
        groups: dict[str | None, dict[str, float]] = {}
        for mapping, value in zip(self._fields, raw, strict=True):
            channel = mapping.channel if mapping.channel is not None else self._default_channel
            groups.setdefault(channel, {})[mapping.field] = mapping.apply(value)
        return [
            Reading(device=self.device_id, kind=self.kind, time=at, channel=channel, values=values)
            for channel, values in groups.items()
        ]

    async def _read_with_retries(self) -> list[float]:
        for attempt in range(self._retries + 1):
            try:
                raw = await self._driver.read_raw()
            except DeviceError as exc:
                self.errors[exc.reason] += 1
                if attempt == self._retries:
                    raise
                log.debug("device %s: attempt %d failed: %s", self.device_id, attempt + 1, exc)
            else:
                if len(raw) != len(self._fields):
                    raise DeviceError(
                        "bad_response",
                        f"driver gave {len(raw)} values for {len(self._fields)} fields",
                    )
                return raw
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        await self._driver.close()
