"""Conditions: transition times move only on status flips; the summary is always all five."""

from __future__ import annotations

import datetime as dt

from prfaas.operator.controller.conditions import (
    CONDITION_TYPES,
    Outcome,
    condition,
    merge_conditions,
    set_condition,
    summarize,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def _by_type(conds: list[dict]) -> dict[str, dict]:
    return {c["type"]: c for c in conds}


def test_set_condition_moves_time_only_when_status_changes() -> None:
    conds: list[dict] = []
    assert set_condition(conds, condition("Ready", "False", "Waiting", "a"), T0)
    assert conds[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert not set_condition(conds, condition("Ready", "False", "Waiting", "a"), T1)
    assert set_condition(conds, condition("Ready", "False", "Other", "b"), T1)
    assert conds[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert conds[0]["reason"] == "Other"
    assert set_condition(conds, condition("Ready", "True", "Done"), T1)
    assert conds[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"
    assert len(conds) == 1


def test_summary_is_always_the_full_ordered_list() -> None:
    for outcome in (
        Outcome(),
        Outcome(planned=True),
        Outcome(stalled_reason="x"),
        Outcome(missing=["DecodeCluster/a"]),
        Outcome(not_available=["c/d (0/1)"]),
    ):
        assert [c["type"] for c in summarize(outcome)] == list(CONDITION_TYPES)


def test_ready_when_planned_and_everything_available() -> None:
    c = _by_type(summarize(Outcome(generation=3, planned=True, children=4)))
    assert c["Ready"]["status"] == "True" and c["Ready"]["observedGeneration"] == 3
    assert c["Degraded"]["status"] == "False" and c["Stalled"]["status"] == "False"
    assert c["Progressing"]["status"] == "False" and c["Reconciling"]["status"] == "False"


def test_rolling_out_is_progressing_and_reconciling() -> None:
    c = _by_type(summarize(Outcome(planned=True, not_available=["pd/Deployment/x (1/5)"])))
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "ReplicasUnavailable"
    assert c["Progressing"]["status"] == "True" and c["Reconciling"]["status"] == "True"
    assert "x (1/5)" in c["Ready"]["message"]


def test_missing_and_unreachable_clusters_degrade_naming_them() -> None:
    c = _by_type(summarize(Outcome(planned=True, missing=["PrefillCluster/p"], unreachable=["d"])))
    assert c["Degraded"]["status"] == "True" and c["Ready"]["reason"] == "ClusterMissing"
    assert "PrefillCluster/p" in c["Degraded"]["message"] and "d" in c["Degraded"]["message"]
    assert c["Stalled"]["status"] == "False"


def test_infeasible_is_stalled_with_the_reason() -> None:
    c = _by_type(summarize(Outcome(planned=True, stalled_reason="spec.slo.tpot too low")))
    assert c["Stalled"]["status"] == "True" and c["Stalled"]["message"] == "spec.slo.tpot too low"
    assert c["Degraded"]["status"] == "True" and c["Ready"]["status"] == "False"
    assert c["Progressing"]["status"] == "False"


def test_merge_drops_foreign_types_and_keeps_order() -> None:
    old = [
        {"type": "Foo", "status": "True"},
        {"type": "Stalled", "status": "False", "lastTransitionTime": "2025-01-01T00:00:00Z"},
    ]
    merged, changed = merge_conditions(old, summarize(Outcome(planned=True)), T0)
    assert changed and [c["type"] for c in merged] == list(CONDITION_TYPES)
    assert _by_type(merged)["Stalled"]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    again, changed = merge_conditions(merged, summarize(Outcome(planned=True)), T1)
    assert not changed and again == merged
