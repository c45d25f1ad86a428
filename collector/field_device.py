"""A device on a field bus: its driver's raw values, retried, scaled (or looked up as states)
and grouped into readings."""

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
    ``errors``, so a flaky line shows before it costs a reading. A state's
    code missing from its ``states`` table fails the attempt as a
    bad_response: the poll gives no reading rather than one without that state.
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
        converted = await self._read_with_retries()
        groups: dict[str | None, dict[str, float | str]] = {}
        for mapping, value in zip(self._fields, converted, strict=True):
            channel = mapping.channel if mapping.channel is not None else self._default_channel
            groups.setdefault(channel, {})[mapping.field] = value
        return [
            Reading(device=self.device_id, kind=self.kind, time=at, channel=channel, values=values)
            for channel, values in groups.items()
        ]

    async def _read_with_retries(self) -> list[float | str]:
        for attempt in range(self._retries + 1):
            try:
                raw = await self._driver.read_raw()
                if len(raw) == len(self._fields):
                    return [m.apply(value) for m, value in zip(self._fields, raw, strict=True)]
            except DeviceError as exc:
                self.errors[exc.reason] += 1
                if attempt == self._retries:
                    raise
                log.debug("device %s: attempt %d failed: %s", self.device_id, attempt + 1, exc)
            else:
                # A driver bug, not the device: not counted or retried.
                raise DeviceError(
                    "bad_response", f"driver gave {len(raw)} values for {len(self._fields)} fields"
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        await self._driver.close()
