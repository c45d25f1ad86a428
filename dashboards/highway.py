"""The highway dashboard's own views: icing risk and the art. 81 low-visibility speed-limit tier."""

from collections.abc import Sequence

from dashboards import limits, names
from dashboards.panels import SERIES_FILTER, Panel, series_panel, state_panel

ICING_LEVELS = {0: ("none", "green"), 1: ("risk", "orange"), 2: ("icy", "red")}
VISIBILITY_TIERS = {
    0: ("normal", "green"),
    1: ("< 200 m: max 60 km/h", "yellow"),
    2: ("< 100 m: max 40 km/h", "orange"),
    3: ("< 50 m: max 20 km/h, leave", "red"),
}


def icing_panel() -> Panel:
    return state_panel(
        "Road icing risk",
        "Surface at or below 0 degC and wet, or at or below the dew point (risk); "
        "ice, snow or frost reported (icy). From the ingest's road_safety.",
        f'SELECT last("{names.ICING_LEVEL_FIELD}") FROM "{names.ROAD_SAFETY}" {SERIES_FILTER} '
        'GROUP BY time($__interval), "site", "device" fill(none)',
        alias="$tag_site $tag_device",
        steps=[(None, "green"), (1, "orange"), (2, "red")],
        mappings=ICING_LEVELS,
    )


def visibility_tier_panel() -> Panel:
    return state_panel(
        "Low-visibility speed-limit tier (art. 81)",
        "Expressway limits by visibility: under 200 m 60 km/h, under 100 m 40 km/h, "
        "under 50 m 20 km/h and leave at the next exit.",
        f'SELECT max("{names.VISIBILITY_TIER_FIELD}") FROM "{names.ROAD_SAFETY}" {SERIES_FILTER} '
        'GROUP BY time($__interval), "site", "device" fill(none)',
        alias="$tag_site $tag_device",
        steps=[(None, "green"), (1, "yellow"), (2, "orange"), (3, "red")],
        mappings=VISIBILITY_TIERS,
    )


def visibility_panel() -> Panel:
    under_50, under_100, under_200 = limits.VISIBILITY_TIERS_M
    return series_panel(
        "Visibility against the art. 81 tiers (m)",
        "Least visibility per interval; the colours are the speed-limit tiers.",
        f'SELECT min("visibility") FROM "road_weather" {SERIES_FILTER} '
        'GROUP BY time($__interval), "site", "device" fill(none)',
        alias="$tag_site $tag_device",
        unit="lengthm",
        decimals=0,
        steps=[(None, "red"), (under_50, "orange"), (under_100, "yellow"), (under_200, "green")],
    )


def dew_point_panel() -> Panel:
    return series_panel(
        "Dew point (degC)",
        "Dew point of the air above the road (Magnus); a surface at or below it can ice.",
        f'SELECT mean("{names.DEW_POINT_FIELD}") FROM "{names.ROAD_SAFETY}" {SERIES_FILTER} '
        'GROUP BY time($__interval), "site", "device" fill(none)',
        alias="$tag_site $tag_device",
        unit="celsius",
        decimals=1,
        steps=[(None, "blue"), (0, "green")],
    )


def sections() -> list[tuple[str, Sequence[Panel]]]:
    return [
        (
            "Road safety",
            [icing_panel(), visibility_tier_panel(), visibility_panel(), dew_point_panel()],
        )
    ]
