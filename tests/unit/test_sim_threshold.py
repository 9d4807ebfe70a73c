"""Bandwidth-aware routing: halving the link raises t and keeps egress under capacity."""

from __future__ import annotations

import numpy as np
import pytest
from prfaas.planner.distributions import LogNormal
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import FixedLengths, RequestStream, synthetic_stream
from prfaas.planner.sim.links import LinkSpec, parse_schedule
from prfaas.planner.sim.metrics import SimResult, StepSeries, time_average
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, RoutingSpec, SimConfig, simulate

PLANNED_T = 19_400
FAST = DistServeForm(0.39, 4.1e-5, 1e-10, 0.0, 0.0, 0.0)  # ≈ Table 5's 8×H200 prefill
SLOW = DistServeForm(0.39 * 2.5, 4.1e-5 * 2.5, 2.5e-10, 0.0, 0.0, 0.0)
DECODE = DistServeForm(0.0, 0.0, 0.0, 0.01, 1e-9, 1e-4)
HALVED, RESTORED, END = 200.0, 400.0, 600.0
RATE = 2.4


def _config(adaptive: bool, distribution_aware: bool = False) -> SimConfig:
    return SimConfig(
        "prfaas-pd",
        (PrefillPool("prfaas", "dc-a", 4, FAST), PrefillPool("pd-p", "dc-b", 8, SLOW)),
        DecodePool("pd-d", "dc-b", 8, DECODE, max_batch=64),
        links=(
            LinkSpec(
                "a-b",
                "dc-a",
                "dc-b",
                16.0,
                rtt_s=0.005,
                schedule=parse_schedule(f"0:16,{HALVED}:8,{RESTORED}:16"),
            ),
        ),
        routing=RoutingSpec(
            threshold_tokens=PLANNED_T,
            adaptive=adaptive,
            distribution_aware=distribution_aware,  # the feedback loop alone (the derived
            # base is covered by test_sim_threshold_outage.py)
            meter_window_s=20.0,
            controller_interval_s=5.0,
        ),
        kv_bytes_per_token=17_000,
        kv_fixed_bytes=182e6,
    )


def _stream() -> RequestStream:
    lengths = LogNormal(mu=9.90, sigma=1.00, lower=128, upper=131072)
    return synthetic_stream(int(RATE * END), RATE, lengths, FixedLengths(64), seed=11)


def _offered_bps(res: SimResult, start: float, end: float) -> float:
    t, nbytes = res.offered["a-b"]
    inside = (t >= start) & (t < end)
    return 8.0 * float(nbytes[inside].sum()) / (end - start)


@pytest.fixture(scope="module")
def adaptive() -> SimResult:
    return simulate(_config(adaptive=True), _stream())


def test_halving_raises_t_and_restoring_lets_it_fall_back(adaptive: SimResult) -> None:
    thr = adaptive.thresholds["a-b"]
    series = StepSeries.of(thr.t, thr.v)
    assert time_average(series, 0.0, HALVED) < 1.3 * PLANNED_T
    during = thr.v[(thr.t > HALVED) & (thr.t < RESTORED)]
    assert during.size and during.max() > 1.5 * PLANNED_T
    assert thr.value_at(RESTORED - 1.0) > PLANNED_T
    assert time_average(series, HALVED + 60.0, RESTORED) > 2.0 * PLANNED_T
    assert time_average(series, RESTORED + 100.0, END) < 1.3 * PLANNED_T
    assert thr.v[thr.t >= RESTORED].min() == PLANNED_T  # decays all the way to the plan
    # More requests stay local while the link is narrow.
    narrow = (adaptive.arrival_s > HALVED + 60) & (adaptive.arrival_s < RESTORED)
    wide = adaptive.arrival_s < HALVED
    assert adaptive.remote[narrow].mean() < 0.7 * adaptive.remote[wide].mean()


def test_egress_stays_under_the_halved_capacity(adaptive: SimResult) -> None:
    start = HALVED + 60.0  # after the controller has reacted
    assert _offered_bps(adaptive, start, RESTORED) < 8e9
    busy = time_average(adaptive.links["a-b"], start, RESTORED) / 8e9
    assert busy < 0.95  # not saturated: transfers do not pile up


def test_without_adaptation_the_halved_link_is_overrun() -> None:
    """The counterfactual that makes the test above meaningful."""
    fixed = simulate(_config(adaptive=False), _stream())
    start = HALVED + 60.0
    assert _offered_bps(fixed, start, RESTORED) > 8e9
    assert time_average(fixed.links["a-b"], start, RESTORED) / 8e9 > 0.99
    assert np.all(fixed.thresholds["a-b"].v == PLANNED_T)
