"""The fleet and pipeline health dashboard: gateways online, their buffers and clocks, and the ingest's own counters."""

from grafana_foundation_sdk.models import dashboard as model

from dashboards import limits, names
from dashboards.domain import add_sections, frame
from dashboards.influxql import InfluxQL
from dashboards.panels import (
    GATEWAY_FILTER,
    Panel,
    above,
    series_panel,
    stat_panel,
    state_panel,
    table_panel,
)

UID = "ecotel-fleet"
# Status is written on change only: "now" looks back far enough to find the last one
# (the same lookback as the offline alert), whatever the dashboard's time range.
_LAST_STATUS = (
    'WHERE "site" =~ /^$site$/ AND "gateway" =~ /^$gateway$/ '
    f"AND time > now() - {limits.STATUS_LOOKBACK_D}d"
)
ONLINE = {0: ("offline", "red"), 1: ("online", "green")}
_HEALTH_INTERVAL = "1m"
_ONLINE_BUCKETS = 3
CLOCK = {0: ("not ok", "red"), 1: ("ok", "green")}


def _site_links() -> list[tuple[str, str]]:
    site = "${__data.fields.site}"
    return [
        (f"{title} data of {site}", f"/d/ecotel-{domain}?var-site={site}&${{__url_time_range}}")
        for domain, title in (
            ("ecology", "Station"),
            ("highway", "Roadside"),
            ("datacenter", "Data-center"),
        )
    ]


def online_over_time() -> Panel:
    """Online while health reports arrive, in every range (the status, written on change only,
    is usually before the range, where fill(previous) cannot see it).

    Buckets of at least the health interval (60 s by default: the panel's min interval); a
    bucket is online when a report came in it or the two before it (one missed report is not an
    outage), and the range is read from three minutes earlier so that its first buckets have
    their two before.
    """
    return state_panel(
        "Online over time",
        "Online while the gateway's health reports arrive (every 60 s by default), offline "
        "when none came in three intervals (3 min in short ranges; over long ranges an outage "
        "shorter than three intervals does not show). A gateway with no report in the range "
        "has no row: "
        '"Gateways now" shows its last status.',
        f'SELECT ceil(moving_average(max("link_up"), {_ONLINE_BUCKETS})) FROM "{names.HEALTH}" '
        'WHERE "site" =~ /^$site$/ AND "gateway" =~ /^$gateway$/ '
        f"AND time >= ${{__from}}ms - {_ONLINE_BUCKETS}m AND time <= ${{__to}}ms "
        'GROUP BY time($__interval), "site", "gateway" fill(0)',
        alias="$tag_site $tag_gateway",
        steps=[(None, "red"), (1, "green")],
        mappings=ONLINE,
    ).interval(_HEALTH_INTERVAL)


def quality_flags() -> Panel:
    """Readings the ingest flagged (docs/ingest.md, field ``quality``), per site, kind and flag."""
    panel = series_panel(
        "Flagged readings (quality: spike, stuck)",
        "Readings stored with a quality flag per interval, per site and kind: spike (a jump "
        "from the previous reading) or stuck (the same value for 10 readings and 30 min). "
        "They are kept and drawn on the domain dashboards; alerts wait past a lone spike.",
        _flag_query("spike"),
        alias="$tag_site $measurement spike",
        unit="short",
        decimals=0,
        steps=[(None, "green"), (1, "orange")],
    )
    return panel.with_target(
        InfluxQL(_flag_query("stuck")).ref_id("B").alias("$tag_site $measurement stuck")
    )


def _flag_query(flag: str) -> str:
    # Every measurement: only the readings of catalog kinds carry a quality field.
    return (
        f'SELECT count("quality") FROM /.*/ {GATEWAY_FILTER} AND "quality" =~ /{flag}/ '
        'GROUP BY time($__interval), "site" fill(none)'
    )


def build_fleet() -> model.Dashboard:
    """Gateways (from gateway_status and gateway_health) and the ingest (ingest_stats, ingest_rejected)."""
    builder = frame(
        UID,
        "Fleet and pipeline health",
        ["fleet"],
        [names.STATUS, names.HEALTH],
        devices=False,
    )
    per_gateway = 'GROUP BY time($__interval), "site", "gateway" fill(none)'
    gateways: list[Panel] = [
        stat_panel(
            "Gateways online now",
            "Gateways whose last status is online, now (whatever the time range).",
            f'SELECT sum("online") FROM (SELECT last("online") AS "online" FROM "{names.STATUS}" '
            f'{_LAST_STATUS} GROUP BY "site", "gateway")',
            alias="online",
            unit="none",
            decimals=0,
            steps=[(None, "green")],
        ),
        stat_panel(
            "Gateways offline now",
            "Gateways whose last status is offline now, whatever the time range "
            "(a clean shutdown or a lost link).",
            f'SELECT sum("offline") FROM (SELECT 1 - last("online") AS "offline" '
            f'FROM "{names.STATUS}" {_LAST_STATUS} GROUP BY "site", "gateway")',
            alias="offline",
            unit="none",
            decimals=0,
            steps=[(None, "green"), (1, "red")],
        ),
        table_panel(
            "Gateways now (links: the site's data)",
            "Last status of each gateway and when it changed (whatever the time range); follow "
            "a row's link to its station's data.",
            # One selector: with two, InfluxQL stamps the row with the range's start, not the
            # status point's own time.
            f'SELECT last("online") AS "online", "reason" FROM "{names.STATUS}" '
            f'{_LAST_STATUS} GROUP BY "site", "gateway"',
            unit="none",
            decimals=0,
            steps=[(None, "red"), (1, "green")],
            links=_site_links(),
            span=12,
        ),
        online_over_time(),
    ]
    buffers: list[Panel] = [
        series_panel(
            "Buffer depth (readings in the outbox)",
            "Readings stored on the gateway and not yet acknowledged by the broker.",
            f'SELECT max("outbox_readings") FROM "{names.HEALTH}" {GATEWAY_FILTER} {per_gateway}',
            alias="$tag_site $tag_gateway",
            unit="short",
            decimals=0,
            steps=[(None, "green")],
        ),
        series_panel(
            "Oldest unsent reading (age)",
            "Age of the oldest reading still in the outbox; over an hour raises an alert.",
            f'SELECT max("oldest_unsent_age_s") FROM "{names.HEALTH}" {GATEWAY_FILTER} {per_gateway}',
            alias="$tag_site $tag_gateway",
            unit="s",
            decimals=0,
            steps=[(None, "green"), (above(limits.BACKLOG_MAX_AGE_S), "red")],
        ),
        state_panel(
            "Clock state",
            "ok: the wall clock is trusted; not ok: unset (no NTP/GNSS yet) or it jumped.",
            f'SELECT min("clock_ok") FROM "{names.HEALTH}" {GATEWAY_FILTER} {per_gateway}',
            alias="$tag_site $tag_gateway",
            steps=[(None, "red"), (1, "green")],
            mappings=CLOCK,
        ),
        series_panel(
            "Device errors (total per device)",
            "Read errors per device since the gateway started.",
            f'SELECT last("errors") FROM "{names.DEVICE_ERRORS}" {GATEWAY_FILTER} '
            'GROUP BY time($__interval), "site", "gateway", "device" fill(none)',
            alias="$tag_site $tag_gateway $tag_device",
            unit="short",
            decimals=0,
            steps=[(None, "green"), (1, "orange")],
        ),
    ]
    ingest: list[Panel] = [
        series_panel(
            "Ingest rate (readings stored per second)",
            "From the ingest's own counters (ingest_stats, every stats interval).",
            f'SELECT non_negative_derivative(last("written"), 1s) FROM "{names.INGEST_STATS}" '
            'WHERE $timeFilter GROUP BY time($__interval), "worker" fill(none)',
            alias="$tag_worker",
            unit="short",
            decimals=1,
            steps=[(None, "green")],
        ),
        series_panel(
            "Rejected readings by reason (total since start)",
            "Each refused reading or message is in the dead-letter store with its reason "
            "(ecotel-ingest dead-letters counts).",
            f'SELECT last("count") FROM "{names.INGEST_REJECTED}" WHERE $timeFilter '
            'GROUP BY time($__interval), "worker", "reason" fill(none)',
            alias="$tag_reason ($tag_worker)",
            unit="short",
            decimals=0,
            steps=[(None, "green"), (1, "orange")],
        ),
        series_panel(
            "Write latency (last InfluxDB write)",
            "Time of the latest batch write to InfluxDB at each report.",
            f'SELECT max("write_latency_s") FROM "{names.INGEST_STATS}" WHERE $timeFilter '
            'GROUP BY time($__interval), "worker" fill(none)',
            alias="$tag_worker",
            unit="s",
            decimals=3,
            steps=[(None, "green"), (1, "orange"), (5, "red")],
        ),
    ]
    sections = [
        ("Gateways", gateways),
        ("Buffers and clocks", buffers),
        ("Ingest", [*ingest, quality_flags()]),
    ]
    return add_sections(builder, sections).build()
