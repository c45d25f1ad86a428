"""The meter map of the long data-center trace (datacenter_3d.trace.gz): which circuit is what."""

from typing import Any

SITE = "Gonghe DC2"


def _meter(circuit: str) -> list[dict[str, Any]]:
    return [{"device": "meters-1", "circuit": circuit, "max_power_kw": 5000}]


DATACENTER: dict[str, Any] = {
    "site": SITE,
    "facility": _meter("utility"),
    "it": _meter("ups_output"),
    "renewable": _meter("renewable"),
    "zones": [{"name": "hall-a", "it": _meter("it_load"), "infrastructure": _meter("cooling")}],
}
"""One ``[[derive.datacenters]]`` entry, as DeriveSettings takes it."""
