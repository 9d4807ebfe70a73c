"""``plan(problem) -> Plan``: parallelism per role, threshold and P/D split, KV routing, baselines.

Steps (DESIGN.md §5):

1. For every cluster and role, DistServe Algorithm 1 picks the TP×PP instance with the highest
   goodput per GPU (``parallelism``); PrfaaS clusters are ranked at ``l_long``, PD-P at
   ``l_short``, PD-D at the mean decode context. The search runs again once ``t`` is known.
2. ``throughput.Solver`` maximises ``Λ_max`` over ``t`` and the integer P/D split of every decode
   cluster (Eqs. 3-8), with offload limited by a max-flow over the topology.
   With several decode clusters, ``multicluster`` then gives each its own threshold ``t_d``
   (a multi-commodity LP over the shared PrfaaS compute and links, searched from the global
   ``t``), never below the one-``t`` plan; each router gets its ``t_d``.
3. The offload at ``Λ_max`` is routed by min-cost flow (per-cluster thresholds: the LP's
   least-RTT flow at ``Λ_max``); egress per link is reported.
4. Baselines: homogeneous PD on the decode GPU type with the same GPU count, naive heterogeneous
   (every prefill remote, every local GPU decodes), and homogeneous PD at equal cost.

Infeasible inputs return a ``Plan`` with ``feasible=False`` and a reason; no exception escapes
for them. ``PlannerError`` (re-exported here) is raised only by the catalog and profile helpers
that callers use directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from prfaas.planner.errors import CatalogError, Infeasible, PlannerError, ProfileError
from prfaas.planner.latency.calibrated import corrected
from prfaas.planner.latency.catalog import GpuSpec, ModelArch
from prfaas.planner.latency.model import InstanceLatency
from prfaas.planner.multicluster import Commodity, Point, RemoteLP, optimise_thresholds
from prfaas.planner.parallelism import (
    candidates,
    decode_batch,
    decode_goodput,
    search,
)
from prfaas.planner.plan import (
    Baseline,
    ClusterPlan,
    LinkPlan,
    Plan,
    RemotePrefill,
    RouterPlan,
    ShapeOption,
)
from prfaas.planner.problem import Candidate, ClusterInput, Problem, RoleLoad
from prfaas.planner.shapes import AGGREGATED_SHAPES, best_option, compare_shapes, per_unit
from prfaas.planner.throughput import Evaluation, LocalPool, LocalSplit, PrfaasPool, Solver
from prfaas.planner.topology import build_network

__all__ = ["Infeasible", "PlannerError", "plan", "role_load"]


@dataclass(frozen=True, slots=True)
class _Shapes:
    """The chosen instance shape per PrfaaS cluster and per decode cluster role."""

    prefill: dict[str, Candidate]
    pd_prefill: dict[str, Candidate | None]
    pd_decode: dict[str, Candidate]


def _gib(x: float) -> str:
    return f"{x / 1024**3:.1f} GiB"


def _no_fit(model: ModelArch, c: ClusterInput, problem: Problem, role: str) -> Infeasible:
    limit = c.per_node * problem.settings.max_nodes_per_instance
    return Infeasible(
        f"model {model.name} ({model.weight_bytes / 1e9:.0f} GB of weights) fits no TP×PP "
        f"{role} instance of cluster {c.name}: {c.count}×{c.gpu.name} with "
        f"{_gib(c.gpu.memory_bytes)} each, at most {min(limit, c.count)} GPUs per instance "
        f"(TP must divide {model.heads} heads, PP must divide {model.layers} layers); add GPUs, "
        "raise perNode, or use a GPU with more memory"
    )


def _choose(
    problem: Problem, c: ClusterInput, role: str, length: float, need: float
) -> Candidate | None:
    """Algorithm 1 for one role of one cluster; ``Infeasible`` when nothing fits or meets SLO."""
    m, s = problem.model, problem.settings
    cands = candidates(m, c.gpu, c.count, c.per_node, need, s, problem.profiles)
    if not cands:
        raise _no_fit(m, c, problem, role)
    fp, fd = (problem.correction(c.name, role, phase) for phase in ("prefill", "decode"))
    if fp != 1.0 or fd != 1.0:
        cands = [replace(x, latency=corrected(x.latency, fp, fd)) for x in cands]
    kind: Literal["prefill", "decode"] = "decode" if role == "decode" else "prefill"
    load = role_load(problem, kind, length)
    best = search(cands, load, s.goodput)
    if best is None:
        fastest = min(cands, key=lambda x: x.latency.prefill_seconds([length]))
        if kind == "prefill":
            unloaded = fastest.latency.prefill_seconds([length])
            raise Infeasible(
                f"TTFT SLO {problem.slo.ttft_s:g}s is below the unloaded prefill time "
                f"{unloaded:.3g}s of a {length:,.0f}-token prompt on {c.name} "
                f"({c.gpu.name} TP{fastest.tp}×PP{fastest.pp}, {fastest.latency.prefill.source});"
                " relax slo.ttft or prefill on faster GPUs"
            )
        step = min(x.latency.decode_step_seconds(1, length) for x in cands)
        raise Infeasible(
            f"TPOT SLO {problem.slo.tpot_s * 1e3:g}ms is below the unloaded decode step "
            f"{step * 1e3:.3g}ms of {m.name} on {c.name} ({c.gpu.name}); relax slo.tpot"
        )
    return best


def _shapes(problem: Problem, l_long: float, l_short: float, ctx: float) -> _Shapes:
    need_prompt = problem.model.kv_bytes(problem.workload.uncached.high)
    prefill = {
        c.name: _must(_choose(problem, c, "prefill", l_long, need_prompt))
        for c in problem.prefill_clusters
    }
    pd_prefill: dict[str, Candidate | None] = {}
    pd_decode: dict[str, Candidate] = {}
    for c in problem.decode_clusters:
        pd_decode[c.name] = _must(_choose(problem, c, "decode", ctx, problem.model.kv_bytes(ctx)))
        pd_prefill[c.name] = (
            _choose(problem, c, "prefill", l_short, need_prompt) if l_short > 0 else None
        )
    return _Shapes(prefill, pd_prefill, pd_decode)


def _must(c: Candidate | None) -> Candidate:
    assert c is not None  # _choose raises rather than return None
    return c


def role_load(problem: Problem, kind: Literal["prefill", "decode"], length: float) -> RoleLoad:
    """What one role of ``problem`` must serve: prompts of ``length`` (prefill) or sequences of
    mean cached context ``length`` (decode)."""
    m, w = problem.model, problem.workload
    return RoleLoad(
        kind,
        length,
        m.kv_bytes(length),
        w.output_length.mean,
        problem.slo.ttft_s,
        problem.slo.tpot_s,
        problem.max_batch_size,
    )


def _solver(problem: Problem, shapes: _Shapes, ctx: float) -> Solver:
    load = role_load(problem, "decode", ctx)
    pre = [
        PrfaasPool(
            c.name,
            _prfaas_instances(problem, c, shapes.prefill[c.name]),
            _prefill_stage(shapes.prefill[c.name].latency, problem),
        )
        for c in problem.prefill_clusters
    ]
    local = []
    for c in problem.decode_clusters:
        dec = shapes.pd_decode[c.name]
        pp = shapes.pd_prefill[c.name]
        pin_p, pin_d = problem.pin(c.name, "prefill"), problem.pin(c.name, "decode")
        need = (pin_p or 0) * (pp.gpus if pp else 0) + (pin_d or 0) * dec.gpus
        if pin_p and pp is None:
            raise Infeasible(
                f"spec.pins: {c.name}/prefill = {pin_p}, but no PD-P instance shape fits "
                f"{c.name}; pin it to 0 or leave it to the planner"
            )
        if need > c.count:
            raise Infeasible(
                f"spec.pins: {c.name} pins {pin_p or 0} PD-P and {pin_d or 0} PD-D instances "
                f"({need} GPUs at the planned shapes), but the cluster has {c.count} GPUs; "
                "lower the pins or add GPUs"
            )
        local.append(
            LocalPool(
                c.name,
                c.count,
                pp.gpus if pp else 0,
                dec.gpus,
                _prefill_stage(pp.latency if pp else dec.latency, problem),
                decode_goodput(dec, load),
                _prefill_stage(dec.latency, problem),
                pin_p,
                pin_d,
            )
        )
    net = build_network(problem.clusters, problem.links, problem.offload.headroom)
    s = problem.settings
    return Solver(
        problem.workload.uncached,
        pre,
        local,
        net,
        problem.model.kv_bytes,
        s.grid_points,
        s.tolerance,
    )


def _prfaas_instances(problem: Problem, c: ClusterInput, cand: Candidate) -> int:
    """All instances that fit, or the pinned count (checked against the cluster's GPUs)."""
    pin = problem.pin(c.name, "prefill")
    if pin is None:
        return c.count // cand.gpus
    if pin * cand.gpus > c.count:
        raise Infeasible(
            f"spec.pins: {c.name}/prefill = {pin} needs {pin * cand.gpus} GPUs at "
            f"TP{cand.tp}×PP{cand.pp}, but the cluster has {c.count}; lower the pin or add GPUs"
        )
    return pin


def _prefill_stage(lat: InstanceLatency, problem: Problem) -> Callable[[float], float]:
    """Seconds of prefill stage per request of length ``l`` at saturation: an instance batches
    ``k = budget // l`` such prompts in one step (vLLM's ``max_num_batched_tokens``, as the
    simulator does; at least 1, at most ``max_batch_size`` sequences), so each costs
    ``T_stage([l] × k) / k``, taken as ``T₁ + (k − 1)(T₂ − T₁)`` from batches of one and two
    (exact for DistServe's form; two evaluations instead of ``k``-long batches in the search)."""
    budget, most = problem.max_num_batched_tokens, max(problem.max_batch_size, 1)

    memo: dict[float, float] = {}

    def stage(length: float) -> float:
        hit = memo.get(length)
        if hit is not None:
            return hit
        k = min(most, max(1, int(budget // max(length, 1.0))))
        out = one = lat.prefill_stage_seconds([length])
        if k > 1:
            two = lat.prefill_stage_seconds([length, length])
            out = (one + (k - 1) * max(two - one, 0.0)) / k
        if len(memo) < 65536:
            memo[length] = out
        return out

    return stage


def _solve(problem: Problem, solver: Solver) -> Evaluation:
    o = problem.offload
    if o.mode == "off" or not problem.prefill_clusters:
        return solver.evaluate(math.inf)
    if o.mode == "fixed":
        return solver.evaluate(float(o.threshold_tokens or math.inf))
    return solver.optimise()


def _check_links(problem: Problem) -> None:
    """A PrfaaS cluster that reaches no decode cluster over a link with bandwidth is an error."""
    if problem.offload.mode == "off":
        return
    decode_dcs = {c.datacenter for c in problem.decode_clusters}
    for c in problem.prefill_clusters:
        if c.datacenter in decode_dcs:
            continue
        frontier, seen, dead = [c.datacenter], {c.datacenter}, []
        while frontier:
            dc = frontier.pop()
            for link in problem.links:
                if link.from_ != dc or link.to in seen:
                    continue
                if link.bandwidth_gbps <= 0:
                    dead.append(link.name)
                    continue
                seen.add(link.to)
                frontier.append(link.to)
        if not seen & decode_dcs:
            why = (
                f"link {', '.join(dead)} has 0 Gbps"
                if dead
                else f"no InterDCLink leads from {c.datacenter} to a decode datacenter "
                f"({', '.join(sorted(decode_dcs))})"
            )
            raise Infeasible(
                f"prefill cluster {c.name} cannot ship KV to any decode cluster: {why}; set "
                "bandwidthGbps > 0 (or add a link), drop the cluster from clusters.prefill, or "
                "set offload.mode: off"
            )


def _homogeneous(problem: Problem, gpus: int, ctx: float) -> float:
    """Λ of a single PD cluster of ``gpus`` GPUs of the (first) decode cluster's type."""
    base = problem.decode_clusters[0]
    count = max((gpus // base.per_node) * base.per_node, min(gpus, base.per_node))
    pool = ClusterInput(
        f"{base.name}-homogeneous",
        base.datacenter,
        "decode",
        base.gpu,
        count,
        base.per_node,
        base.fabric_gbps,
    )
    dist = problem.workload.uncached
    sub = Problem(
        problem.name,
        problem.model,
        (pool,),
        (),
        problem.workload,
        problem.slo,
        problem.offload,
        problem.profiles,
        problem.max_batch_size,
        problem.settings,
        max_num_batched_tokens=problem.max_num_batched_tokens,
    )
    try:
        shapes = _shapes(sub, dist.mean, dist.mean, ctx)
    except Infeasible:
        return 0.0
    return _solver(sub, shapes, ctx).evaluate(math.inf).rate


def _price(gpu: GpuSpec, count: int) -> float:
    return gpu.price_per_hour * count


def _baselines(problem: Problem, solver: Solver, rate: float, ctx: float) -> list[Baseline]:
    total = sum(c.count for c in problem.clusters)
    dec_gpu = problem.decode_clusters[0].gpu
    out: list[Baseline] = []

    def add(name: str, value: float, gpus: int, note: str) -> None:
        ratio = rate / value if value > 0 else math.inf
        out.append(Baseline(name, value, ratio, gpus, note))

    add(
        "homogeneous-pd",
        _homogeneous(problem, total, ctx),
        total,
        f"{total}×{dec_gpu.name} as one PD cluster, best P/D split, no offload",
    )
    if problem.prefill_clusters:
        naive = solver.evaluate(0.0, all_decode=True).rate
        local = sum(c.count for c in problem.decode_clusters)
        add(
            "naive-heterogeneous",
            naive,
            total,
            f"every prefill on the PrfaaS clusters, all {local} local GPUs decode, no length "
            "routing",
        )
        cost = sum(_price(c.gpu, c.count) for c in problem.clusters)
        eq = int(cost // dec_gpu.price_per_hour)
        if eq != total:
            add(
                "homogeneous-pd-equal-cost",
                _homogeneous(problem, eq, ctx),
                eq,
                f"{eq}×{dec_gpu.name} costing the same as this plan (${cost:.2f}/h at catalog "
                "prices, an assumption)",
            )
    return out


def _stage_totals(solver: Solver, ev: Evaluation) -> dict[str, float]:
    sp = ev.split
    pdp = sum(s.theta_p for s in ev.local.values())
    pdd = sum(s.theta_d for s in ev.local.values())
    stages = {"pdPrefill": pdp, "pdDecode": pdd}
    if solver.prefill and sp.p > 0:
        compute = sum(ev.prefill_rps.values())
        unbounded = dict.fromkeys(ev.local, math.inf)
        reach = sum(
            solver.network.max_offload(
                ev.prefill_rps, unbounded, solver.kv_bytes(sp.l_long)
            ).values()
        )
        no_compute = {k: math.inf for k in ev.prefill_rps}
        link = (
            sum(
                solver.network.max_offload(
                    no_compute, unbounded, solver.kv_bytes(sp.l_long)
                ).values()
            )
            if solver.network.links
            else math.inf
        )
        if link >= 1e12:  # a same-datacenter path: no link limits the offload
            link = math.inf
        stages.update(prfaas=reach, prfaasCompute=compute, link=link)
    return stages


def _bottleneck(stages: dict[str, float], p: float) -> str:
    bounds: dict[str, float] = {}
    if "aggregated" in stages:  # one chunked-prefill pool (``_deploy_aggregated``)
        bounds["aggregated"] = stages["aggregated"]
    else:
        bounds["pd-decode"] = stages["pdDecode"]
        if p < 1:
            bounds["pd-prefill"] = stages["pdPrefill"] / (1 - p)
    if p > 0 and "prfaas" in stages:
        link_binds = stages["prfaas"] < stages["prfaasCompute"] * (1 - 1e-9)
        bounds["link" if link_binds else "prfaas"] = stages["prfaas"] / p
    return min(bounds, key=lambda k: bounds[k])


def _plan(problem: Problem) -> Plan:
    w = problem.workload
    if not problem.decode_clusters:
        raise Infeasible("a plan needs at least one decode cluster (clusters.decode)")
    _check_links(problem)
    dist = w.uncached
    ctx = w.prompt_mean + w.output_length.mean / 2.0
    shapes = _shapes(problem, dist.mean, dist.mean, ctx)
    solver = _solver(problem, shapes, ctx)
    ev = _solve(problem, solver)
    # Re-rank parallelism at the lengths each role really serves, then solve again.
    l_short = ev.split.l_short if ev.split.p < 1 else dist.mean
    refined = _shapes(problem, ev.split.l_long or dist.mean, l_short or dist.mean, ctx)
    if refined != shapes:
        shapes, solver = refined, _solver(problem, refined, ctx)
        ev = _solve(problem, solver)
    return _assemble(problem, shapes, solver, ev, ctx)


def _cluster_plan(
    problem: Problem,
    c: ClusterInput,
    role: Literal["prefill", "decode"],
    instances: int,
    cand: Candidate,
    ctx: float,
) -> ClusterPlan:
    """One role's row, with the engine numbers vLLM is started with and the simulator uses."""
    phase = cand.latency.prefill if role == "prefill" else cand.latency.decode
    seqs = None
    m = problem.model
    free = cand.kv_capacity_bytes
    if role == "decode":
        seqs = max(1, decode_batch(cand, role_load(problem, "decode", ctx))[0])
        free = max(0.0, free - seqs * cand.pp * m.fixed_state_bytes)  # per-sequence state
    pin = problem.pin(c.name, role)
    return ClusterPlan(
        c.name,
        c.datacenter,
        role,
        c.gpu.name,
        instances if pin is None else pin,
        cand.tp,
        cand.pp,
        phase.source,
        max_num_seqs=seqs,
        max_num_batched_tokens=problem.max_num_batched_tokens,
        gpu_memory_utilization=problem.settings.memory_utilization,
        kv_cache_tokens=int(free // max(m.kv_bytes_per_token, 1)),
        pinned=pin is not None,
    )


@dataclass(slots=True)
class _Outcome:
    """What the plan reports, from one global ``t`` or from a threshold per decode cluster."""

    rate: float
    local: dict[str, LocalSplit]
    thresholds: dict[str, float | None]
    """Per decode cluster: its router's ``t`` (``None``: all local)."""
    threshold: float | None
    p: float
    l_long: float
    l_short: float
    stages: dict[str, float]
    egress_gbps: dict[str, float]
    remotes: dict[str, list[RemotePrefill]]
    notes: list[str]
    rates: dict[str, float] = field(default_factory=dict)
    """Per decode cluster: the ``Λ_d`` its router serves (they sum to ``rate``)."""


def _global_outcome(problem: Problem, solver: Solver, ev: Evaluation) -> _Outcome:
    """The single-threshold plan (PrfaaS Eqs. 3-8 as published)."""
    m, sp = problem.model, ev.split
    offloading = [n for n, on in ev.offloading.items() if on] if sp.p > 0 else []
    threshold = None if sp.p <= 0 or not offloading else sp.threshold
    size = m.kv_bytes(sp.l_long) if sp.p > 0 else 0.0
    egress: dict[str, float] = {}
    remotes: dict[str, list[RemotePrefill]] = {n: [] for n in ev.local}
    if threshold is not None:
        served = {n: (ev.served.get(n, 0.0) if n in offloading else 0.0) for n in ev.local}
        assignment = solver.network.assign(ev.prefill_rps, served, size)
        egress = {k: v * size * 8 / 1e9 for k, v in assignment.link_rps.items()}
        for (dec_name, pre_name), path in assignment.pairs.items():
            if dec_name in offloading:
                remotes[dec_name].append(RemotePrefill(pre_name, path[0] if path else ""))
    notes = [
        f"{name} runs all-local (t = ∞ for its router): offload would not raise its rate"
        for name, on in ev.offloading.items()
        if sp.p > 0 and not on
    ]
    rates = {
        n: min(s.capacity, ev.served.get(n, 0.0) / sp.p) if n in offloading else s.capacity
        for n, s in ev.local.items()
    }
    return _Outcome(
        ev.rate,
        dict(ev.local),
        {n: threshold if n in offloading else None for n in ev.local},
        threshold,
        sp.p if threshold is not None else 0.0,
        sp.l_long if threshold is not None else 0.0,
        sp.l_short,
        _stage_totals(solver, ev),
        egress,
        remotes,
        notes,
        rates,
    )


def _multi_outcome(problem: Problem, solver: Solver, ev: Evaluation) -> _Outcome:
    """A threshold per decode cluster (``multicluster``); never below the global-``t`` plan."""
    res = optimise_thresholds(solver, ev)
    on = {n: c for n, c in res.clusters.items() if c.offloading and c.offload_rps > 0}
    rate = res.rate
    offloaded = sum(c.offload_rps for c in on.values())
    local_rps = sum(c.rate - c.offload_rps for c in res.clusters.values())
    sizes = {c.name: c.count for c in problem.decode_clusters}
    largest = max(on, key=lambda n: (sizes[n], n), default=None)
    remotes: dict[str, list[RemotePrefill]] = {n: [] for n in res.clusters}
    for (dec_name, pre_name), path in sorted(res.routing.pairs.items()):
        if dec_name in on and res.routing.pair_rps.get((dec_name, pre_name), 0.0) > 0:
            remotes[dec_name].append(RemotePrefill(pre_name, path[0] if path else ""))
    stages = {
        "pdPrefill": sum(c.local.theta_p for c in res.clusters.values()),
        "pdDecode": sum(c.local.theta_d for c in res.clusters.values()),
    }
    if on:
        lp = RemoteLP(solver.network)
        tau = {
            n: {q.name: q.stage(c.split.l_long) / q.instances if q.instances else 1e9
                for q in solver.prefill}
            for n, c in on.items()
        }  # fmt: skip
        coms = [
            Commodity(n, (Point(c.split.p, math.inf, c.kv_bytes, tau[n]),)) for n, c in on.items()
        ]

        def most(**kw: bool) -> float:
            return sum(lp.solve(coms, offload=True, **kw).rate[n] * on[n].split.p for n in on)

        link = most(compute=False) if lp.links else math.inf
        stages.update(
            prfaas=most(),
            prfaasCompute=most(links=False),
            link=math.inf if link >= 1e12 else link,
        )
    notes = [
        "per-cluster thresholds (shared PrfaaS compute and links, multi-commodity LP): "
        + ", ".join(
            f"{n} t={c.split.threshold:,.0f} Λ={c.rate:.3g}" if n in on else f"{n} all-local"
            for n, c in res.clusters.items()
        )
        + f"; Λ_max {rate:.4g} req/s vs {ev.rate:.4g} with one global t (relaxation bound "
        f"{res.bound:.4g})"
    ]
    return _Outcome(
        rate,
        {n: c.local for n, c in res.clusters.items()},
        {n: (c.split.threshold if n in on else None) for n, c in res.clusters.items()},
        on[largest].split.threshold if largest is not None else None,
        offloaded / rate if rate > 0 else 0.0,
        sum(c.offload_rps * c.split.l_long for c in on.values()) / offloaded if on else 0.0,
        sum((c.rate - c.offload_rps) * c.split.l_short for c in res.clusters.values()) / local_rps
        if local_rps > 0
        else 0.0,
        stages,
        {k: v * 8 / 1e9 for k, v in res.routing.link_bytes.items()},
        remotes,
        notes,
        {n: c.rate for n, c in res.clusters.items()},
    )


def _assemble(
    problem: Problem, shapes: _Shapes, solver: Solver, ev: Evaluation, ctx: float
) -> Plan:
    m = problem.model
    multi = (
        problem.offload.mode == "auto"
        and len(problem.decode_clusters) > 1
        and bool(problem.prefill_clusters)
    )
    out_ = (_multi_outcome if multi else _global_outcome)(problem, solver, ev)
    threshold, stages = out_.threshold, out_.stages
    notes = list(problem.notes)
    notes.append(
        f"uncached prompt lengths (p, l_long, l_short): {problem.workload.uncached_source}"
    )
    if problem.pins:
        pinned = ", ".join(f"{c}/{r}={n}" for c, r, n in problem.pins)
        notes.append(f"pinned by spec.pins (the planner sized the rest around them): {pinned}")
    if problem.latency_corrections:
        notes.append(
            "latency corrected by the engines' own histograms (observed/predicted): "
            + ", ".join(f"{c}/{r} {ph} × {f:.3g}" for c, r, ph, f in problem.latency_corrections)
        )
    clusters: list[ClusterPlan] = []
    offloading = [n for n, t in out_.thresholds.items() if t is not None]
    for c in problem.prefill_clusters:
        cand = shapes.prefill[c.name]
        clusters.append(
            _cluster_plan(
                problem, c, "prefill", c.count // cand.gpus if offloading else 0, cand, ctx
            )
        )
        notes.append(
            f"{c.name} prefill latency ({cand.latency.prefill.source}): {cand.latency.prefill.note}"
        )
    for c in problem.decode_clusters:
        split = out_.local[c.name]
        pre, dec = shapes.pd_prefill[c.name], shapes.pd_decode[c.name]
        if pre is not None and (split.n_p > 0 or problem.pin(c.name, "prefill") is not None):
            clusters.append(_cluster_plan(problem, c, "prefill", split.n_p, pre, ctx))
            notes.append(
                f"{c.name} PD-P latency ({pre.latency.prefill.source}): {pre.latency.prefill.note}"
            )
        if split.n_p == 0 and split.theta_p > 0:
            notes.append(
                f"{c.name} is too small for separate PD-P and PD-D instances: its decode "
                "instances also prefill short prompts (time-shared)"
            )
        clusters.append(_cluster_plan(problem, c, "decode", split.n_d, dec, ctx))
        notes.append(
            f"{c.name} PD-D latency ({dec.latency.decode.source}): {dec.latency.decode.note}"
        )
    links = [
        LinkPlan(
            lk.name,
            lk.from_,
            lk.to,
            lk.bandwidth_gbps,
            problem.offload.headroom,
            out_.egress_gbps.get(lk.name, 0.0),
        )
        for lk in problem.links
    ]
    routers = [
        RouterPlan(
            c.name,
            out_.thresholds[c.name],
            float(m.kv_bytes_per_token),
            float(m.fixed_state_bytes),
            out_.remotes[c.name] if out_.thresholds[c.name] is not None else [],
            out_.rates.get(c.name),
        )
        for c in problem.decode_clusters
    ]
    if problem.prefill_clusters and threshold is None and problem.offload.mode != "off":
        notes.append(
            "t = ∞ (no offload): offloading long prompts does not raise Λ_max here — "
            "the links are too thin or the PrfaaS clusters too slow to beat all-local "
            "prefill"
        )
    notes += out_.notes
    notes.append(
        f"S_kv(l) = {m.kv_bytes_per_token} B/token × l + {m.fixed_state_bytes / 2**20:.1f} MiB "
        f"fixed state, computed from the {m.name} architecture"
    )
    notes.append(
        "Eqs. 3-5 take T_prefill at the conditional mean lengths l_long and l_short, as "
        "PrfaaS §3.4.1; Λ_max is a saturation rate (queueing is the simulator's job)"
    )
    rs = problem.settings.roofline
    notes.append(
        f"roofline assumptions: prefill MFU {rs.prefill_mfu:g}, decode MFU "
        f"{rs.decode_mfu:g}, HBM efficiency {rs.bandwidth_efficiency:g}"
    )
    target = problem.workload.requests_per_second
    if target is not None and out_.rate < target:
        notes.append(
            f"target {target:g} req/s exceeds the predicted Λ_max {out_.rate:.3g} req/s: "
            "add GPUs or lower workload.requestsPerSecond"
        )
    out = Plan(
        model=m.name,
        threshold_tokens=threshold,
        offload_fraction=out_.p,
        l_long=out_.l_long,
        l_short=out_.l_short,
        throughput_rps=out_.rate,
        bottleneck=_bottleneck(stages, out_.p),
        stages=stages,
        kv_bytes_per_token=float(m.kv_bytes_per_token),
        kv_fixed_bytes=float(m.fixed_state_bytes),
        dtype_bytes=m.dtype_bytes,
        clusters=clusters,
        links=links,
        routers=routers,
        notes=notes,
    )
    if problem.data_plane is not None:
        dp = problem.data_plane
        out.data_plane_s = {"local": dp.local_s, "remote": dp.remote_s}
    out.baselines = _baselines(problem, solver, out_.rate, ctx)
    out.shapes = compare_shapes(problem, solver, shapes.pd_decode, out_.thresholds)
    row = _aggregated_choice(problem, out.shapes)
    if row is not None:
        _deploy_aggregated(problem, shapes, solver, out, row, ctx)
    out.notes += _shape_notes(out.shapes)
    if target is not None and target < out_.rate:
        _size_for_target(out, target)
    return out


def _aggregated_choice(problem: Problem, options: list[ShapeOption]) -> ShapeOption | None:
    """The aggregated row the plan deploys instead of the split it solved (``None``: the split).

    ``auto``: a deployable aggregated row that ranks above the split the plan solved (the
    ``chosen`` row; ``best_option``: per cost where priced, else per GPU; ties keep the split);
    ``aggregated``: the best deployable aggregated row serving a rate, else ``Infeasible`` with
    the reason and the best feasible alternative. A decode cluster with ``spec.pins`` keeps the
    split under ``auto`` (pins fix PD-P/PD-D counts)."""
    if problem.shape == "disaggregated":
        return None
    pinned = {c for c, _, _ in problem.pins}
    agg = [
        o
        for o in options
        if o.shape in AGGREGATED_SHAPES and o.deployable and o.goodput_rps > 0
        and o.decode_cluster not in pinned
    ]
    if problem.shape == "aggregated":
        if not agg:
            raise Infeasible(_aggregated_pinned(options, pinned))
        return best_option(agg)
    split = [o for o in options if o.chosen]
    if not agg or not split:
        return None
    best = best_option(split + agg)
    return best if best.shape in AGGREGATED_SHAPES else None


def _deploy_aggregated(
    problem: Problem, shapes: _Shapes, solver: Solver, out: Plan, row: ShapeOption, ctx: float
) -> None:
    """Turn ``out`` (the solved split) into the plan that deploys ``row``, an aggregated row of
    the (single) decode cluster: one decode row ``aggregated`` with the row's instances and
    token budget (``maxNumBatchedTokens``), no PD-P row; with offload its router's ``t`` is the
    row's, the PrfaaS clusters run and its remotes and link egress come from routing
    ``p × rate`` over the network (as for the split); without, nothing is offloaded. The rate,
    stages and bottleneck are the aggregated pool's."""
    m = problem.model
    name = row.decode_cluster
    c = next(x for x in problem.decode_clusters if x.name == name)
    agg = replace(
        _cluster_plan(problem, c, "decode", row.instances, shapes.pd_decode[name], ctx),
        max_num_batched_tokens=row.token_budget,
        aggregated=True,
    )
    t = row.threshold_tokens
    offload = t is not None
    counts = {x.name: x.count for x in problem.prefill_clusters}
    clusters: list[ClusterPlan] = []
    for cp in out.clusters:
        if cp.name == name:
            if cp.role == "decode":
                clusters.append(agg)
            continue
        if cp.role == "prefill" and cp.name in counts and not cp.pinned:
            cp.instances = counts[cp.name] // cp.gpus_per_instance if offload else 0
        clusters.append(cp)
    out.clusters = clusters
    rate = row.goodput_rps
    router = next(r for r in out.routers if r.decode_cluster == name)
    router.threshold_tokens, router.rate_rps, router.remotes = t, rate, []
    stages: dict[str, float] = {"aggregated": rate}
    for link in out.links:
        link.egress_gbps = 0.0
    if t is None:
        out.offload_fraction, out.l_long, out.l_short = 0.0, 0.0, problem.workload.uncached.mean
    else:
        ev = solver.evaluate(t)
        sp = ev.split
        size = m.kv_bytes(sp.l_long)
        routed = solver.network.assign(ev.prefill_rps, {name: sp.p * rate}, size)
        for (dec_name, pre_name), path in sorted(routed.pairs.items()):
            if dec_name == name and routed.pair_rps.get((dec_name, pre_name), 0.0) > 0:
                router.remotes.append(RemotePrefill(pre_name, path[0] if path else ""))
        for link in out.links:
            link.egress_gbps = routed.link_rps.get(link.name, 0.0) * size * 8 / 1e9
        out.offload_fraction, out.l_long, out.l_short = sp.p, sp.l_long, sp.l_short
        totals = _stage_totals(solver, ev)
        stages.update({k: v for k, v in totals.items() if k in ("prfaas", "prfaasCompute", "link")})
    out.threshold_tokens = t
    out.throughput_rps = rate
    out.stages = stages
    out.bottleneck = _bottleneck(stages, out.offload_fraction)
    for b in out.baselines:
        b.ratio = rate / b.throughput_rps if b.throughput_rps > 0 else math.inf
    split = next((o for o in out.shapes if o.decode_cluster == name and o.chosen), None)
    for o in out.shapes:
        if o.decode_cluster == name:
            o.chosen = o is row
    out.notes.append(
        f"{name} deployed as {row.shape} (spec.shape: {problem.shape}): {row.instances} "
        f"chunked-prefill instances with token budget {row.token_budget}"
        + (f", prompts above t = {t:,.0f} uncached tokens prefilled by PrfaaS" if offload else "")
        + f"; {per_unit(row)}"
        + (f" vs {per_unit(split)} for the {split.shape} split" if split is not None else "")
    )


def _shape_notes(options: list[ShapeOption]) -> list[str]:
    """Say where an advisory aggregated row (several decode clusters) would beat the deployed
    shape."""
    notes = []
    for name in dict.fromkeys(o.decode_cluster for o in options):
        rows = [o for o in options if o.decode_cluster == name]
        chosen = next((o for o in rows if o.chosen), None)
        best = best_option(rows)
        if chosen is not None and best is not chosen and not best.deployable:
            notes.append(
                f"{name}: {best.shape} would serve {per_unit(best)} (token budget "
                f"{best.token_budget}) vs {per_unit(chosen)} for the deployed "
                f"{chosen.shape}; advisory only — with several decode clusters the planner "
                "does not deploy aggregated (chunked-prefill) pools yet, so auto chooses among "
                "deployable shapes"
            )
    return notes


def _aggregated_pinned(options: list[ShapeOption], pinned: set[str]) -> str:
    """Why ``shape: aggregated`` gives no plan, and the best feasible alternative."""
    agg = [o for o in options if o.shape in AGGREGATED_SHAPES]
    why = "; ".join(
        f"{o.decode_cluster} {o.shape}: "
        + (
            f"no rate meets the SLO ({o.limit} binds)"
            if o.goodput_rps <= 0
            else f"{o.goodput_rps:.3g} req/s, {per_unit(o)}, token budget {o.token_budget}"
        )
        for o in agg
    )
    if any(not o.deployable for o in agg):
        cause = (
            "aggregated pools are deployed for one decode cluster only (with several, the "
            "shared PrfaaS and link bounds do not model them yet)"
        )
    elif pinned & {o.decode_cluster for o in agg}:
        cause = (
            f"spec.pins fix PD-P/PD-D instances of {sorted(pinned)}, which an aggregated pool "
            "does not have (remove those pins)"
        )
    else:
        cause = "no aggregated pool meets the SLOs"
    split = [o for o in options if o.shape not in AGGREGATED_SHAPES]
    best = best_option([o for o in split if o.goodput_rps > 0] or split)
    return (
        f"spec.shape: aggregated cannot be deployed: {cause} (planned: {why}); best feasible "
        f"alternative: {best.shape} on {best.decode_cluster} at {best.goodput_rps:.3g} req/s "
        f"({per_unit(best)}) — set shape: auto or disaggregated"
    )


def _size_for_target(out: Plan, target: float) -> None:
    """Scale every role down to what ``target`` req/s needs (DistServe: replicate to the rate).

    Each stage bound is linear in its own instance count, so ``ceil(N · target/Λ_max)`` keeps
    every bound at or above ``target``; the threshold and the routing stay as planned.
    """
    full = out.throughput_rps
    f = target / full
    factors: dict[str, list[float]] = {"prefill-remote": [], "prefill-local": [], "decode": []}
    remote = {r.prefill_cluster for router in out.routers for r in router.remotes}
    for c in out.clusters:
        if c.instances == 0 or c.pinned:
            continue
        new = max(1, math.ceil(c.instances * f - 1e-9))
        kind = (
            "decode"
            if c.role == "decode"
            else ("prefill-remote" if c.name in remote else "prefill-local")
        )
        factors[kind].append(new / c.instances)
        c.instances = new
    st = out.stages

    def scale(key: str, kind: str) -> None:
        if key in st and factors[kind]:
            st[key] *= min(factors[kind])

    scale("pdPrefill", "prefill-local")
    scale("pdDecode", "decode")
    scale("aggregated", "decode")
    scale("prfaasCompute", "prefill-remote")
    if "prfaas" in st:
        st["prfaas"] = min(
            st["prfaas"], st.get("prfaasCompute", math.inf), st.get("link", math.inf)
        )
    p = out.offload_fraction
    if "aggregated" in st:
        bounds = [st["aggregated"]]
    else:
        bounds = [st["pdDecode"]]
        if p < 1:
            bounds.append(st["pdPrefill"] / (1 - p) if st["pdPrefill"] > 0 else math.inf)
    if p > 0 and "prfaas" in st:
        bounds.append(st["prfaas"] / p)
    out.throughput_rps = min(bounds)
    for router in out.routers:
        if router.rate_rps is not None:
            router.rate_rps *= out.throughput_rps / full
    for link in out.links:
        link.egress_gbps *= target / full
    out.notes.append(
        f"sized for the target {target:g} req/s: every role scaled to ceil(N × {f:.3g}); these "
        f"instances sustain {out.throughput_rps:.3g} req/s (the whole pools: {full:.3g}); "
        "egress is at the target rate"
    )


def plan(problem: Problem) -> Plan:
    """Plan ``problem``; infeasible inputs give ``feasible=False`` and a reason, not an error."""
    try:
        return _plan(problem)
    except (Infeasible, CatalogError, ProfileError) as exc:
        return Plan(model=problem.model.name, feasible=False, reason=str(exc))
