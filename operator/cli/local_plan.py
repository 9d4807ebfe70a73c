"""The plan ``prfaas up`` runs, from the manifests (clusters, link, ServingPlan).

``local_plan`` asks the planner and keeps its decisions (threshold, KV bytes per token, which
clusters and roles exist) but runs one engine per planned (cluster, role): a small host runs
one engine per core. ``direct_local_plan`` is the planner-free layout it falls back to.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prfaas.engine.local.processes import LocalRuntimeError
from prfaas.planner.plan import ClusterPlan, LinkPlan, Plan, RemotePrefill, RouterPlan

__all__ = ["direct_local_plan", "local_plan"]


def local_plan(manifests: Any) -> Plan:
    """The plan ``prfaas up`` runs: the planner's, with one instance per cluster and role.

    The planner (``prfaas.planner.solver.plan``) decides ``t``, the KV bytes per token and
    which clusters and roles exist; on one small host each planned (cluster, role) runs as a
    single engine. If the planner is unavailable or cannot plan these manifests, a direct layout
    is used (``direct_local_plan``) and the plan's notes say why.
    """
    from prfaas.operator.api import models as api

    plans = manifests.of_kind(api.ServingPlan)
    if len(plans) != 1:
        raise LocalRuntimeError(f"expected exactly one ServingPlan, found {len(plans)}")
    if plans[0].spec.model.architecture is None:
        raise LocalRuntimeError(
            "prfaas up runs a tiny generated model: give spec.model.architecture "
            "(a catalog model is too large for this machine)"
        )
    try:
        from prfaas.operator.api.translate import problems_from_manifests
        from prfaas.planner.errors import PlannerError
        from prfaas.planner.solver import plan as planner_plan
    except ImportError as exc:
        return _with_note(direct_local_plan(manifests), f"planner unavailable ({exc})")
    try:
        planned = planner_plan(problems_from_manifests(manifests.resources)[0])
    except (PlannerError, ValueError, IndexError) as exc:
        return _with_note(direct_local_plan(manifests), f"planner failed: {exc}")
    if not planned.feasible:
        return _with_note(direct_local_plan(manifests), f"planner: infeasible: {planned.reason}")
    planned.clusters = [
        replace(c, instances=1, tensor_parallel=1, pipeline_parallel=1)
        for c in planned.clusters
        if c.instances > 0
    ]
    planned.notes.append("prfaas up: one CPU engine per planned cluster and role")
    return planned


def _with_note(plan: Plan, note: str) -> Plan:
    plan.notes.append(note)
    return plan


def direct_local_plan(manifests: Any) -> Plan:
    """One instance per cluster and role named by the ServingPlan, without the planner.

    Every PrefillCluster gets one prefill instance; every DecodeCluster one decode instance
    (which also prefills short prompts). ``t`` is the ServingPlan's ``thresholdTokens`` (or
    256); KV bytes per token and the element size come from the model's architecture
    through ``translate.model_from_spec``, as in the planner.
    """
    from prfaas.operator.api import models as api

    plans = manifests.of_kind(api.ServingPlan)
    if len(plans) != 1:
        raise LocalRuntimeError(f"expected exactly one ServingPlan, found {len(plans)}")
    sp = plans[0].spec
    arch = sp.model.architecture
    if arch is None:
        raise LocalRuntimeError(
            "prfaas up runs a tiny generated model: give spec.model.architecture "
            "(a catalog model is too large for this machine)"
        )
    prefill = {p.metadata.name: p.spec for p in manifests.of_kind(api.PrefillCluster)}
    decode = {d.metadata.name: d.spec for d in manifests.of_kind(api.DecodeCluster)}
    links = [ln for ln in manifests.of_kind(api.InterDCLink)]
    clusters: list[ClusterPlan] = []
    for name in sp.clusters.prefill:
        if name not in prefill:
            raise LocalRuntimeError(f"ServingPlan names PrefillCluster {name!r}, not in the file")
        clusters.append(ClusterPlan(name, prefill[name].datacenter, "prefill", "CPU", 1))
    for name in sp.clusters.decode:
        if name not in decode:
            raise LocalRuntimeError(f"ServingPlan names DecodeCluster {name!r}, not in the file")
        clusters.append(ClusterPlan(name, decode[name].datacenter, "decode", "CPU", 1))
    from prfaas.operator.api.translate import model_from_spec

    model = model_from_spec(sp.model)  # the one source of KV bytes per token (planner catalog)
    kv_per_token = float(model.kv_bytes_per_token)
    link_plans = [
        LinkPlan(ln.metadata.name, ln.spec.from_, ln.spec.to, ln.spec.bandwidth_gbps,
                 sp.offload.bandwidth_headroom)
        for ln in links
    ]
    threshold = None if sp.offload.mode == "off" else float(sp.offload.threshold_tokens or 256)
    routers = []
    for name in sp.clusters.decode:
        dc = decode[name].datacenter
        remotes = [
            RemotePrefill(p, ln.name)
            for p in sp.clusters.prefill
            for ln in link_plans
            if ln.from_ == prefill[p].datacenter and ln.to == dc
        ]
        routers.append(RouterPlan(name, threshold, kv_per_token, remotes=remotes))
    return Plan(
        model=sp.model.served_name,
        threshold_tokens=threshold,
        kv_bytes_per_token=kv_per_token,
        kv_fixed_bytes=float(model.fixed_state_bytes),
        dtype_bytes=model.dtype_bytes,
        clusters=clusters,
        links=link_plans,
        routers=routers,
        notes=["local layout: one CPU engine per cluster and role (prfaas up)"],
    )
