"""Measurement and field names the dashboards and alerts read beyond the catalog: derived data, gateway and ingest health.

The derived measurements are written by the ingest's analytics (docs/analytics.md);
keeping every such name here means a rename there is one edit here.
"""

from typing import Final

# Per reading (docs/analytics.md): same tags as the raw point.
WATER_CLASS: Final = "water_quality_class"
WATER_CLASS_FIELD: Final = "class"
WATER_CLASS_LABEL_FIELD: Final = "label"
ROAD_SAFETY: Final = "road_safety"
ICING_LEVEL_FIELD: Final = "icing_level"
VISIBILITY_TIER_FIELD: Final = "visibility_tier"
SPEED_LIMIT_FIELD: Final = "speed_limit_kmh"
DEW_POINT_FIELD: Final = "dew_point"

# Per window (docs/analytics.md): tags site and window ("15min", "1h", "1d").
PUE: Final = "pue"
PUE_FIELD: Final = "pue"
FACILITY_KWH_FIELD: Final = "facility_kwh"
IT_KWH_FIELD: Final = "it_kwh"
REF: Final = "ref"
REF_FIELD: Final = "ref"
WINDOW_TAG: Final = "window"
QUARTER_HOUR: Final = "15min"
HOUR: Final = "1h"
DAY: Final = "1d"

# Gateway availability and health (pipelines/line_protocol.py).
STATUS: Final = "gateway_status"
HEALTH: Final = "gateway_health"
DEVICE_ERRORS: Final = "gateway_device_errors"

# The ingest's own counters (pipelines/stats_points.py).
INGEST_STATS: Final = "ingest_stats"
INGEST_REJECTED: Final = "ingest_rejected"
