"""Arrival processes, trace files and the prefix cache's effect on prefill work."""

from __future__ import annotations

import numpy as np
import pytest
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import (
    FixedLengths,
    RequestStream,
    arrival_times,
    synthetic_stream,
)
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, RoutingSpec, SimConfig, simulate


@pytest.mark.parametrize(("kind", "cv"), [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0)])
def test_arrival_rate_and_burstiness(kind: str, cv: float) -> None:
    rng = np.random.default_rng(0)
    t = arrival_times(rng, 200_000, 4.0, kind=kind, cv=cv)
    gaps = np.diff(t)
    assert 1 / gaps.mean() == pytest.approx(4.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.03)


def test_same_seed_same_stream() -> None:
    a = synthetic_stream(100, 2.0, FixedLengths(10), FixedLengths(5), seed=4)
    b = synthetic_stream(100, 2.0, FixedLengths(10), FixedLengths(5), seed=4)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert a.rate == pytest.approx(2.0, rel=0.3)
    assert a.scaled(2.0).arrival_s[-1] == pytest.approx(a.arrival_s[-1] / 2)


def _cached_config(cache_blocks: int, instances: int = 2) -> SimConfig:
    lat = DistServeForm(0.01, 1e-4, 0.0, 0.0, 0.0, 0.0)
    dec = DistServeForm(0.0, 0.0, 0.0, 0.01, 0.0, 0.0)
    return SimConfig(
        "cached",
        (PrefillPool("p", "dc", instances, lat, cache_blocks=cache_blocks),),
        DecodePool("d", "dc", 1, dec, max_batch=64),
        routing=RoutingSpec(threshold_tokens=None),
        block_tokens=16,
    )


def test_prefix_hits_skip_prefill_work_and_stick_to_the_instance() -> None:
    """A conversation whose turns grow: each turn re-uses the previous turn's blocks."""
    n = 40
    stream = RequestStream(
        np.arange(n, dtype=np.float64),  # one turn per second: every prefill is done by then
        np.array([1000 + 160 * i for i in range(n)]),
        np.full(n, 2),
        np.full(n, 42),
    )
    with_cache = simulate(_cached_config(10_000), stream)
    without = simulate(_cached_config(0), stream)
    assert list(without.uncached_tokens) == list(stream.input_tokens)
    # Turn i >= 1 finds the full blocks of turn i-1 (1000 + 160(i-1) tokens, 16-token blocks).
    expected = [1000] + [1000 + 160 * i - 16 * ((1000 + 160 * (i - 1)) // 16) for i in range(1, n)]
    assert list(with_cache.uncached_tokens) == expected
    assert with_cache.ttft.mean() < 0.5 * without.ttft.mean()


def test_a_tiny_cache_evicts() -> None:
    n = 20
    stream = RequestStream(
        np.arange(n, dtype=np.float64),
        np.full(n, 1600),
        np.full(n, 2),
        np.arange(n) % 2,  # two documents alternating; only one fits
    )
    one = simulate(_cached_config(100, instances=1), stream)
    assert (one.uncached_tokens > 1000).all()  # always evicted before it comes back
    two = simulate(_cached_config(100, instances=2), stream)
    # Once each document has settled on its own instance, every turn is a hit.
    assert (two.uncached_tokens[4:] == 1).all()
