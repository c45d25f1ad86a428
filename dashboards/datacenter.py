"""The data-center dashboard's own views: PUE per hour and per day, power, clean-energy share."""

from collections.abc import Sequence

from grafana_foundation_sdk.builders import timeseries

from dashboards import limits, names
from dashboards.panels import SERIES_FILTER, SITE_FILTER, Panel, above, series_panel

IT_CIRCUITS = ("ups_output", "pdu_output", "it_load")
FACILITY_CIRCUIT = "utility"


def window_query(select: str, measurement: str, window: str) -> str:
    """The figures of one window length, each at its own timestamp: the window's start.

    No GROUP BY time: its buckets are aligned to UTC, and a window starts at the
    site's local midnight or hour (utc_offset_h may be +8 or +5.5), so a bucket
    would draw a day's figure up to a day early.
    """
    return (
        f'SELECT {select} FROM "{measurement}" {SITE_FILTER} '
        f'AND "{names.WINDOW_TAG}" = \'{window}\' GROUP BY "site"'
    )


_WINDOW_MS = {names.QUARTER_HOUR: 900_000, names.HOUR: 3_600_000, names.DAY: 86_400_000}


def _gaps_shown(panel: timeseries.Panel, window: str) -> timeseries.Panel:
    """A window left out (a gap, a replaced meter) is a break in the line, not a straight line
    to the next window's value: points further apart than one window and a tenth are not joined."""
    return panel.insert_nulls(_WINDOW_MS[window] * 11 // 10)


def pue_panel(window: str, label: str) -> Panel:
    return _gaps_shown(
        series_panel(
            f"PUE per {label}",
            f"Facility (utility) energy / IT energy over each {label}, from the energy counters "
            "(ISO/IEC 30134-2; the ingest's pue measurement). Windows with a missing, reset or "
            f"implausible counter have no value. Each figure is drawn at its {label}'s start on "
            f"the site's local clock. Target {limits.PUE_TARGET}.",
            window_query(f'"{names.PUE_FIELD}"', names.PUE, window),
            alias="$tag_site",
            unit="none",
            decimals=3,
            # Red over the target, as the alert (">"): PUE exactly at the target is green.
            steps=[(None, "green"), (above(limits.PUE_TARGET), "red")],
        ),
        window,
    )


def power_panel() -> Panel:
    circuits = "|".join((FACILITY_CIRCUIT, *IT_CIRCUITS))
    return series_panel(
        "IT and facility power (kW)",
        "Active power on the utility feed (facility) and at the IT metering points.",
        f'SELECT mean("active_power_kw") FROM "energy_meter" {SERIES_FILTER} '
        f'AND "circuit" =~ /^({circuits})$/ '
        'GROUP BY time($__interval), "site", "circuit" fill(none)',
        alias="$tag_site $tag_circuit",
        unit="kwatt",
        decimals=1,
        steps=[(None, "green")],
    )


def energy_panel() -> Panel:
    """Energy per quarter hour from the ingest's interval energies, not from counter differences."""
    return _gaps_shown(
        series_panel(
            "Facility and IT energy per 15 min (kWh)",
            "Energy used in each quarter hour on the utility feed (facility) and at the IT metering "
            "points, as the ingest computes it for PUE (the pue measurement): counter rollovers "
            "handled; a replaced meter, an implausible rise or a gap in the readings leaves the "
            "quarter hour out rather than counting it as one interval's use.",
            window_query(
                f'"{names.FACILITY_KWH_FIELD}" AS "facility", "{names.IT_KWH_FIELD}" AS "IT"',
                names.PUE,
                names.QUARTER_HOUR,
            ),
            alias="$tag_site $col",
            unit="kwatth",
            decimals=1,
            steps=[(None, "green")],
        ),
        names.QUARTER_HOUR,
    )


def clean_share_panel() -> Panel:
    return series_panel(
        "Clean-energy share per hour (REF)",
        "Renewable / facility energy (ISO/IEC 30134-3), where a renewable feed is metered. "
        "Each figure is drawn at its hour's start on the site's local clock.",
        window_query(f'"{names.REF_FIELD}" * 100', names.REF, names.HOUR),
        alias="$tag_site",
        unit="percent",
        decimals=1,
        steps=[(None, "orange"), (50, "green")],
    )


def sections() -> list[tuple[str, Sequence[Panel]]]:
    return [
        (
            "Efficiency",
            [
                pue_panel(names.HOUR, "hour"),
                pue_panel(names.DAY, "day"),
                power_panel(),
                energy_panel(),
                clean_share_panel(),
            ],
        )
    ]
