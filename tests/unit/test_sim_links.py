"""Links: processor sharing, capacity schedules, and the bandwidth bound of Θ_prfaas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import FixedLengths, synthetic_stream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.links import LinkSpec, SharedLink, parse_schedule
from prfaas.planner.sim.metrics import binned_mean
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, RoutingSpec, SimConfig, simulate

GB = 1e9


def _drain(link: SharedLink) -> dict[int, float]:
    done: dict[int, float] = {}
    while (t := link.next_completion()) < math.inf:
        for flow in link.finish(t):
            done[flow] = t
    return done


def test_two_equal_flows_share_the_capacity() -> None:
    link = SharedLink(LinkSpec("l", "a", "b", capacity_gbps=8.0))  # 1 GB/s
    link.add(0.0, 1, GB)
    link.add(0.0, 2, GB)
    assert _drain(link) == {1: pytest.approx(2.0), 2: pytest.approx(2.0)}


def test_late_flow_gets_half_then_all() -> None:
    link = SharedLink(LinkSpec("l", "a", "b", capacity_gbps=8.0))
    link.add(0.0, 1, GB)  # alone for 0.5 s: 0.5 GB sent
    assert link.next_completion() == pytest.approx(1.0)
    link.add(0.5, 2, GB)  # then both at 0.5 GB/s: flow 1 done at 1.5; flow 2 has 0.5 GB left
    done = _drain(link)
    assert done[1] == pytest.approx(1.5)
    assert done[2] == pytest.approx(2.0)
    assert link.delivered_bytes == pytest.approx(2 * GB)


def test_capacity_change_and_outage() -> None:
    link = SharedLink(LinkSpec("l", "a", "b", capacity_gbps=8.0))
    link.add(0.0, 1, GB)
    link.set_capacity(0.5, 0.0)  # down: nothing moves
    assert link.next_completion() == math.inf
    link.set_capacity(1.5, 4.0)  # back at half speed: 0.5 GB left at 0.5 GB/s
    assert _drain(link) == {1: pytest.approx(2.5)}
    t, bps = link.egress_series()
    assert list(t) == [0.0, 0.5, 1.5, 2.5]
    assert list(bps) == [8e9, 0.0, 4e9, 0.0]


def test_parse_schedule() -> None:
    assert parse_schedule("60:20, 0:100,120:100") == ((0.0, 100.0), (60.0, 20.0), (120.0, 100.0))
    with pytest.raises(SimulatorError, match="SECONDS:GBPS"):
        parse_schedule("fast")
    with pytest.raises(SimulatorError, match=">= 0"):
        parse_schedule("0:-5")


def _offload_all(capacity_gbps: float, prefill_s: float, instances: int) -> SimConfig:
    """Every prompt is prefilled remotely (t = 0) and shipped over one link."""
    return SimConfig(
        "all-remote",
        (PrefillPool("prfaas", "dc-a", instances, DistServeForm(prefill_s, 0, 0, 0, 0, 0)),),
        DecodePool("decode", "dc-b", 4, DistServeForm(0, 0, 0, 1e-3, 0, 0), max_batch=64),
        links=(LinkSpec("a-b", "dc-a", "dc-b", capacity_gbps, rtt_s=0.005),),
        routing=RoutingSpec(threshold_tokens=0, adaptive=False),
        kv_bytes_per_token=1e5,  # 10k-token prompts: S_kv = 1 GB
    )


@pytest.mark.parametrize(
    ("capacity_gbps", "prefill_s", "instances"),
    [(8.0, 0.05, 4), (16.0, 0.05, 4), (80.0, 1.0, 2)],
)
def test_throughput_is_theta_prfaas(capacity_gbps: float, prefill_s: float, instances: int) -> None:
    """Θ_prfaas = min(N / T_prefill, B / S_kv) under overload (papers.md §1.5 Eq. 3)."""
    theta = min(instances / prefill_s, capacity_gbps * GB / 8 / GB)
    stream = synthetic_stream(3000, 3 * theta, FixedLengths(10_000), FixedLengths(2), seed=2)
    res = simulate(_offload_all(capacity_gbps, prefill_s, instances), stream)
    # Overloaded from the start, the pipeline runs at its bottleneck until the last request.
    done = res.first_token_s
    rate = len(res) / (done.max() - res.arrival_s[0])
    assert rate == pytest.approx(theta, rel=0.02)
    bandwidth_bound = capacity_gbps * GB / 8 / GB < instances / prefill_s
    start = float(res.prefill_end_s.min()) + 0.005
    egress = res.mean_egress_bps("a-b", start, float(done.max()))
    if bandwidth_bound:
        assert egress == pytest.approx(capacity_gbps * GB, rel=1e-3)  # saturated throughout
    else:
        assert egress < 0.9 * capacity_gbps * GB


def test_binned_egress_follows_a_schedule() -> None:
    spec = LinkSpec("l", "a", "b", 8.0, schedule=((10.0, 4.0),))
    link = SharedLink(spec)
    link.add(0.0, 1, 100 * GB)  # busy throughout
    link.set_capacity(10.0, 4.0)
    link._advance(20.0)
    from prfaas.planner.sim.metrics import StepSeries

    starts, means = binned_mean(StepSeries.of(*link.egress_series()), 20.0, 5.0)
    assert list(starts) == [0.0, 5.0, 10.0, 15.0]
    assert np.allclose(means, [8e9, 8e9, 4e9, 4e9])


def _fallback_config(schedule: str) -> SimConfig:
    prefill = DistServeForm(0.01, 1e-5, 0.0, 0.0, 0.0, 0.0)
    return SimConfig(
        "fallback",
        (PrefillPool("remote", "dc-a", 2, prefill), PrefillPool("local", "dc-b", 2, prefill)),
        DecodePool("decode", "dc-b", 2, DistServeForm(0, 0, 0, 1e-3, 0, 0), max_batch=64),
        links=(
            LinkSpec("a-b", "dc-a", "dc-b", 10.0, rtt_s=0.01, schedule=parse_schedule(schedule)),
        ),
        routing=RoutingSpec(threshold_tokens=1000, adaptive=False),
        kv_bytes_per_token=1e5,  # 0.5 GB per request: 0.4 s on the 10 Gbps link
    )


def test_link_down_falls_back_to_local_and_stalled_transfers_resume() -> None:
    stream = synthetic_stream(600, 2.0, FixedLengths(5000), FixedLengths(4), seed=3)
    res = simulate(_fallback_config("0:10,100:0,200:10"), stream)
    down = (res.arrival_s > 100.0) & (res.arrival_s < 200.0)
    up = res.arrival_s > 201.0
    assert down.sum() > 100 and not res.remote[down].any()
    assert res.remote[up].all()
    # Transfers caught by the outage wait for the link and finish after it returns.
    stalled = res.remote & (res.prefill_end_s < 100.0) & (res.kv_ready_s > 100.0)
    assert stalled.any() and (res.kv_ready_s[stalled] >= 200.0).all()


def test_a_link_that_never_returns_is_an_error() -> None:
    stream = synthetic_stream(50, 2.0, FixedLengths(5000), FixedLengths(4), seed=3)
    with pytest.raises(SimulatorError, match="never finished"):
        simulate(_fallback_config("0:10,10:0"), stream)
