"""Goodput by bisection: against a known edge and against the M/D/1 closed form."""

from __future__ import annotations

import math

import pytest
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import FixedLengths
from prfaas.planner.sim.goodput import SloTarget, config_goodput, goodput, simulated_prefill_goodput
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, SimConfig


def test_bisection_finds_the_edge() -> None:
    res = goodput(lambda r: 1.0 if r <= 3.7 else 0.5, 0.9, guess=1.0, rel_tol=0.001)
    assert res.rate == pytest.approx(3.7, rel=0.002)
    assert res.rate <= 3.7
    res = goodput(lambda r: 1.0 if r <= 0.01 else 0.0, 0.9, guess=1.0, rel_tol=0.001)
    assert res.rate == pytest.approx(0.01, rel=0.002)
    assert goodput(lambda r: 0.0, 0.9).rate == 0.0


def test_prefill_goodput_matches_md1_mean_edge() -> None:
    """With a *mean*-TTFT-like objective the edge is where Eq. 1 reaches the objective.

    For M/D/1 the P90 TTFT is not closed-form, so check the ordering instead: goodput is below
    the M/D/1 capacity 1/D and above the rate at which Eq. 1's mean hits the objective
    (P90 > mean, so the P90 edge must come first, but only by a bounded amount).
    """
    d = 0.1
    lat = DistServeForm(d, 0.0, 0.0, 0.01, 0.0, 0.0)
    ttft = 0.4
    rate = simulated_prefill_goodput(lat, FixedLengths(100), ttft, 0.9, requests=4000)
    # Eq. 1 mean TTFT equals the objective at R = 2(T − D) / (D(2T − D)).
    mean_edge = 2 * (ttft - d) / (d * (2 * ttft - d))
    assert rate < mean_edge < 1 / d
    assert rate > 0.7 * mean_edge


def test_pipeline_stages_raise_prefill_goodput() -> None:
    lat = DistServeForm(0.1, 0.0, 0.0, 0.01, 0.0, 0.0)
    one = simulated_prefill_goodput(lat, FixedLengths(100), 0.4, requests=2000)
    two = simulated_prefill_goodput(lat, FixedLengths(100), 0.4, pipeline_stages=2, requests=2000)
    assert two > 1.7 * one


def test_config_goodput_joint_slo() -> None:
    """A TPOT objective the decode pool cannot meet gives zero goodput however loose TTFT is."""
    pre = DistServeForm(0.05, 0.0, 0.0, 0.0, 0.0, 0.0)
    dec = DistServeForm(0.0, 0.0, 0.0, 0.02, 0.0, 0.0)
    config = SimConfig(
        "pd",
        (PrefillPool("p", "dc", 1, pre),),
        DecodePool("d", "dc", 1, dec, max_batch=8),
    )
    ok = config_goodput(config, FixedLengths(100), FixedLengths(20), SloTarget(1.0, 0.03))
    assert 0 < ok.rate < 20
    never = config_goodput(config, FixedLengths(100), FixedLengths(20), SloTarget(1.0, 0.01))
    assert never.rate == 0.0
    assert all(math.isfinite(r) for r, _ in ok.probes)


def test_config_goodput_covers_a_bandwidth_schedule() -> None:
    """A link that drops from 8 to 0.8 Gbps at 400 s: probes of 200 requests end long before
    the drop; probes spanning the 800 s window see it, and the goodput falls with it."""
    from prfaas.planner.sim.links import LinkSpec
    from prfaas.planner.sim.simulator import RoutingSpec

    config = SimConfig(
        "all-remote",
        (PrefillPool("prfaas", "dc-a", 4, DistServeForm(0.05, 0, 0, 0, 0, 0)),),
        DecodePool("decode", "dc-b", 4, DistServeForm(0, 0, 0, 1e-3, 0, 0), max_batch=64),
        links=(LinkSpec("a-b", "dc-a", "dc-b", 8.0, schedule=((400.0, 0.8),)),),
        routing=RoutingSpec(threshold_tokens=0, adaptive=False),
        kv_bytes_per_token=1e5,  # 1000-token prompts: 100 MB each, 10 req/s at 8 Gbps
    )
    slo = SloTarget(2.0, 0.05)
    spans: list[float] = []

    def probe(rate: float, res: object) -> None:
        spans.append(float(res.arrival_s[-1]))  # type: ignore[attr-defined]

    short = config_goodput(config, FixedLengths(1000), FixedLengths(4), slo, requests=200,
                           guess=5.0)
    covered = config_goodput(config, FixedLengths(1000), FixedLengths(4), slo, requests=200,
                             guess=5.0, cover_s=800.0, on_probe=probe)
    assert short.rate > 5.0  # the drop is never reached
    assert covered.rate < 0.5 * short.rate
    assert spans and min(spans) >= 800.0
