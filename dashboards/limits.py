"""The numbers operators are alerted on, each from its source: the catalog, DOMAIN.md's rules, or policy."""

from typing import Final

from devices.ecology import StationHealth
from pipelines.analytics.water_class import WaterClass

_battery_normal = StationHealth.quantity("battery_voltage").normal
assert _battery_normal is not None
BATTERY_LOW_V: Final = _battery_normal[0]
"""Below about 11.5 V a 12 V station is at risk (DOMAIN.md; the catalog's normal range)."""

WATER_CLASS_LIMIT: Final = int(WaterClass.III)
"""Worse than class III (GB 3838-2002) is not fit for drinking-water sources: alert."""

VISIBILITY_TIERS_M: Final = (50.0, 100.0, 200.0)
"""Art. 81 boundaries (strictly under each): 20, 40, 60 km/h."""

PUE_TARGET: Final = 1.25
"""Hub policy for new large data centers (2021-2022); western hubs aim for about 1.2."""

BACKLOG_MAX_AGE_S: Final = 3_600.0
"""A reading still unsent after an hour: the link or the broker needs attention."""

OFFLINE_FOR: Final = "15m"
"""A gateway offline this long is not a blip."""

STATUS_LOOKBACK_D: Final = 400
"""How far back "now" looks for a gateway's last status (written on change only, so cheap):
a gateway lost for a year is still offline, not forgotten."""

DEVICE_ERRORS_WINDOW_S: Final = 600
"""Read errors are counted over this window (several health reports at the default 60 s)."""

CRITICAL_HOLD: Final = "3m"
"""How long a per-reading critical condition (fog, icing) must hold before it pages: past a
lone spike at road-weather intervals of up to a minute with one poll missed and the next a
little late (2m would be exactly two intervals: no margin at a 1-minute evaluation)."""

WATER_CLASS_HOLD: Final = "15m"
"""How long a water class worse than III must hold: past a lone outlying sample at sonde
intervals of up to 5 min with one sample missed and the next late."""
