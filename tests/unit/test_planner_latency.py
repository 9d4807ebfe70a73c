"""Latency models: DistServe-form fits, roofline, TP/PP modelling, transfer between GPUs."""

from __future__ import annotations

import pytest
from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.latency.model import LatencyModel
from prfaas.planner.latency.profiles import CATALOG_PROFILES, fit_decode, fit_prefill, layer_fits
from prfaas.planner.latency.roofline import roofline_latency

H1T = MODELS["hybrid-1t"]


def test_fit_recovers_exact_coefficients() -> None:
    a, b, c = 0.02, 1e-4, 7e-9
    pts = [(x, a + b * x + c * x * x) for x in (128, 512, 2048, 8192)]
    (fa, fb, fc), rep = fit_prefill(pts)
    assert (fa, fb, fc) == pytest.approx((a, b, c), rel=1e-6)
    assert rep.max_rel_error < 1e-9
    dpts = [
        (bs, ctx, 0.01 + 2e-8 * bs * ctx + 3e-5 * bs)
        for bs, ctx in [(1, 100), (8, 1000), (32, 512), (64, 4096)]
    ]
    assert fit_decode(dpts)[0] == pytest.approx((0.01, 2e-8, 3e-5), rel=1e-6)


def test_bad_points_are_a_profile_error() -> None:
    with pytest.raises(ProfileError):
        fit_prefill([(0, 1.0)])
    with pytest.raises(ProfileError):
        fit_decode([(1, 10, 0.1)])


def test_h200_layer_profile_fits_within_reported_error() -> None:
    fits = layer_fits()
    assert set(fits) == {"llama3-8b-tp1", "llama3-70b-tp8", "qwen3-32b-tp2"}
    for fit in fits.values():
        assert fit.prefill_report.rms_rel_error < 0.08
        assert fit.decode_report.rms_rel_error < 0.06
        assert min(fit.prefill) >= 0 and min(fit.decode) >= 0


def test_source_of_each_phase() -> None:
    h200 = latency_model(H1T, GPUS["H200"], 8, 1)
    assert h200.prefill.source == "published"
    h20 = latency_model(H1T, GPUS["H20"], 8, 1)
    assert h20.prefill.source == "roofline" and "moved to H20" in h20.prefill.note
    llama = latency_model(MODELS["llama-3-8b"], GPUS["H200"], 1, 1)
    assert llama.prefill.source == "fit" and llama.decode.source == "fit"
    assert latency_model(MODELS["deepseek-v3"], GPUS["B200"], 8, 1).source == "roofline"
    model: LatencyModel = llama  # satisfies the protocol
    assert model.prefill_seconds([1024]) > 0


def test_published_table5_is_reproduced() -> None:
    lat = latency_model(H1T, GPUS["H200"], 8, 1)
    for tokens, seconds in CATALOG_PROFILES["hybrid-1t"][0].prefill:
        assert lat.prefill_seconds([tokens]) == pytest.approx(seconds, rel=0.02)


def test_h20_prefill_slowdown_is_in_the_range_table6_implies() -> None:
    # papers.md §1.9: "H20 prefill is implied to be ~2.3-2.7× slower than H200".
    h200 = latency_model(H1T, GPUS["H200"], 8, 1)
    h20 = latency_model(H1T, GPUS["H20"], 8, 1)
    for tokens in (10_000, 27_500):
        ratio = h20.prefill_seconds([tokens]) / h200.prefill_seconds([tokens])
        assert 2.1 < ratio < 3.0


def test_tensor_parallel_speedup_is_sublinear() -> None:
    m, g = MODELS["llama-3-70b"], GPUS["H100"]
    t4 = roofline_latency(m, g, 4, 1).prefill_seconds([8192])
    t8 = roofline_latency(m, g, 8, 1).prefill_seconds([8192])
    assert 1.0 < t4 / t8 < 2.0  # all-reduce and fixed overhead do not shrink with TP


def test_pipeline_stage_is_latency_over_pp() -> None:
    lat = roofline_latency(MODELS["llama-3-70b"], GPUS["H100"], 4, 2)
    full = lat.prefill_seconds([4096])
    assert lat.prefill_stage_seconds([4096]) == pytest.approx(full / 2)
    single = roofline_latency(MODELS["llama-3-70b"], GPUS["H100"], 4, 1).prefill_seconds([4096])
    assert full > single  # the hand-off and a second stage's overhead cost latency


def test_decode_is_memory_bound_and_grows_with_batch_and_context() -> None:
    lat = roofline_latency(MODELS["llama-3-8b"], GPUS["H100"], 1, 1)
    assert lat.decode_step_seconds(64, 64 * 4096) > lat.decode_step_seconds(8, 8 * 4096)
    assert lat.decode_step_seconds(8, 8 * 16384) > lat.decode_step_seconds(8, 8 * 1024)
    weights_only = MODELS["llama-3-8b"].weight_bytes / (GPUS["H100"].hbm_gbps * 1e9)
    assert lat.decode_step_seconds(1, 1) > weights_only
