"""From a ``Plan`` to simulator configurations, and simulated predictions back into the plan.

``scenarios(problem, plan)`` builds the plan's configuration (``prfaas-pd``) and its baselines
(``homogeneous-pd``: the same GPU count of the decode type as one PD cluster, planned by
``plan()`` itself; ``naive-heterogeneous``: every prefill remote, every local GPU decodes, no
length routing), and the plan's aggregated shape where it ranks best (``aggregated`` or
``aggregated+offload``: ``aggregated_scenarios``). ``predict`` simulates them at one common
rate and fills ``Plan.predicted`` and each ``Baseline.predicted``; ``simulated_goodput`` is the
hook for ``PlannerSettings.goodput`` (DistServe's simulated Algorithm 1 instead of the M/D/1
forms).

With several decode clusters the plan is one configuration: a router per cluster with its
``RouterPlan`` threshold and remotes, arrivals split by the planned ``Λ_d``
(``RouterPlan.rate_rps``; by decode GPUs for plans without it), PrfaaS pools and links shared;
``fill_predicted`` then also fills each router's ``predicted`` and each link's simulated egress.

Modelling choices, all stated so they can be argued with:

* latency models come from ``estimator.latency_model`` for each cluster's GPU and TP×PP, as the
  planner's own;
* a decode instance batches up to the batch the planner assumed (the largest meeting TPOT and
  fitting KV, ``parallelism.decode_batch``); with PP it keeps PP micro-batches in flight, so it
  is simulated as PP decoders of that batch;
* each prefill instance keeps a prefix cache (``problem.block_tokens``-token blocks: the
  engines' ``--block-size``, also the unit a KV transfer moves) in the memory its weights leave
  free; the hit rate of a synthetic workload is not simulated (its requests share no
  prefixes), a trace with prefix ids is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from prfaas.planner.latency.calibrated import corrected
from prfaas.planner.latency.catalog import GpuSpec
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.latency.model import InstanceLatency
from prfaas.planner.parallelism import decode_batch
from prfaas.planner.plan import ClusterPlan, Plan, Predicted, ShapeOption
from prfaas.planner.problem import (
    Candidate,
    ClusterInput,
    GoodputFn,
    OffloadInput,
    Problem,
    RoleLoad,
)
from prfaas.planner.sim.arrivals import (
    ArrivalKind,
    FixedLengths,
    LengthSampler,
    RequestStream,
    synthetic_stream,
)
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.goodput import SloTarget, config_goodput
from prfaas.planner.sim.links import CapacitySchedule, LinkSpec
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.online import OnlineResult, OnlineSpec, simulate_online, solver_replan
from prfaas.planner.sim.simulator import (
    DecodeCluster,
    DecodePool,
    PrefillPool,
    ProgressFn,
    RoutingSpec,
    SimConfig,
    simulate,
)
from prfaas.planner.solver import role_load

__all__ = [
    "AGGREGATED_SHAPES",
    "AGGREGATED_WHERE_BEST",
    "Scenario",
    "ScenarioRun",
    "aggregated_scenarios",
    "common_rate",
    "fill_predicted",
    "local_kv_gbps",
    "predict",
    "rate_basis",
    "run_scenarios",
    "scenarios",
    "simulated_goodput",
]

PRFAAS = "prfaas-pd"
HOMOGENEOUS = "homogeneous-pd"
NAIVE = "naive-heterogeneous"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One configuration to simulate and the throughput the analytical model gives it."""

    name: str
    config: SimConfig
    planned_rps: float


@dataclass(frozen=True, slots=True)
class ScenarioRun:
    """A scenario simulated at ``rate`` (and, if searched, its goodput)."""

    scenario: Scenario
    rate: float
    result: SimResult
    goodput_rps: float | None = None
    goodput_window_s: float = 0.0
    """Every goodput probe spanned at least this long (the main run's window, when a link
    follows a bandwidth schedule); 0: ``goodput_requests`` per probe, whatever they span."""
    online: OnlineResult | None = None
    """PrfaaS-PD run with the online re-plan loop (``replan_interval_s``): its re-plans and
    role changes (``result`` is its ``result``)."""


def _latency(
    problem: Problem, cluster: ClusterInput, tp: int, pp: int, role: str
) -> InstanceLatency:
    """The planner's model of one instance, with the correction factors learned while running
    (``Problem.latency_corrections``), as the planner itself uses them."""
    lat = latency_model(
        problem.model, cluster.gpu, tp, pp, problem.profiles, problem.settings.roofline
    )
    return corrected(
        lat,
        problem.correction(cluster.name, role, "prefill"),
        problem.correction(cluster.name, role, "decode"),
    )


def _decode_batch(problem: Problem, gpu: GpuSpec, tp: int, pp: int, lat: InstanceLatency) -> int:
    m, w = problem.model, problem.workload
    ctx = w.prompt_mean + w.output_length.mean / 2.0
    usable = tp * pp * gpu.memory_bytes * problem.settings.memory_utilization
    cand = Candidate(tp, pp, lat, usable - m.weight_bytes)
    batch, _ = decode_batch(cand, role_load(problem, "decode", ctx))
    return max(batch, 1)


def _cache_blocks(problem: Problem, gpu: GpuSpec, gpus: int) -> int:
    """Blocks of KV an instance can keep for prefix hits: its memory after the weights."""
    m = problem.model
    free = gpus * gpu.memory_bytes * problem.settings.memory_utilization - m.weight_bytes
    per_block = problem.block_tokens * max(m.kv_bytes_per_token, 1)
    return max(0, int(free // per_block))


def local_kv_gbps(cluster: ClusterInput, prefill_gpus: int, decode_gpus: int) -> float:
    """KV bandwidth (Gbit/s) from a PD-P instance to a PD-D instance of ``cluster``: NVLink
    (the GPU's interconnect, per GPU of the sending instance) when both fit on one node,
    else the cluster's fabric NIC (``DecodeCluster.spec.fabricGbps``)."""
    if prefill_gpus + decode_gpus <= cluster.per_node:
        return cluster.gpu.interconnect_gbps * 8.0 * prefill_gpus
    return cluster.fabric_gbps


def _cluster(problem: Problem, name: str) -> ClusterInput:
    for c in problem.clusters:
        if c.name == name:
            return c
    raise SimulatorError(f"plan names cluster {name!r} that the problem does not have")


def _links(problem: Problem, home: str, schedule: CapacitySchedule) -> tuple[LinkSpec, ...]:
    return tuple(
        LinkSpec(lk.name, lk.from_, lk.to, lk.bandwidth_gbps, lk.rtt_ms / 1e3, schedule)
        for lk in problem.links
        if lk.to == home
    )


def _config(
    name: str,
    problem: Problem,
    plan: Plan,
    *,
    threshold: float | None,
    adaptive: bool,
    schedule: CapacitySchedule,
    all_remote_decode: bool = False,
) -> SimConfig:
    """The configuration a plan describes (``all_remote_decode``: the naive layout)."""
    decoders = [c for c in plan.clusters if c.role == "decode" and c.instances > 0]
    if not decoders:
        raise SimulatorError(f"plan {plan.model} has no decode instances; nothing to simulate")
    if len(decoders) > 1:
        return _multi_config(
            name,
            problem,
            plan,
            adaptive=adaptive,
            schedule=schedule,
            naive=all_remote_decode,
        )
    d = decoders[0]
    decode = _decode_pool(problem, d, all_remote_decode)
    pools: list[PrefillPool] = []
    for c in plan.clusters:
        if c.role != "prefill":
            continue
        inp = _cluster(problem, c.name)
        local = inp.kind == "decode"
        if all_remote_decode and local:
            continue
        n = c.instances
        if all_remote_decode or (n == 0 and not local and threshold is not None):
            n = inp.count // c.gpus_per_instance
        if n < 1:
            continue
        pools.append(_prefill_pool(problem, c, n, d if local else None))
    if not any(p.datacenter == d.datacenter for p in pools) and not all_remote_decode:
        decode = _time_shared(problem, d, decode)
    m = problem.model
    return SimConfig(
        name,
        tuple(pools),
        decode,
        links=_links(problem, d.datacenter, schedule),
        routing=RoutingSpec(
            threshold_tokens=threshold, headroom=problem.offload.headroom, adaptive=adaptive
        ),
        kv_bytes_per_token=float(m.kv_bytes_per_token),
        kv_fixed_bytes=float(m.fixed_state_bytes),
        block_tokens=problem.block_tokens,
        data_plane_s=_data_plane(problem),
        idle_wake=problem.idle_wake,
    )


def _decode_pool(problem: Problem, d: ClusterPlan, all_remote_decode: bool) -> DecodePool:
    """A decode cluster's PD-D instances (``all_remote_decode``: every GPU of it decodes)."""
    dec_in = _cluster(problem, d.name)
    dec_lat = _latency(problem, dec_in, d.tensor_parallel, d.pipeline_parallel, "decode")
    batch = d.max_num_seqs or _decode_batch(
        problem, dec_in.gpu, d.tensor_parallel, d.pipeline_parallel, dec_lat
    )
    n_dec = d.instances
    if all_remote_decode:
        n_dec = dec_in.count // d.gpus_per_instance
    # The plan's engine numbers are vLLM's flags; PP decode keeps one micro-batch per stage.
    return DecodePool(
        f"{d.name}/decode",
        d.datacenter,
        n_dec * d.pipeline_parallel,
        dec_lat,
        max_batch=batch,
        kv_capacity_tokens=(d.kv_cache_tokens or 0) // d.pipeline_parallel,
    )


def _prefill_pool(
    problem: Problem, c: ClusterPlan, n: int, decode: ClusterPlan | None
) -> PrefillPool:
    """``n`` instances of prefill row ``c``; ``decode``: the PD-D row a PD-P pool feeds."""
    inp = _cluster(problem, c.name)
    lat = _latency(problem, inp, c.tensor_parallel, c.pipeline_parallel, "prefill")
    return PrefillPool(
        f"{c.name}/prefill",
        c.datacenter,
        n,
        lat,
        token_budget=c.max_num_batched_tokens or problem.max_num_batched_tokens,
        pipeline_stages=c.pipeline_parallel,
        cache_blocks=_cache_blocks(problem, inp.gpu, c.gpus_per_instance),
        kv_gbps=local_kv_gbps(inp, c.gpus_per_instance, decode.gpus_per_instance)
        if decode is not None
        else 0.0,
    )


def _time_shared(problem: Problem, d: ClusterPlan, decode: DecodePool) -> DecodePool:
    """Colocated PD (a pool too small to split, no PD-P): the decode instances also prefill
    the local prompts, and a vLLM engine does that as an aggregated engine (chunked prefill,
    decodes first, ``max_num_batched_tokens`` per step), so it is simulated as one: local
    prefills share the steps with the decodes (TPOT feels them; TTFT waits for them). It was
    once prefill instances beside the decoders: the same GPUs counted twice. Its prefix cache
    is the engine's (the local prompts' prefixes)."""
    gpu = _cluster(problem, d.name).gpu
    return replace(
        decode,
        aggregated=True,
        token_budget=d.max_num_batched_tokens or problem.max_num_batched_tokens,
        cache_blocks=_cache_blocks(problem, gpu, d.gpus_per_instance),
    )


def _multi_config(
    name: str,
    problem: Problem,
    plan: Plan,
    *,
    adaptive: bool,
    schedule: CapacitySchedule,
    naive: bool = False,
) -> SimConfig:
    """Several decode clusters: each router with its own ``t`` and the remotes the plan gives
    it (``RouterPlan``), arrivals split by the planned ``Λ_d``; PrfaaS pools and links shared.
    ``naive``: every GPU of a decode cluster decodes and every prompt goes remote, over any
    direct link into its datacenter. A remote reached only through another datacenter
    (transit) is refused: the simulator carries KV over one link."""
    routers = {r.decode_cluster: r for r in plan.routers}
    decoders = [c for c in plan.clusters if c.role == "decode" and c.instances > 0]
    missing = [d.name for d in decoders if d.name not in routers]
    if missing:
        raise SimulatorError(f"plan {plan.model} has no router for decode cluster(s) {missing}")
    prfaas_rows = [
        c
        for c in plan.clusters
        if c.role == "prefill" and _cluster(problem, c.name).kind != "decode"
    ]
    offloading = any(routers[d.name].threshold_tokens is not None for d in decoders)
    pools: list[PrefillPool] = []
    for c in prfaas_rows:
        n = c.instances
        if naive or (n == 0 and offloading):
            n = _cluster(problem, c.name).count // c.gpus_per_instance
        if n >= 1:
            pools.append(_prefill_pool(problem, c, n, None))
    remote_dc = {p.name: p.datacenter for p in pools}
    links = {lk.name: lk for lk in problem.links}
    by_gpus = all(routers[d.name].rate_rps is None for d in decoders)
    clusters: list[DecodeCluster] = []
    for d in decoders:
        router = routers[d.name]
        local: list[PrefillPool] = []
        if not naive:
            local = [
                _prefill_pool(problem, c, c.instances, d)
                for c in plan.clusters
                if c.role == "prefill" and c.name == d.name and c.instances > 0
            ]
        pools += local
        if naive:
            remotes = [
                (pool, lk.name)
                for pool, dc in remote_dc.items()
                for lk in problem.links
                if lk.from_ == dc and lk.to == d.datacenter
            ]
            threshold: float | None = 0.0
        else:
            remotes = []
            for rp in router.remotes if router.threshold_tokens is not None else []:
                pool = f"{rp.prefill_cluster}/prefill"
                lk = links.get(rp.link)
                if pool not in remote_dc:
                    continue
                if lk is None or lk.to != d.datacenter:
                    raise SimulatorError(
                        f"{d.name} offloads to {rp.prefill_cluster} through "
                        f"{'another datacenter' if lk is not None else 'no named link'} "
                        f"({rp.link!r}); the simulator carries KV over one direct link — add a "
                        f"link from {remote_dc[pool]!r} to {d.datacenter!r}"
                    )
                remotes.append((pool, rp.link))
            threshold = router.threshold_tokens
        share = float(d.gpus) if by_gpus else max(router.rate_rps or 0.0, 0.0)
        clusters.append(
            DecodeCluster(
                d.name,
                _decode_pool(problem, d, naive)
                if naive or local
                else _time_shared(problem, d, _decode_pool(problem, d, naive)),
                share,
                local=tuple(p.name for p in local),
                remotes=tuple(remotes),
                routing=RoutingSpec(
                    threshold_tokens=threshold,
                    headroom=problem.offload.headroom,
                    adaptive=adaptive,
                ),
            )
        )
    if naive and any(not c.remotes for c in clusters):
        bare = [c.name for c in clusters if not c.remotes]
        raise SimulatorError(
            f"naive heterogeneous needs a direct link into every decode cluster; {bare} have none"
        )
    m = problem.model
    return SimConfig(
        name,
        tuple(pools),
        None,
        links=tuple(
            LinkSpec(lk.name, lk.from_, lk.to, lk.bandwidth_gbps, lk.rtt_ms / 1e3, schedule)
            for lk in problem.links
        ),
        kv_bytes_per_token=float(m.kv_bytes_per_token),
        kv_fixed_bytes=float(m.fixed_state_bytes),
        block_tokens=problem.block_tokens,
        clusters=tuple(clusters),
        data_plane_s=_data_plane(problem),
        idle_wake=problem.idle_wake,
    )


def _data_plane(problem: Problem) -> tuple[float, float]:
    """(local, remote) seconds of the measured data plane per request (0 without one)."""
    dp = problem.data_plane
    return (0.0, 0.0) if dp is None else (dp.local_s, dp.remote_s)


def _homogeneous_problem(problem: Problem) -> Problem:
    """The planner's homogeneous-PD baseline as a problem of its own (same GPU count)."""
    base = problem.decode_clusters[0]
    gpus = sum(c.count for c in problem.clusters)
    count = max((gpus // base.per_node) * base.per_node, min(gpus, base.per_node))
    pool = replace(base, name=f"{base.name}-homogeneous", count=count)
    return replace(
        problem, clusters=(pool,), links=(), offload=OffloadInput("off", None, 0.8), notes=()
    )


def scenarios(problem: Problem, plan: Plan, *, schedule: CapacitySchedule = ()) -> list[Scenario]:
    """The plan's configuration and its baselines, ready to simulate."""
    from prfaas.planner.solver import plan as make_plan

    if not plan.feasible:
        raise SimulatorError(f"cannot simulate an infeasible plan: {plan.reason}")
    threshold = plan.threshold_tokens
    out = [
        Scenario(
            PRFAAS,
            _config(PRFAAS, problem, plan, threshold=threshold, adaptive=True, schedule=schedule),
            plan.throughput_rps,
        )
    ]
    by_name = {b.name: b for b in plan.baselines}
    if HOMOGENEOUS in by_name:
        sub = _homogeneous_problem(problem)
        sub_plan = make_plan(sub)
        if sub_plan.feasible:
            cfg = _config(HOMOGENEOUS, sub, sub_plan, threshold=None, adaptive=False, schedule=())
            out.append(Scenario(HOMOGENEOUS, cfg, by_name[HOMOGENEOUS].throughput_rps))
    if NAIVE in by_name and problem.prefill_clusters:
        try:
            cfg = _config(
                NAIVE,
                problem,
                plan,
                threshold=0.0,
                adaptive=False,
                schedule=schedule,
                all_remote_decode=True,
            )
        except SimulatorError:
            if len(problem.decode_clusters) == 1:
                raise
            # Several clusters, one without a direct link: the naive layout cannot serve it.
        else:
            out.append(Scenario(NAIVE, cfg, by_name[NAIVE].throughput_rps))
    return out + aggregated_scenarios(problem, plan, schedule=schedule)


def common_rate(problem: Problem, found: list[Scenario], load: float = 0.8) -> float:
    """The rate every scenario is compared at: the workload's, else ``load`` × the smallest
    planned throughput (so that every configuration is stable)."""
    if problem.workload.requests_per_second:
        return problem.workload.requests_per_second
    planned = [s.planned_rps for s in found if s.planned_rps > 0]
    if not planned:
        raise SimulatorError("no scenario has a positive planned throughput; nothing to simulate")
    return load * min(planned)


def rate_basis(problem: Problem, found: list[Scenario], load: float = 0.8) -> str:
    """Where ``common_rate`` took its rate from, in words (printed beside simulated numbers)."""
    if problem.workload.requests_per_second:
        return "workload.requestsPerSecond"
    planned = [s for s in found if s.planned_rps > 0]
    if not planned:
        return "no configuration has a positive planned throughput"
    low = min(planned, key=lambda s: s.planned_rps)
    return (
        f"{load:g} × the smallest planned Λ_max ({low.name}, {low.planned_rps:.3g} req/s), so "
        "every configuration is stable; set workload.requestsPerSecond, or prfaas simulate "
        "--rate, for another"
    )


def _stream(
    problem: Problem, n: int, rate: float, seed: int, kind: ArrivalKind, cv: float
) -> RequestStream:
    w = problem.workload
    return synthetic_stream(
        n, rate, w.input_length, w.output_length, seed=seed, kind=kind, cv=cv, sharing=w.sharing
    )


def run_scenarios(
    problem: Problem,
    found: list[Scenario],
    *,
    requests: int,
    rate: float,
    seed: int = 0,
    stream: RequestStream | None = None,
    goodput_requests: int = 0,
    progress: Callable[[str, int], None] | None = None,
    arrival: ArrivalKind = "poisson",
    cv: float = 1.0,
    replan_interval_s: float = 0.0,
    switch_delay_s: float = 0.0,
) -> list[ScenarioRun]:
    """Simulate every scenario over the same requests at ``rate`` (sampled from the workload
    with ``arrival``/``cv`` unless ``stream`` is given); optionally search goodput with
    ``goodput_requests`` requests per probe (more where a link follows a bandwidth schedule:
    each probe then spans the same window as the run, ``ScenarioRun.goodput_window_s``).
    ``replan_interval_s`` > 0: PrfaaS-PD runs with the online re-plan loop
    (``sim.online``: the solver on the measured links, role changes with drain); its goodput
    probes do not."""
    base = stream if stream is not None else _stream(problem, requests, rate, seed, arrival, cv)
    slo = SloTarget(problem.slo.ttft_s, problem.slo.tpot_s, problem.slo.attainment)
    runs = []
    for sc in found:
        cb: ProgressFn | None = None
        if progress is not None:

            def cb(
                done: int, name: str = sc.name, report: Callable[[str, int], None] = progress
            ) -> None:
                report(name, done)

        online = None
        if replan_interval_s > 0 and sc.name == PRFAAS:
            spec = OnlineSpec(solver_replan(problem), replan_interval_s, switch_delay_s)
            online = simulate_online(sc.config, base, spec, seed=seed, progress=cb)
            res = online.result
        else:
            res = simulate(sc.config, base, seed=seed, progress=cb)
        good = None
        # A schedule changes capacity at fixed times: every probe must span the window the run
        # above reports on, or the goodput would describe a link that never dropped.
        window = (
            float(base.arrival_s[-1])
            if len(base) and any(ln.schedule for ln in sc.config.links)
            else 0.0
        )
        if goodput_requests > 0:
            w = problem.workload
            good = config_goodput(
                sc.config,
                w.input_length,
                w.output_length,
                slo,
                requests=goodput_requests,
                seed=seed,
                guess=max(sc.planned_rps, 1e-3) * 0.8,
                kind=arrival,
                cv=cv,
                cover_s=window,
            ).rate
        runs.append(ScenarioRun(sc, rate, res, good, window if good is not None else 0.0, online))
    return runs


def _predicted(run: ScenarioRun, problem: Problem) -> Predicted:
    r = run.result
    return Predicted(
        ttft_p90_s=float(np.percentile(r.ttft, 90)),
        tpot_p90_s=float(np.percentile(r.tpot, 90)),
        attainment=r.attainment(problem.slo.ttft_s, problem.slo.tpot_s),
        rate_rps=run.rate,
        goodput_rps=run.goodput_rps,
        offload_fraction=r.offload_fraction,
    )


def predict(
    problem: Problem,
    plan: Plan,
    *,
    requests: int = 4000,
    rate: float | None = None,
    seed: int = 0,
    goodput_requests: int = 0,
) -> list[ScenarioRun]:
    """Simulate the plan and its baselines; fill ``plan.predicted`` and ``Baseline.predicted``.

    Returns the runs for callers that want more than the P90s (tables, plots).
    """
    found = scenarios(problem, plan)
    at = rate if rate is not None else common_rate(problem, found)
    runs = run_scenarios(
        problem, found, requests=requests, rate=at, seed=seed, goodput_requests=goodput_requests
    )
    fill_predicted(plan, runs, problem)
    return runs


def fill_predicted(plan: Plan, runs: list[ScenarioRun], problem: Problem) -> Plan:
    """Write simulated P90 TTFT/TPOT, attainment (and goodput, if searched) into ``plan``."""
    by_name = {run.scenario.name: run for run in runs}
    if PRFAAS in by_name:
        ours = by_name[PRFAAS]
        plan.predicted = _predicted(ours, problem)
        res = ours.result
        slo = problem.slo
        rows = {row["name"]: row for row in res.cluster_summaries(slo.ttft_s, slo.tpot_s)}
        for router in plan.routers:
            row = rows.get(router.decode_cluster)
            if row is not None:
                router.predicted = Predicted(
                    ttft_p90_s=row["ttftP90S"],
                    tpot_p90_s=row["tpotP90S"],
                    attainment=row["attainment"],
                    rate_rps=row["rateRps"],
                    offload_fraction=row["offloadFraction"],
                )
        for link in plan.links:
            if link.name in res.links:
                link.predicted_egress_gbps = res.mean_egress_bps(link.name) / 1e9
    for b in plan.baselines:
        if b.name in by_name:
            b.predicted = _predicted(by_name[b.name], problem)
    return plan


def simulated_goodput(
    *, requests: int = 600, seed: int = 0, outputs: LengthSampler | None = None
) -> GoodputFn:
    """A ``PlannerSettings.goodput`` that simulates one instance (DistServe's Algorithm 1 with
    ``simu_prefill`` / ``simu_decode``): uniform prompts of the role's length, the SLO's
    percentile replaced by the attainment of each request's own TTFT (prefill) or TPOT
    (decode)."""
    from prfaas.planner.sim.goodput import simulated_decode_goodput, simulated_prefill_goodput

    def fn(c: Candidate, load: RoleLoad) -> float:
        length = FixedLengths(max(1, round(load.length)))
        if load.role == "prefill":
            return simulated_prefill_goodput(
                c.latency,
                length,
                load.ttft_s,
                0.9,
                pipeline_stages=c.pp,
                requests=requests,
                seed=seed,
            )
        out = outputs or FixedLengths(max(2, round(load.output_tokens)))
        ctx_in = FixedLengths(max(1, round(load.length - load.output_tokens / 2)))
        by_memory = int(c.kv_capacity_bytes // max(c.pp * load.kv_bytes_per_sequence, 1.0))
        batch = max(1, min(load.max_batch_size, by_memory))
        one = simulated_decode_goodput(
            c.latency,
            ctx_in,
            out,
            load.tpot_s,
            0.9,
            ttft_s=load.ttft_s,
            max_batch=batch,
            requests=requests,
            seed=seed,
        )
        return c.pp * one if math.isfinite(one) else 0.0

    return fn


AGGREGATED_SHAPES = ("aggregated", "aggregated+offload")
"""The ``Plan.shapes`` rows ``aggregated_scenarios`` turns into configurations."""


def aggregated_scenarios(
    problem: Problem, plan: Plan, *, schedule: CapacitySchedule = (), every: bool = False
) -> list[Scenario]:
    """The plan's aggregated shape rows (``planner.shapes``) as configurations, named by their
    shape: every GPU of the decode cluster an aggregated (chunked-prefill) instance of its PD-D
    shape with the row's token budget (``DecodePool.aggregated``), and with offload the PrfaaS
    pools behind the links into its datacenter above the row's ``t``. By default only a row
    that ranks best for its cluster (``shapes.best_option``: what ``auto`` would deploy if the
    operator could); ``every``: each aggregated row that serves a rate. Several decode clusters:
    one configuration, ``aggregated-where-best`` (``_aggregated_multi``)."""
    from prfaas.planner.shapes import best_option

    decoders = [c for c in plan.clusters if c.role == "decode" and c.instances > 0]
    if len(decoders) > 1:
        return _aggregated_multi(problem, plan, decoders, schedule)
    if not decoders:
        return []
    d = decoders[0]
    rows = [o for o in plan.shapes if o.decode_cluster == d.name]
    if not rows:
        return []
    best = best_option(rows)
    return [
        Scenario(o.shape, _aggregated_config(problem, plan, d, o, schedule), o.goodput_rps)
        for o in rows
        if o.shape in AGGREGATED_SHAPES and o.goodput_rps > 0 and (every or o is best)
    ]


def _aggregated_config(
    problem: Problem, plan: Plan, d: ClusterPlan, row: ShapeOption, schedule: CapacitySchedule
) -> SimConfig:
    """One aggregated shape row of decode cluster ``d`` as a configuration."""
    pool = _aggregated_pool(problem, d, row)
    offload = row.threshold_tokens is not None
    remote = [
        _prefill_pool(
            problem, c, c.instances or _cluster(problem, c.name).count // c.gpus_per_instance, None
        )
        for c in plan.clusters
        if offload and c.role == "prefill" and _cluster(problem, c.name).kind != "decode"
    ]
    m = problem.model
    return SimConfig(
        row.shape,
        tuple(p for p in remote if p.instances > 0),
        pool,
        links=_links(problem, d.datacenter, schedule) if offload else (),
        routing=RoutingSpec(
            threshold_tokens=row.threshold_tokens, headroom=problem.offload.headroom
        ),
        kv_bytes_per_token=float(m.kv_bytes_per_token),
        kv_fixed_bytes=float(m.fixed_state_bytes),
        block_tokens=problem.block_tokens,
        data_plane_s=_data_plane(problem),
        idle_wake=problem.idle_wake,
    )


def _aggregated_pool(problem: Problem, d: ClusterPlan, row: ShapeOption) -> DecodePool:
    """Every GPU of decode cluster ``d`` as aggregated instances of its PD-D shape."""
    return replace(
        _decode_pool(problem, d, False),
        name=f"{d.name}/aggregated",
        instances=row.instances * d.pipeline_parallel,
        aggregated=True,
        token_budget=row.token_budget or 0,
    )


AGGREGATED_WHERE_BEST = "aggregated-where-best"


def _aggregated_multi(
    problem: Problem, plan: Plan, decoders: list[ClusterPlan], schedule: CapacitySchedule
) -> list[Scenario]:
    """The plan's multi-cluster configuration with each decode cluster whose aggregated row
    ranks best served by that aggregated pool instead: no PD-P, the row's ``t`` over the
    remotes the plan gives its router (none: it stays local). Empty where no row ranks best."""
    from prfaas.planner.shapes import best_option

    picks: dict[str, tuple[ClusterPlan, ShapeOption]] = {}
    for d in decoders:
        rows = [o for o in plan.shapes if o.decode_cluster == d.name]
        best = best_option(rows) if rows else None
        if best is not None and best.shape in AGGREGATED_SHAPES and best.goodput_rps > 0:
            picks[d.name] = (d, best)
    if not picks:
        return []
    base = _config(
        AGGREGATED_WHERE_BEST,
        problem,
        plan,
        threshold=plan.threshold_tokens,
        adaptive=True,
        schedule=schedule,
    )
    dropped: set[str] = set()
    clusters = []
    for c in base.clusters:
        if c.name not in picks:
            clusters.append(c)
            continue
        d, row = picks[c.name]
        dropped.update(c.local)
        offload = row.threshold_tokens is not None and bool(c.remotes)
        clusters.append(
            replace(
                c,
                decode=_aggregated_pool(problem, d, row),
                local=(),
                remotes=c.remotes if offload else (),
                routing=replace(
                    c.routing, threshold_tokens=row.threshold_tokens if offload else None
                ),
            )
        )
    config = replace(
        base,
        prefill=tuple(p for p in base.prefill if p.name not in dropped),
        clusters=tuple(clusters),
    )
    return [Scenario(AGGREGATED_WHERE_BEST, config, plan.throughput_rps)]
