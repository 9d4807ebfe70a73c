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
