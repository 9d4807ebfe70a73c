"""What each phase of a ServingPlan pass hands on: its result, or why the pass stops there.

A pass is load → plan → build → apply per cluster → report (``Reconciler._reconcile``). Load,
plan and build each return what the next phase needs, or a halt: ``Stalled`` (the spec cannot be
served as written: invalid, infeasible, or a plan the builders reject) or ``Degraded`` (objects
it names are missing). A halted pass touches nothing that runs. Apply never halts the pass: each
cluster yields ``ClusterApplied`` or ``ClusterFailed`` and the other clusters go on. Report folds
every result into one ``Outcome`` (``record``) and writes the status once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prfaas.operator.api import models as api
from prfaas.operator.controller.builders import ClusterTarget
from prfaas.operator.controller.clients import ClusterClient
from prfaas.operator.controller.conditions import Outcome
from prfaas.planner.plan import Plan

__all__ = [
    "Built",
    "ClusterApplied",
    "ClusterFailed",
    "ClusterKind",
    "ClusterResult",
    "Degraded",
    "Halt",
    "Loaded",
    "Planned",
    "Stalled",
    "record",
]

ClusterKind = Literal["PrefillCluster", "DecodeCluster"]


@dataclass(frozen=True, slots=True)
class Stalled:
    """The spec cannot be served as written; the reason becomes the ``Stalled`` condition."""

    reason: str


@dataclass(frozen=True, slots=True)
class Degraded:
    """Objects the ServingPlan names do not exist (``Kind/name``)."""

    missing: tuple[str, ...]


Halt = Stalled | Degraded


@dataclass(frozen=True, slots=True)
class Loaded:
    """Load's result: the ServingPlan and what it names, validated, and a client per cluster
    that could be reached."""

    serving_plan: api.ServingPlan
    prefill: tuple[api.PrefillCluster, ...]
    decode: tuple[api.DecodeCluster, ...]
    links: tuple[api.InterDCLink, ...]
    clusters: dict[str, tuple[ClusterKind, api.PrefillClusterSpec | api.DecodeClusterSpec]]
    clients: dict[str, ClusterClient]
    unreachable: tuple[str, ...] = ()
    """Clusters without a client (their children are kept as they run)."""
    pod_monitor: dict[str, bool] = field(default_factory=dict)
    """Per reachable cluster: it serves ``monitoring.coreos.com/v1`` PodMonitors."""
    previous_plan: dict[str, Any] | None = None
    """``status.plan`` before this pass (the autoscaler's stabilisation compares with it)."""

    @property
    def spec(self) -> api.ServingPlanSpec:
        return self.serving_plan.spec


@dataclass(frozen=True, slots=True)
class Planned:
    """Plan's result: a feasible plan and the autoscaling status it was planned with."""

    plan: Plan
    scaling_status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Built:
    """Build's result: every cluster's target and children."""

    targets: dict[str, ClusterTarget]
    children: dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class ClusterApplied:
    """One cluster's children are applied; the workloads among them and those not available."""

    cluster: str
    workloads: int
    not_available: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterFailed:
    """One cluster could not be brought to the plan (what runs there is kept)."""

    cluster: str
    error: str
    unreachable: bool = False


ClusterResult = ClusterApplied | ClusterFailed


def record(outcome: Outcome, result: Halt | ClusterResult) -> None:
    """Fold one phase result into ``outcome`` (from which ``summarize`` makes the conditions)."""
    if isinstance(result, Stalled):
        outcome.stalled_reason = result.reason
    elif isinstance(result, Degraded):
        outcome.missing.extend(result.missing)
    elif isinstance(result, ClusterApplied):
        outcome.children += result.workloads
        outcome.not_available.extend(result.not_available)
    elif result.unreachable:
        outcome.unreachable.append(result.cluster)
    else:
        outcome.errors.append(result.error)
