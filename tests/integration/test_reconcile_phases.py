"""The phases of one ServingPlan pass (load → plan → build → apply per cluster → report), driven
directly on the emulated API servers without kopf, so each pass is exactly one call.

Each phase either hands on its result or halts the pass with ``Stalled``/``Degraded``; a halted
pass creates nothing, and every pass writes the ServingPlan's status at most once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from prfaas.operator.controller.clients import ClientPool
from prfaas.operator.controller.conditions import Outcome
from prfaas.operator.controller.phases import (
    ClusterApplied,
    ClusterFailed,
    Degraded,
    Stalled,
    record,
)
from prfaas.operator.controller.reconcile import (
    PlannerFn,
    PlanRequest,
    Reconciler,
    default_planner,
)
from prfaas.operator.controller.runtime import local_client
from prfaas.operator.controller.settings import OperatorSettings
from prfaas.planner.plan import Plan

from .conftest import OPERATOR_NS, SECRET, World, case_study

STATUS = "patch /apis/prfaas.io/v1alpha1/namespaces/default/servingplans/hybrid-1t/status"
LOCAL_WORKLOADS = {"hybrid-1t-pd-h20-both", "hybrid-1t-pd-h20-router"}  # PD-P + PD-D: one pool
REMOTE_WORKLOADS = {"hybrid-1t-prfaas-h200-prefill"}


@pytest_asyncio.fixture()
async def make(world: World) -> AsyncIterator[Any]:
    """``make(planner)`` → a ``Reconciler`` on the emulators (closed after the test)."""
    made: list[Reconciler] = []

    def _make(planner: PlannerFn = default_planner) -> Reconciler:
        settings = OperatorSettings()
        settings.reconcile.apply_mode = "merge"
        settings.reconcile.namespace = OPERATOR_NS
        settings.retry.api_retries = 1
        settings.retry.api_backoff_seconds = 0.01
        pool = ClientPool(
            local_client(settings, str(world.local.url)),
            namespace=OPERATOR_NS,
            client_options={"retries": 1, "backoff": 0.01},
        )
        rec = Reconciler(pool, settings, planner=planner)
        made.append(rec)
        return rec

    yield _make
    for rec in made:
        await rec.pool.close()


async def _create(world: World, *kinds: str, **edits: Any) -> None:
    docs = case_study()
    docs["ServingPlan"]["spec"].update(edits)
    for kind in kinds or ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])


def _status_writes(world: World) -> int:
    return len(world.local[STATUS])


async def test_a_pass_applies_every_cluster_and_writes_the_status_once(
    world: World, make: Any
) -> None:
    await _create(world)
    rec = make()
    outcome = await rec.reconcile_plan("default", "hybrid-1t")
    assert outcome is not None and outcome.planned and not outcome.stalled_reason
    assert set(world.children(world.local)) == LOCAL_WORKLOADS
    assert set(world.children(world.remote)) == REMOTE_WORKLOADS
    assert outcome.children == 3 and len(outcome.not_available) == 3
    assert _status_writes(world) == 1
    status = (world.get_cr("ServingPlan", "hybrid-1t", "default") or {})["status"]
    assert status["ready"] == "0/3" and status["plan"]["feasible"]

    # Nothing changed: the next pass applies again but writes no status.
    await rec.reconcile_plan("default", "hybrid-1t")
    assert _status_writes(world) == 1


async def test_load_stalls_on_an_invalid_spec_naming_the_field(world: World, make: Any) -> None:
    await _create(world, slo={"ttft": "soon", "tpot": "50ms"})
    outcome = await make().reconcile_plan("default", "hybrid-1t")
    assert outcome is not None
    assert outcome.stalled_reason.startswith("invalid spec: spec.slo.ttft")
    assert world.condition("hybrid-1t", "Stalled")["status"] == "True"
    assert not world.children(world.local) and not world.children(world.remote)
    assert _status_writes(world) == 1


async def test_load_degrades_when_a_named_cluster_is_missing(world: World, make: Any) -> None:
    await _create(world, "DecodeCluster", "InterDCLink", "ServingPlan")
    outcome = await make().reconcile_plan("default", "hybrid-1t")
    assert outcome is not None and outcome.missing == ["PrefillCluster/prfaas-h200"]
    assert not outcome.stalled_reason and not outcome.planned
    assert world.condition("hybrid-1t", "Ready")["reason"] == "ClusterMissing"
    assert not world.children(world.local)
    assert _status_writes(world) == 1


@pytest.mark.parametrize(
    ("planner_result", "reason"),
    [
        (Plan(model="m", feasible=False, reason="no GPU fits the SLO"), "no GPU fits the SLO"),
        (RuntimeError("boom"), "the planner failed: boom"),
    ],
)
async def test_plan_stalls_when_the_planner_finds_nothing(
    world: World, make: Any, planner_result: Plan | Exception, reason: str
) -> None:
    def planner(_: PlanRequest) -> Plan:
        if isinstance(planner_result, Exception):
            raise planner_result
        return planner_result

    await _create(world)
    outcome = await make(planner).reconcile_plan("default", "hybrid-1t")
    assert outcome is not None and outcome.stalled_reason == reason
    assert not world.children(world.local) and not world.children(world.remote)
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    assert "plan" not in sp["status"] and _status_writes(world) == 1


async def test_build_stalls_on_a_plan_the_builders_reject(world: World, make: Any) -> None:
    def ghost_cluster(request: PlanRequest) -> Plan:
        plan = default_planner(request)
        plan.clusters[0].name = "ghost"
        return plan

    await _create(world)
    outcome = await make(ghost_cluster).reconcile_plan("default", "hybrid-1t")
    assert outcome is not None
    assert outcome.stalled_reason == "the plan uses cluster 'ghost', which has no spec"
    assert not world.children(world.local) and not world.children(world.remote)
    assert _status_writes(world) == 1


async def test_apply_goes_on_past_an_unreachable_cluster(world: World, make: Any) -> None:
    del world.local.objects[("v1/secrets", OPERATOR_NS, SECRET)]
    await _create(world)
    outcome = await make().reconcile_plan("default", "hybrid-1t")
    assert outcome is not None and outcome.unreachable == ["prfaas-h200"]
    assert set(world.children(world.local)) == LOCAL_WORKLOADS  # the reachable cluster applied
    assert outcome.children == 2
    assert world.condition("hybrid-1t", "Ready")["reason"] == "ClusterUnreachable"
    pc = world.get_cr("PrefillCluster", "prfaas-h200") or {}
    assert pc["status"]["reachable"] is False
    assert _status_writes(world) == 1


async def test_apply_records_a_cluster_it_cannot_serve_and_goes_on(
    world: World, make: Any
) -> None:
    def wide_remote_prefill(request: PlanRequest) -> Plan:
        plan = default_planner(request)
        for cp in plan.clusters:
            if cp.name == "prfaas-h200":
                cp.tensor_parallel = 16  # 16 GPUs > 8 per node: needs a LeaderWorkerSet
        return plan

    await _create(world)
    outcome = await make(wide_remote_prefill).reconcile_plan("default", "hybrid-1t")
    assert outcome is not None and len(outcome.errors) == 1
    assert outcome.errors[0].startswith("prfaas-h200: an instance spans several nodes")
    assert set(world.children(world.local)) == LOCAL_WORKLOADS  # the other cluster applied
    assert not world.children(world.remote)
    assert world.condition("hybrid-1t", "Ready")["reason"] == "ApplyFailed"
    assert _status_writes(world) == 1


def test_record_folds_each_phase_result_into_the_outcome() -> None:
    outcome = Outcome()
    record(outcome, ClusterApplied("a", 2, ("a/Deployment/x (0/1)",)))
    record(outcome, ClusterApplied("b", 1))
    record(outcome, ClusterFailed("c", "c: down", unreachable=True))
    record(outcome, ClusterFailed("d", "d: 500"))
    record(outcome, Degraded(("PrefillCluster/p",)))
    record(outcome, Stalled("why"))
    assert outcome.children == 3 and outcome.not_available == ["a/Deployment/x (0/1)"]
    assert outcome.unreachable == ["c"] and outcome.errors == ["d: 500"]
    assert outcome.missing == ["PrefillCluster/p"] and outcome.stalled_reason == "why"
