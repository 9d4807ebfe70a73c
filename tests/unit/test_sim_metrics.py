"""Step-function helpers and per-request summaries of a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.metrics import LatencyStats, StepSeries, binned_mean, time_average
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, SimConfig


def test_time_average_and_bins_of_a_step_function() -> None:
    s = StepSeries.of([0.0, 2.0, 3.0], [1.0, 5.0, 0.0])
    assert time_average(s, 0.0, 4.0) == pytest.approx((2 * 1 + 1 * 5 + 1 * 0) / 4)
    assert time_average(s, 1.0, 2.5) == pytest.approx((1 * 1 + 0.5 * 5) / 1.5)
    starts, means = binned_mean(s, 4.0, 1.0)
    assert list(starts) == [0.0, 1.0, 2.0, 3.0]
    assert np.allclose(means, [1.0, 1.0, 5.0, 0.0])
    assert s.value_at(2.5) == 5.0 and math.isnan(s.value_at(-1.0))


def test_latency_stats() -> None:
    stats = LatencyStats.of(np.arange(1, 101, dtype=np.float64))
    assert stats.mean == 50.5 and stats.p50 == pytest.approx(50.5) and stats.p90 > 90
    assert math.isnan(LatencyStats.of(np.zeros(0)).mean)


def test_pool_names_must_be_unique() -> None:
    from prfaas.planner.sim.arrivals import FixedLengths, synthetic_stream
    from prfaas.planner.sim.simulator import simulate

    lat = DistServeForm(0.1, 0, 0, 0.01, 0, 0)
    cfg = SimConfig("dup", (PrefillPool("x", "dc", 1, lat),), DecodePool("x", "dc", 1, lat))
    with pytest.raises(SimulatorError, match="unique"):
        simulate(cfg, synthetic_stream(3, 1.0, FixedLengths(10), FixedLengths(2)))
