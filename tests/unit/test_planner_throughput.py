"""PrfaaS Eqs. 1-8 and the threshold/split optimiser, including hypothesis properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.planner.distributions import LogNormal
from prfaas.planner.latency.catalog import GPUS
from prfaas.planner.problem import ClusterInput, LinkInput
from prfaas.planner.throughput import (
    Evaluation,
    LocalPool,
    PrfaasPool,
    Solver,
    best_split,
    kv_throughput,
    lambda_max,
    theta_pd_decode,
    theta_pd_prefill,
    theta_prfaas,
)
from prfaas.planner.topology import build_network

DIST = LogNormal(9.9, 1.0, 128, 131072)
KV_PER_TOKEN, KV_FIXED = 17280.0, 180e6


def kv_bytes(tokens: float) -> float:
    return KV_FIXED + KV_PER_TOKEN * tokens


def test_equations_match_published_arithmetic() -> None:
    # Table 5, 32K: 701.3 MiB in 1.84 s = 3.19 Gbps (Eq. 1)
    assert kv_throughput(701.3 * 2**20, 1.84) * 8 / 1e9 == pytest.approx(3.19, abs=0.01)
    assert theta_prfaas(4, 2.48, 1e12, 1e9) == pytest.approx(4 / 2.48)  # compute-bound
    assert theta_prfaas(4, 2.48, 1e9, 1e9) == pytest.approx(1.0)  # egress-bound
    assert theta_pd_prefill(3, 1.83) == pytest.approx(1.64, abs=0.01)
    assert theta_pd_decode(5, 20, 0.025, 1024) == pytest.approx(3.906, abs=0.001)
    # Table 6: Λ_max = min(1.61/0.496, 1.64/0.504, 3.91) = 3.24
    assert lambda_max(1.61, 1.64, 3.91, 0.496) == pytest.approx(3.25, abs=0.01)
    assert lambda_max(0.0, 2.11, 2.35, 0.0) == pytest.approx(2.11)


def _solver(
    bandwidth: float,
    n_prefill: int = 4,
    local_gpus: int = 64,
    h20_slowdown: float = 2.4,
    headroom: float = 0.8,
) -> Solver:
    clusters = (
        ClusterInput("pre", "a", "prefill", GPUS["H200"], n_prefill * 8),
        ClusterInput("pd", "b", "decode", GPUS["H20"], local_gpus),
    )
    links = (LinkInput("ab", "a", "b", bandwidth),)
    net = build_network(clusters, links, headroom)

    def h200(length: float) -> float:
        return 0.396 + 4.0e-5 * length + 1.03e-10 * length * length

    pre = [PrfaasPool("pre", n_prefill, h200)]
    local = [LocalPool("pd", local_gpus, 8, 8, lambda x: h20_slowdown * h200(x), 0.78125)]
    return Solver(DIST, pre, local, net, kv_bytes)


def test_best_split_is_the_integer_optimum() -> None:
    pool = LocalPool("pd", 64, 8, 8, lambda x: 1.8, 0.78)
    s = best_split(pool, 0.5, 10_000)
    brute = max(min(n / 1.8 / 0.5, (8 - n) * 0.78) for n in range(9))
    assert s.capacity == pytest.approx(brute)
    assert s.n_p + s.n_d == 8


def test_optimum_balances_the_two_prefill_paths() -> None:
    ev = _solver(100).optimise()
    sp = ev.split
    compute = ev.prefill_rps["pre"]
    theta_p = ev.local["pd"].theta_p
    # Eq. 7: Θ_prfaas/p = Θ_pd-p/(1-p) at the optimum (decode not binding)
    assert compute / sp.p == pytest.approx(theta_p / (1 - sp.p), rel=1e-3)
    assert ev.rate == pytest.approx(compute / sp.p, rel=1e-3)


def test_thin_link_means_no_offload() -> None:
    ev = _solver(0.01).optimise()
    assert math.isinf(ev.split.threshold) and ev.split.p == 0


def _bounds(ev: Evaluation) -> list[float]:
    sp = ev.split
    out = [sum(s.theta_d for s in ev.local.values())]
    if sp.p > 0:
        out.append(sum(ev.served.values()) / sp.p + 1e-12)
        out.append(sum(ev.prefill_rps.values()) / sp.p)
    if sp.p < 1:
        out.append(sum(s.theta_p for s in ev.local.values()) / (1 - sp.p))
    return out


bandwidths = st.floats(min_value=0.05, max_value=400.0)


@settings(max_examples=30, deadline=None)
@given(
    bw=bandwidths,
    n_prefill=st.integers(1, 8),
    gpus=st.sampled_from([16, 32, 64, 128]),
    slow=st.floats(1.2, 5.0),
)
def test_lambda_never_exceeds_a_stage_bound(
    bw: float, n_prefill: int, gpus: int, slow: float
) -> None:
    ev = _solver(bw, n_prefill, gpus, slow).optimise()
    for bound in _bounds(ev):
        assert ev.rate <= bound * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(bw=bandwidths, factor=st.floats(1.0, 20.0), n_prefill=st.integers(1, 8))
def test_more_bandwidth_never_lowers_lambda_and_never_lowers_t(
    bw: float, factor: float, n_prefill: int
) -> None:
    thin = _solver(bw, n_prefill).optimise()
    wide = _solver(bw * factor, n_prefill).optimise()
    assert wide.rate >= thin.rate * (1 - 1e-6)
    # t never falls as bandwidth shrinks
    assert thin.split.threshold >= wide.split.threshold * (1 - 1e-3)


@settings(max_examples=30, deadline=None)
@given(bw=bandwidths, headroom=st.floats(0.05, 1.0), n_prefill=st.integers(1, 8))
def test_predicted_egress_stays_within_headroom(bw: float, headroom: float, n_prefill: int) -> None:
    solver = _solver(bw, n_prefill, headroom=headroom)
    ev = solver.optimise()
    if ev.split.p == 0:
        return
    size = kv_bytes(ev.split.l_long)
    routed = solver.network.assign(ev.prefill_rps, ev.served, size)
    egress_bps = routed.link_rps["ab"] * size * 8
    assert egress_bps <= headroom * bw * 1e9 * (1 + 1e-9)
    assert routed.served["pd"] == pytest.approx(ev.served["pd"], rel=1e-4, abs=1e-5)


@settings(max_examples=12, deadline=None)
@given(bw=st.floats(0.5, 400.0), factor=st.floats(1.0, 10.0))
def test_plan_level_bandwidth_properties(bw: float, factor: float) -> None:
    from prfaas.planner.distributions import Fixed
    from prfaas.planner.latency.catalog import MODELS
    from prfaas.planner.plan import Plan
    from prfaas.planner.problem import Problem, SloInput, WorkloadInput
    from prfaas.planner.solver import plan

    def at(gbps: float) -> Plan:
        return plan(Problem(
            "p", MODELS["hybrid-1t"],
            (ClusterInput("pre", "a", "prefill", GPUS["H200"], 32),
             ClusterInput("pd", "b", "decode", GPUS["H20"], 64)),
            (LinkInput("ab", "a", "b", gbps),),
            WorkloadInput(DIST, Fixed(1024)), SloInput(10.0, 0.05),
        ))  # fmt: skip

    thin, wide = at(bw), at(bw * factor)
    assert wide.throughput_rps >= thin.throughput_rps * (1 - 1e-6)
    t_thin = thin.threshold_tokens or math.inf
    t_wide = wide.threshold_tokens or math.inf
    assert t_thin >= t_wide * (1 - 1e-3)
    for p in (thin, wide):
        st_ = p.stages
        assert p.throughput_rps <= st_["pdDecode"] * (1 + 1e-9)
        if p.threshold_tokens is not None:
            assert p.throughput_rps <= st_["prfaas"] / p.offload_fraction * (1 + 1e-9)
            assert p.throughput_rps <= st_["pdPrefill"] / (1 - p.offload_fraction) * (1 + 1e-9)
        for link in p.links:
            assert link.egress_gbps <= link.headroom * link.capacity_gbps * (1 + 1e-9)
