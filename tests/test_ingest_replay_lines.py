"""A replayed point's measurement, tags and time read back from its line, and the windows they touch."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.identifiers import IDENTIFIER_PATTERN
from pipelines.analytics.energy import Window
from pipelines.derive_config import DeriveSettings
from pipelines.line_protocol import escape_measurement, escape_string_field, series_key
from pipelines.line_series import Series, parse_series
from pipelines.replay import windows_of_line

names = st.from_regex(IDENTIFIER_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 64)
texts = st.text(max_size=30)


@given(
    kind=names,
    channel=st.none() | names,
    device=names,
    gateway=names,
    site=names,
    note=texts,
    value=st.floats(allow_nan=False, allow_infinity=False),
    time_ns=st.integers(-(2**62), 2**62),
)
def test_a_line_reads_back_as_the_series_it_was_made_from(
    kind: str,
    channel: str | None,
    device: str,
    gateway: str,
    site: str,
    note: str,
    value: float,
    time_ns: int,
) -> None:
    key = series_key(kind, "lane" if channel is not None else None, channel, device, gateway, site)
    # A string field with spaces, quotes and backslashes before the time: the time still reads.
    line = f'{key} value={value!r},note="{escape_string_field(note)}" {time_ns}'
    tags = {"device": device, "gateway": gateway, "site": site}
    if channel is not None:
        tags["lane"] = channel
    assert parse_series(line) == Series(kind, tags, time_ns)


# One line, and no backslash before the separator (ambiguous in line protocol itself).
@given(measurement=texts.filter(lambda s: s and "\n" not in s and not s.endswith("\\")))
def test_a_measurement_with_commas_and_spaces_reads_back(measurement: str) -> None:
    line = f"{escape_measurement(measurement)} x=1.0 5"
    assert parse_series(line) == Series(measurement, {}, 5)


@pytest.mark.parametrize(
    "line",
    ["", "m", "m x=1.0", 'm note="a 1"', "m,site x=1.0 5", "m x=1.0 soon", ",a=b x=1 5"],
)
def test_what_is_not_a_point_with_a_time_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match=r"line-protocol|tag|field|timestamp"):
        parse_series(line)


def test_a_raw_traffic_reading_touches_its_quarter_hour_and_hour_and_other_points_none() -> None:
    settings = DeriveSettings(highway_utc_offset_h=0)
    at = datetime(2026, 3, 2, 10, 20, 30, tzinfo=UTC)
    ns = int(at.timestamp()) * 10**9
    key = series_key("traffic_detector", "lane", "1", "radar 1", "gw", "G6 km 12")
    windows = windows_of_line(settings, f"{key} volume=12.0,interval_s=60.0 {ns}")
    assert {(w.family, w.site, w.window, w.start) for w in windows} == {
        ("traffic", "G6 km 12", Window.QUARTER_HOUR, at.replace(minute=15, second=0)),
        ("traffic", "G6 km 12", Window.HOUR, at.replace(minute=0, second=0)),
    }
    derived = series_key("traffic_flow", "lane", "1", "radar 1", "gw", "G6 km 12")
    assert windows_of_line(settings, f"{derived} flow_vph=720.0 {ns}") == set()
    status = f"gateway_status,gateway=gw,site=s online=1.0 {ns}"
    assert windows_of_line(settings, status) == set()
    assert windows_of_line(settings, "not a point") == set()
