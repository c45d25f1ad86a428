"""A typed InfluxQL query target for grafana-foundation-sdk, which ships no InfluxDB query builder."""

from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants

DATASOURCE_UID = "ecotel-influxdb"
DATASOURCE_TYPE = "influxdb"


class InfluxQLQuery(cogvariants.Dataquery):
    """Grafana's InfluxDB target in raw-InfluxQL mode (the form 1.x, 2.x via DBRP, and 3.x serve)."""

    def __init__(
        self,
        query: str = "",
        ref_id: str = "A",
        alias: str = "",
        result_format: Literal["time_series", "table"] = "time_series",
    ) -> None:
        self.query = query
        self.ref_id = ref_id
        self.alias = alias
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        target: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            target["alias"] = self.alias
        return target


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """Builder of an InfluxQLQuery, usable wherever the SDK takes a query builder."""

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(query=query)

    def build(self) -> InfluxQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def alias(self, alias: str) -> Self:
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self
