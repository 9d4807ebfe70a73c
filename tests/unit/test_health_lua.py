"""The Argo CD health script, run in a real Lua interpreter (lupa) against example statuses —
including statuses made by the operator's own ``summarize``."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Any

import lupa
import pytest
from prfaas.operator.controller.conditions import Outcome, merge_conditions, summarize

SCRIPT = resources.files("prfaas.operator.controller").joinpath("data/health.lua").read_text()
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return hs["status"], hs["message"] or ""


def plan(outcome: Outcome | None, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "ServingPlan",
        "metadata": {"name": "p", "generation": generation},
    }
    if outcome is not None:
        conds, _ = merge_conditions([], summarize(outcome), NOW)
        obj["status"] = {"observedGeneration": observed, "conditions": conds}
    return obj


@pytest.mark.parametrize(
    ("outcome", "status", "needle"),
    [
        (Outcome(planned=True, children=4), "Healthy", "4 children available"),
        (Outcome(planned=True, not_available=["pd/Deployment/d (1/5)"]), "Progressing", "1/5"),
        (Outcome(planned=True, stalled_reason="TPOT SLO 1ms is below ..."), "Degraded", "1ms"),
        (Outcome(planned=True, missing=["PrefillCluster/x"]), "Degraded", "PrefillCluster/x"),
        (Outcome(planned=True, unreachable=["dc-a"]), "Degraded", "dc-a"),
        (Outcome(), "Progressing", "no plan yet"),
    ],
)
def test_serving_plan_health_follows_the_conditions(
    outcome: Outcome, status: str, needle: str
) -> None:
    got, message = health(plan(outcome))
    assert got == status and needle in message


def test_generation_not_yet_observed_is_progressing() -> None:
    got, message = health(plan(Outcome(planned=True), generation=3, observed=2))
    assert got == "Progressing" and "generation 3" in message


def test_no_status_and_deleting_are_progressing() -> None:
    assert health(plan(None))[0] == "Progressing"
    obj = plan(Outcome(planned=True))
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert health(obj) == (
        "Progressing",
        "Deleting: waiting for children in every cluster to be removed",
    )


@pytest.mark.parametrize(
    ("reach", "status"), [("True", "Healthy"), ("False", "Degraded"), ("Unknown", "Progressing")]
)
def test_cluster_health_is_reachability(reach: str, status: str) -> None:
    obj = {
        "kind": "DecodeCluster",
        "metadata": {"name": "d"},
        "status": {
            "reachable": reach == "True",
            "conditions": [{"type": "Reachable", "status": reach, "reason": "R", "message": "m"}],
        },
    }
    assert health(obj)[0] == status


def test_link_health() -> None:
    ok = {
        "kind": "InterDCLink",
        "metadata": {"name": "l"},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Provisioned",
                    "message": "provisioned 100 Gbps, not measured",
                }
            ]
        },
    }
    assert health(ok) == ("Healthy", "Provisioned: provisioned 100 Gbps, not measured")
    dead = {
        "kind": "InterDCLink",
        "metadata": {"name": "l"},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "NoBandwidth", "message": "0 Gbps"}
            ]
        },
    }
    assert health(dead)[0] == "Degraded"
