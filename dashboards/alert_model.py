"""Grafana's alert-rule provisioning file (apiVersion 1) as pydantic models, field names as Grafana reads them.

After Grafana's pkg/services/provisioning/alerting/rules_types.go (AlertRuleGroupV1,
AlertRuleV1, QueryV1); unknown keys are refused so that a typo fails here, not
silently in Grafana.
"""

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EXPRESSION_DATASOURCE_UID = "__expr__"
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def _duration(value: str) -> str:
    if not _DURATION.fullmatch(value):
        raise ValueError(f"{value!r} is not a Prometheus duration (e.g. 1m, 15m, 1h, 1d)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RelativeTimeRange(_Strict):
    """Seconds before the evaluation time: the query covers [now - from, now - to]."""

    from_: int = Field(alias="from", ge=0)
    to: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "RelativeTimeRange":
        if self.to > self.from_:
            raise ValueError("relativeTimeRange.to must not exceed from")
        return self


class Query(_Strict):
    refId: str = Field(min_length=1)
    queryType: str = ""
    relativeTimeRange: RelativeTimeRange
    datasourceUid: str = Field(min_length=1)
    model: dict[str, Any]

    @model_validator(mode="after")
    def _model_matches(self) -> "Query":
        if self.model.get("refId", self.refId) != self.refId:
            raise ValueError(f"model.refId differs from refId {self.refId}")
        if self.datasourceUid == EXPRESSION_DATASOURCE_UID:
            kind = self.model.get("type")
            if kind not in {"reduce", "threshold", "math", "resample", "classic_conditions"}:
                raise ValueError(f"expression {self.refId}: unknown type {kind!r}")
            if kind in {"reduce", "threshold"} and not self.model.get("expression"):
                raise ValueError(f"expression {self.refId}: no input expression")
        elif not str(self.model.get("query", "")).strip():
            raise ValueError(f"query {self.refId}: no InfluxQL in model.query")
        return self


class Rule(_Strict):
    uid: str = Field(min_length=1, max_length=40, pattern=r"^[a-zA-Z0-9_-]+$")
    title: str = Field(min_length=1)
    condition: str = Field(min_length=1)
    data: list[Query] = Field(min_length=1)
    dashboardUid: str | None = None
    panelId: int | None = None
    noDataState: Literal["NoData", "Alerting", "OK", "KeepLast"] = "NoData"
    execErrState: Literal["Error", "Alerting", "OK", "KeepLast"] = "Error"
    for_: str = Field(default="0s", alias="for")
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    isPaused: bool = False

    _check_for = field_validator("for_")(lambda cls, v: _duration(v))

    @model_validator(mode="after")
    def _condition_exists(self) -> "Rule":
        refs = [q.refId for q in self.data]
        if len(set(refs)) != len(refs):
            raise ValueError(f"rule {self.uid}: refIds repeat: {refs}")
        if self.condition not in refs:
            raise ValueError(f"rule {self.uid}: condition {self.condition} is not a refId of data")
        for q in self.data:
            source = q.model.get("expression")
            if q.datasourceUid == EXPRESSION_DATASOURCE_UID and source and source not in refs:
                raise ValueError(f"rule {self.uid}: {q.refId} reads unknown {source}")
        return self


class RuleGroup(_Strict):
    orgId: int = Field(default=1, ge=1)
    name: str = Field(min_length=1)
    folder: str = Field(min_length=1)
    interval: str

    rules: list[Rule] = Field(min_length=1)

    _check_interval = field_validator("interval")(lambda cls, v: _duration(v))


class DeleteRule(_Strict):
    orgId: int = 1
    uid: str


class AlertRulesFile(_Strict):
    """The whole file: ``apiVersion: 1`` and its groups."""

    apiVersion: Literal[1]
    groups: list[RuleGroup] = Field(default_factory=list)
    deleteRules: list[DeleteRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_uids(self) -> "AlertRulesFile":
        uids = [r.uid for g in self.groups for r in g.rules]
        if len(set(uids)) != len(uids):
            raise ValueError("rule uids repeat across the file")
        return self
