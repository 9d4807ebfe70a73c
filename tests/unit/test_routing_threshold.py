"""``ThresholdController``'s derived base: t* from the observed uncached-length window."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.planner.routing.threshold import ThresholdController

KV_TOK, KV_FIX = 1e5, 1e6  # kv(l) = 1e5·l + 1e6 bytes


def _ctl(capacity_bps: float, planned: float = 100.0) -> ThresholdController:
    return ThresholdController(
        planned,
        capacity_bps,
        headroom=1.0,
        kv_bytes_per_token=KV_TOK,
        kv_fixed_bytes=KV_FIX,
        window_s=10.0,
        min_observations=4,
    )


def _fill(c: ThresholdController, lengths: list[int], now: float = 10.0) -> None:
    for i, n in enumerate(lengths):
        c.observe(now - 9.0 + 9.0 * i / len(lengths), n)


def test_known_window_gives_the_expected_t_star() -> None:
    # 10 requests in a 10 s window (λ = 1/s) of lengths 100..1000: 8·kv(l)/10 bit/s each.
    lengths = [100 * k for k in range(1, 11)]
    bits = {n: 8 * (KV_TOK * n + KV_FIX) / 10.0 for n in lengths}
    # Capacity for exactly the two longest (900, 1000): t* = 800.
    c = _ctl(bits[900] + bits[1000])
    _fill(c, lengths)
    assert c.derive(10.0) == 800.0
    assert c.update(10.0, 0.0) == 800.0
    # Everything fits: the planned value.
    big = _ctl(sum(bits.values()))
    _fill(big, lengths)
    assert big.derive(10.0) == 100.0


def test_no_observations_is_the_plain_feedback_loop() -> None:
    c = _ctl(1e9)
    assert c.derive(5.0) == 100.0
    assert c.update(1.0, 2e9) == 150.0 and c.update(1.6, 2e9) == 225.0
    for k in range(20):
        c.update(3.0 + k, 0.0)
    assert c.threshold == 100.0


def test_capacity_restored_returns_exactly_to_planned() -> None:
    lengths = [100 * k for k in range(1, 11)]
    c = _ctl(1e12)
    _fill(c, lengths)
    assert c.update(10.0, 0.0) == 100.0
    c.set_capacity(8 * (KV_TOK * 1000 + KV_FIX) / 10.0)  # room for the longest only
    assert c.threshold == 900.0
    c.set_capacity(1e12)
    assert c.threshold == 100.0
    for k in range(30):
        c.update(11.0 + k, 0.0)
    assert c.threshold == 100.0


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=5000), min_size=4, max_size=60),
    caps=st.lists(st.floats(min_value=1e6, max_value=1e12), min_size=2, max_size=2),
    planned=st.integers(min_value=0, max_value=3000),
)
@settings(max_examples=200, deadline=None)
def test_less_capacity_never_lowers_t_star_and_t_star_never_below_planned(
    lengths: list[int], caps: list[float], planned: int
) -> None:
    lo, hi = sorted(caps)
    a, b = _ctl(lo, planned), _ctl(hi, planned)
    _fill(a, lengths)
    _fill(b, lengths)
    ta, tb = a.derive(10.0), b.derive(10.0)
    assert ta >= tb >= planned
    # t* is the smallest length-valued t that fits: predicted egress fits, one less does not.
    window = 10.0

    def egress(t: float) -> float:
        return 8 * sum(KV_TOK * n + KV_FIX for n in lengths if n > t) / window

    assert egress(ta) <= lo or math.isclose(egress(ta), lo)
    if ta > planned:
        assert (
            egress(max(n for n in lengths if n < ta) if any(n < ta for n in lengths) else -1) > lo
        )


def test_window_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="window_requests"):
        ThresholdController(100.0, 1e9, window_requests=0)


def test_model_mismatch_raises_t_on_top_of_the_base_then_it_decays_back() -> None:
    lengths = [100 * k for k in range(1, 11)]
    c = _ctl(8 * (KV_TOK * 1000 + KV_FIX) / 10.0)  # room for the longest only
    for k in range(40):  # a steady stream: 1 request/s, the longest always sent
        now = float(k)
        c.observe(now, lengths[k % 10])
        if lengths[k % 10] == 1000:
            c.sent(now, 3 * (KV_TOK * 1000 + KV_FIX), uncached_tokens=1000)  # 3× the model
        c.update(now, 0.0)
    assert c.base == 900.0
    assert c.threshold > 900.0  # sent > budget and > what the model says: feedback on top
    raised = c.threshold
    for k in range(40, 200):
        now = float(k)
        c.observe(now, lengths[k % 10])
        c.update(now, 0.0)  # nothing sent any more: no mismatch, measured egress 0
    assert c.threshold == c.base < raised


def test_sampling_noise_alone_does_not_raise_the_feedback() -> None:
    lengths = [100 * k for k in range(1, 11)]
    c = _ctl(8 * (KV_TOK * 1000 + KV_FIX) / 10.0)
    for k in range(100):
        now = float(k)
        c.observe(now, lengths[k % 10])
        if k % 10 == 9:  # the model's bytes exactly, in bursts above the budget
            c.sent(now, 2 * (KV_TOK * 1000 + KV_FIX), uncached_tokens=2000)
        c.update(now, 1e15)  # the caller's (in-flight) estimate says "far over"
    assert c.threshold == c.base == 900.0


def test_router_decisions_feed_the_controller() -> None:
    from prfaas.engine.router.config import RouterConfig
    from prfaas.engine.router.policy import RoutingPolicy

    cfg = RouterConfig.model_validate(
        {
            "model": "m",
            "local_datacenter": "local",
            "datacenters": {
                "local": {"prefill": ["http://lp0"], "decode": ["http://d0"]},
                "far": {"prefill": ["http://rp0"]},
            },
            "links": {"far": {"name": "far-to-local", "capacity_gbps": 1e-6, "headroom": 1.0}},
            "threshold_tokens": 100,
            "kv_bytes_per_token": 10.0,
            "kv_fixed_bytes": 7.0,
            "block_size": 10,
        }
    )
    p = RoutingPolicy(cfg)
    ctl = p.links["far"].controller
    assert (ctl.kv_bytes_per_token, ctl.kv_fixed_bytes) == (10.0, 7.0)
    routes = [p.decide(list(range(k, k + 150 + 10 * (k % 5))), 0.05 * k).route for k in range(60)]
    assert routes[0] == "remote"  # too few observations: the planned t
    assert ctl.base > 100.0  # 1 kbit/s cannot carry these: t* above the plan
    assert routes[-1] == "local"
