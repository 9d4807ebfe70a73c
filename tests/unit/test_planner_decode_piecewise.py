"""Decode fits switch planes at large batches when the points span two regimes."""

from __future__ import annotations

import pytest
from prfaas.planner.latency.profiles import FittedDecode, fit_decode, fit_decode_piecewise

SMALL = (0.012, 2.0e-8, 3.0e-4)
LARGE = (0.008, 2.0e-8, 4.5e-4)  # DistServe-like: a second plane above batch 95


def _step(batch: int, ctx: int) -> float:
    a, b, c = SMALL if batch <= 95 else LARGE
    return a + b * batch * ctx + c * batch


def _points(batches: list[int]) -> list[tuple[float, float, float]]:
    return [(b, ctx, _step(b, ctx)) for b in batches for ctx in (128, 512, 2048)]


def test_points_spanning_both_regimes_get_one_plane_each_with_its_error() -> None:
    pts = _points([1, 8, 32, 64, 96, 128, 192, 256])
    single, rep = fit_decode(pts)
    fit = fit_decode_piecewise(pts)
    assert fit.high is not None and fit.high_report is not None
    assert fit.split_batch == 64  # the largest profiled batch of the small regime
    assert fit.low == pytest.approx(SMALL, rel=1e-6)
    assert fit.high == pytest.approx(LARGE, rel=1e-6)
    assert fit.low_report.max_rel_error < 1e-6 and fit.high_report.max_rel_error < 1e-6
    assert rep.max_rel_error > 0.03  # one plane misfits somewhere
    assert "piecewise at batch 64" in fit.describe() and "above" in fit.describe()
    model = FittedDecode.of(fit, "published", fit.describe())
    assert model(256, 256 * 128) == pytest.approx(_step(256, 128), rel=1e-9)
    assert model(32, 32 * 128) == pytest.approx(_step(32, 128), rel=1e-9)
    plane = FittedDecode(*single, "published", "one plane")
    assert abs(plane(256, 256 * 128) / _step(256, 128) - 1) > 0.02


def test_points_of_one_regime_keep_one_plane() -> None:
    fit = fit_decode_piecewise(_points([1, 8, 16, 32, 64]))
    assert fit.high is None and fit.split_batch == float("inf")
    assert fit.low == pytest.approx(SMALL, rel=1e-6)
