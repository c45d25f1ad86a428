"""The ecology dashboard's own views: the station map, the GB 3838-2002 water class and the permafrost profile."""

from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import geomap, testdata
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.testdata import TestDataQueryType

from dashboards import limits, names
from dashboards.influxql import InfluxQL
from dashboards.panels import (
    DATASOURCE,
    SERIES_FILTER,
    SITE_FILTER,
    Panel,
    state_panel,
    table_panel,
    thresholds,
)
from dashboards.sites import Station, sites_csv

STATIC_DATASOURCE_UID = "ecotel-static"
"""Grafana's built-in TestData source, provisioned under this uid: it serves the station CSV."""

WATER_CLASSES = {
    1: ("I", "green"),
    2: ("II", "green"),
    3: ("III", "yellow"),
    4: ("IV", "orange"),
    5: ("V", "red"),
    6: ("inferior V", "dark-red"),
}


def station_map(stations: Sequence[Station]) -> Panel:
    """Stations at their configured coordinates, coloured by the latest battery voltage.

    Query ``sites`` is the station list (CSV from the sites file, served by
    Grafana's TestData source); query ``A`` the latest battery voltage per site
    from InfluxDB; Grafana joins them on the ``site`` column.
    """
    sites = (
        testdata.Dataquery()
        .ref_id("sites")
        .datasource(
            model.DataSourceRef(type_val="grafana-testdata-datasource", uid=STATIC_DATASOURCE_UID)
        )
        .scenario_id(TestDataQueryType.CSV_CONTENT)
        .csv_content(sites_csv(list(stations)))
    )
    battery = InfluxQL(
        'SELECT last("battery_voltage") AS "battery_voltage" FROM "station_health" '
        f'{SITE_FILTER} GROUP BY "site"'
    ).table()
    markers = (
        common_builders.MapLayerOptions()
        .type("markers")
        .name("Stations")
        .location(
            common_builders.FrameGeometrySource()
            .mode(common.FrameGeometrySourceMode.COORDS)
            .latitude("latitude")
            .longitude("longitude")
        )
        .config(
            {
                "showLegend": True,
                "style": {
                    "color": {"field": "battery_voltage", "fixed": "grey"},
                    "size": {"fixed": 8},
                    "text": {"field": "site", "mode": "field"},
                },
            }
        )
        .tooltip(True)
    )
    center_lat = sum(s.latitude for s in stations) / len(stations)
    center_lon = sum(s.longitude for s in stations) / len(stations)
    return (
        geomap.Panel()
        .title("Stations (colour: battery voltage now)")
        .description(
            "Coordinates from the sites file (deploy/grafana/sites.toml); grey: no report in the range."
        )
        .datasource(DATASOURCE)
        .with_target(sites)
        .with_target(battery)
        .with_transformation(
            model.DataTransformerConfig(
                id_val="joinByField", options={"byField": "site", "mode": "outer"}
            )
        )
        .view(
            geomap.MapViewConfig()
            .id("coords")
            .lat(round(center_lat))
            .lon(round(center_lon))
            .zoom(5)
        )
        .basemap(common_builders.MapLayerOptions().type("default").name("Basemap"))
        .layers([markers])
        .unit("volt")
        .decimals(2)
        .thresholds(thresholds([(None, "red"), (limits.BATTERY_LOW_V, "green")]))
        .height(10)
        .span(12)
    )


def water_class_panel() -> Panel:
    return state_panel(
        "Water quality class (GB 3838-2002)",
        "Worst class over pH, dissolved oxygen, permanganate index, NH3-N and total phosphorus "
        "(the ingest's water_quality_class); worse than III raises an alert.",
        f'SELECT last("{names.WATER_CLASS_FIELD}") FROM "{names.WATER_CLASS}" {SERIES_FILTER} '
        'GROUP BY time($__interval), "site", "device" fill(none)',
        alias="$tag_site $tag_device",
        steps=[(None, "green"), (3, "yellow"), (4, "orange"), (5, "red")],
        mappings=WATER_CLASSES,
    )


def permafrost_profile() -> Panel:
    return table_panel(
        "Permafrost profile now: soil temperature by depth",
        "Latest soil temperature at each depth (cm); below 0 degC the ground is frozen.",
        'SELECT last("soil_temperature") AS "soil_temperature" FROM "soil_profile" '
        f'{SERIES_FILTER} GROUP BY "site", "device", "depth_cm"',
        unit="celsius",
        decimals=2,
        steps=[(None, "blue"), (0, "orange")],
        span=12,
    )


def sections(stations: Sequence[Station]) -> list[tuple[str, Sequence[Panel]]]:
    return [
        ("Stations", [station_map(stations), water_class_panel()]),
        ("Permafrost", [permafrost_profile()]),
    ]
