"""Length distributions: exact splits (p, l_short, l_long), sampling, prefix-cache scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prfaas.planner.distributions import Empirical, Fixed, LengthDistribution, LogNormal, Trace

CASE_STUDY = LogNormal(9.90, 1.00, 128, 131072)


def test_case_study_offload_fraction_at_published_threshold() -> None:
    # papers.md §1.7: P(L > 19.4K) ≈ 0.496 for log-normal(9.90, 1.00) truncated to [128, 128K].
    s = CASE_STUDY.split(19400)
    assert s.p == pytest.approx(0.496, abs=0.001)
    assert CASE_STUDY.mean == pytest.approx(27.5e3, rel=0.01)  # "mean about 27K"


@pytest.mark.parametrize(
    "dist",
    [
        CASE_STUDY,
        Empirical.from_buckets([100, 1000, 8000], [3, 2, 1]),
        Trace((5, 50, 500, 5000, 7)),
        LogNormal(5.5, 1.0, 16, 1536).uncached(0.3),
    ],
)
@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_split_conserves_mean(dist: LengthDistribution, q: float) -> None:
    t = dist.quantile(q)
    s = dist.split(t)
    assert s.p * s.l_long + (1 - s.p) * s.l_short == pytest.approx(dist.mean, rel=1e-9)
    assert s.l_short <= t + 1e-9
    assert s.p == 0 or s.l_long > t - 1e-9


def test_empirical_matches_uniform_buckets() -> None:
    d = Empirical.from_buckets([100, 1000], [1, 1])
    s = d.split(500)
    # half the mass is uniform on (0, 100], half on (100, 1000]: P(L > 500) = 0.5 · 500/900
    assert s.p == pytest.approx(0.5 * 500 / 900)
    assert s.l_long == pytest.approx(750)


def test_fixed_and_infinite_threshold() -> None:
    d = Fixed(300)
    assert d.split(299).p == 1.0 and d.split(299).l_long == 300
    assert d.split(300).p == 0.0
    assert CASE_STUDY.split(math.inf).p == 0.0
    assert CASE_STUDY.split(math.inf).l_short == pytest.approx(CASE_STUDY.mean)


@pytest.mark.parametrize(
    "dist", [CASE_STUDY, Empirical.from_buckets([10, 90], [1, 3]), Trace((1, 2, 3)), Fixed(7)]
)
def test_samples_follow_the_distribution(dist: LengthDistribution) -> None:
    x = dist.sample(np.random.default_rng(7), 100_000)
    assert x.shape == (100_000,)
    assert x.min() >= dist.low - 1e-9 and x.max() <= dist.high + 1e-9
    assert x.mean() == pytest.approx(dist.mean, rel=0.02)
    t = dist.quantile(0.5)
    assert (x > t).mean() == pytest.approx(dist.split(t).p, abs=0.02)


def test_prefix_cache_scales_uncached_lengths() -> None:
    half = CASE_STUDY.uncached(0.5)
    assert half.mean == pytest.approx(CASE_STUDY.mean / 2)
    assert half.split(9700).p == pytest.approx(CASE_STUDY.split(19400).p)
    with pytest.raises(ValueError, match="hit rate"):
        CASE_STUDY.uncached(1.0)
