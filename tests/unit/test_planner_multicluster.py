"""A threshold per decode cluster: shared PrfaaS compute and links, one ``t_d`` per router."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.multicluster import MultiResult, optimise_thresholds
from prfaas.planner.plan import Plan
from prfaas.planner.problem import ClusterInput, LinkInput, Problem, SloInput, WorkloadInput
from prfaas.planner.solver import plan
from prfaas.planner.throughput import LocalPool, PrfaasPool, Solver
from prfaas.planner.topology import build_network

DIST = LogNormal(9.9, 1.0, 128, 131072)
KV_PER_TOKEN, KV_FIXED = 17280.0, 180e6


def kv_bytes(tokens: float) -> float:
    return KV_FIXED + KV_PER_TOKEN * tokens


def h200(length: float) -> float:
    return 0.396 + 4.0e-5 * length + 1.03e-10 * length * length


def _solver(
    fat: float, thin: float, n_prefill: int = 4, headroom: float = 0.8, dedicated: bool = False
) -> Solver:
    """PrfaaS in ``a``; decode cluster ``fat`` in ``b``, ``thin`` in ``c``. ``dedicated``: a
    second PrfaaS cluster in ``a2`` whose only link is the thin one (``a`` then reaches ``b``
    only), so the two decode clusters share nothing and each wants its own ``t``."""
    clusters = [
        ClusterInput("pre", "a", "prefill", GPUS["H200"], n_prefill * 8),
        ClusterInput("fat", "b", "decode", GPUS["H20"], 64),
        ClusterInput("thin", "c", "decode", GPUS["H20"], 64),
    ]
    links = [LinkInput("ab", "a", "b", fat), LinkInput("ac", "a2" if dedicated else "a", "c", thin)]
    pre = [PrfaasPool("pre", n_prefill, h200)]
    if dedicated:
        clusters.append(ClusterInput("pre2", "a2", "prefill", GPUS["H200"], n_prefill * 8))
        pre.append(PrfaasPool("pre2", n_prefill, h200))
    net = build_network(clusters, links, headroom)
    local = [
        LocalPool(name, 64, 8, 8, lambda x: 2.4 * h200(x), 0.78125) for name in ("fat", "thin")
    ]
    return Solver(DIST, pre, local, net, kv_bytes)


def _threshold(res: MultiResult, name: str) -> float:
    c = res.clusters[name]
    return c.split.threshold if c.offloading else math.inf


def test_thin_link_gets_a_higher_threshold_and_lambda_beats_one_global_t() -> None:
    solver = _solver(fat=100.0, thin=3.0, n_prefill=8)
    one_t = solver.optimise()
    res = optimise_thresholds(solver, one_t)
    assert res.clusters["fat"].offloading
    assert _threshold(res, "thin") > _threshold(res, "fat")
    assert res.rate >= one_t.rate * (1 - 1e-9)
    assert res.rate <= res.bound * (1 + 1e-9)


def test_clusters_behind_different_links_beat_one_global_threshold() -> None:
    # Each decode cluster has its own PrfaaS cluster: one t cannot suit a 100 and a 10 Gbps link.
    solver = _solver(fat=100.0, thin=10.0, n_prefill=8, dedicated=True)
    one_t = solver.optimise()
    res = optimise_thresholds(solver, one_t)
    assert res.clusters["fat"].offloading and res.clusters["thin"].offloading
    assert _threshold(res, "thin") > _threshold(res, "fat")
    assert res.rate > one_t.rate * 1.05
    _check_within_capacities(solver, res)


def test_plan_gives_each_router_its_own_threshold() -> None:
    problem = Problem(
        "two",
        MODELS["hybrid-1t"],
        (
            ClusterInput("pre", "a", "prefill", GPUS["H200"], 64),
            ClusterInput("fat", "b", "decode", GPUS["H20"], 64),
            ClusterInput("thin", "c", "decode", GPUS["H20"], 32),
        ),
        (LinkInput("ab", "a", "b", 100.0), LinkInput("ac", "a", "c", 3.0)),
        WorkloadInput(DIST, Fixed(1024)),
        SloInput(10.0, 0.05),
    )
    p = plan(problem)
    assert p.feasible, p.reason
    routers = {r.decode_cluster: r for r in p.routers}
    t_fat = routers["fat"].threshold_tokens
    t_thin = routers["thin"].threshold_tokens
    assert t_fat is not None and routers["fat"].remotes
    assert (t_thin or math.inf) > t_fat
    assert p.threshold_tokens == t_fat  # the largest offloading decode cluster's
    for link in p.links:
        assert link.egress_gbps <= link.headroom * link.capacity_gbps * (1 + 1e-9)
    st_, off = p.stages, p.offload_fraction
    assert 0 < off < 1
    assert p.throughput_rps <= st_["pdDecode"] * (1 + 1e-9)
    assert p.throughput_rps <= st_["pdPrefill"] / (1 - off) * (1 + 1e-9)
    assert p.throughput_rps <= st_["prfaas"] / off * (1 + 1e-9)
    assert any("per-cluster thresholds" in n for n in p.notes)
    data = p.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain floats, no numpy scalars
    assert [r["thresholdTokens"] for r in data["routers"]] == [t_fat, t_thin]
    assert Plan.from_dict(data).to_dict() == data


def test_generated_10x20_beats_the_global_threshold(
    bench_script: Callable[[str], ModuleType],
) -> None:
    p = plan(bench_script("planner").generated())
    assert p.feasible, p.reason
    assert p.throughput_rps >= 70.73  # one global t (and the all-local fallback) gave 70.73
    thresholds = {r.threshold_tokens for r in p.routers if r.threshold_tokens is not None}
    assert len(thresholds) > 1  # clusters behind different links get different t
    for r in p.routers:
        assert bool(r.remotes) == (r.threshold_tokens is not None)
    for link in p.links:
        assert link.egress_gbps <= link.headroom * link.capacity_gbps * (1 + 1e-9)


def _check_within_capacities(solver: Solver, res: MultiResult) -> None:
    """Every Λ_d within its local bound, every link within headroom, every PrfaaS cluster
    within its compute."""
    for name, c in res.clusters.items():
        assert c.rate <= c.local.capacity * (1 + 1e-9)
        assert c.rate >= solver._all_local[name].capacity * (1 - 1e-9)  # offload never hurts
    for name, lk in solver.network.links.items():
        limit = solver.network.headroom * lk.bandwidth_gbps * 1e9 / 8
        assert res.routing.link_bytes.get(name, 0.0) <= limit * (1 + 1e-6)
    for pool in solver.prefill:
        busy = sum(
            rps * pool.stage(res.clusters[d].split.l_long) / pool.instances
            for (d, k), rps in res.routing.pair_rps.items()
            if k == pool.name
        )
        assert busy <= 1 + 1e-6
    served = {d: 0.0 for d in res.clusters}
    for (d, _), rps in res.routing.pair_rps.items():
        served[d] += rps
    for name, c in res.clusters.items():
        assert served[name] == pytest.approx(c.offload_rps, rel=1e-5, abs=1e-7)
    assert res.rate <= res.bound * (1 + 1e-9)


bandwidths = st.floats(min_value=0.05, max_value=400.0)


@settings(max_examples=25, deadline=None)
@given(fat=bandwidths, thin=bandwidths, n_prefill=st.integers(1, 8))
def test_routing_stays_within_every_capacity(fat: float, thin: float, n_prefill: int) -> None:
    solver = _solver(fat, thin, n_prefill)
    one_t = solver.optimise()
    res = optimise_thresholds(solver, one_t)
    _check_within_capacities(solver, res)
    assert res.rate >= one_t.rate * (1 - 1e-9)


@settings(max_examples=25, deadline=None)
@given(fat=bandwidths, thin=bandwidths, factor=st.floats(1.0, 20.0), n_prefill=st.integers(1, 8))
def test_more_bandwidth_never_lowers_lambda_nor_raises_any_threshold(
    fat: float, thin: float, factor: float, n_prefill: int
) -> None:
    # Each decode cluster with its own PrfaaS cluster and link: nothing shared, so each t_d
    # must move with its own link alone. (With a shared PrfaaS cluster more bandwidth may hand
    # its compute from one decode cluster to the other, whose t then rightly rises.)
    narrow = _solver(fat, thin, n_prefill, dedicated=True)
    wide = _solver(fat * factor, thin * factor, n_prefill, dedicated=True)
    a = optimise_thresholds(narrow, narrow.optimise())
    b = optimise_thresholds(wide, wide.optimise())
    assert b.rate >= a.rate * (1 - 1e-6)
    lo, hi = narrow._bounds()
    step = (hi / lo) ** (1 / (narrow.grid_points - 1))  # thresholds live on this grid
    for name in a.clusters:  # t never falls as bandwidth shrinks, per cluster
        assert _threshold(a, name) >= _threshold(b, name) / step * (1 - 1e-9)
