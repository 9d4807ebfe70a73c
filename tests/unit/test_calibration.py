"""Correction factors (``operator.autoscaling.calibration``): smoothed, bounded, moved only with
enough samples, never by missing metrics."""

from __future__ import annotations

import pytest
from prfaas.operator.autoscaling.calibration import (
    Calibration,
    EngineObservation,
    calibration_queries,
    observe_engines,
)
from prfaas.operator.autoscaling.prometheus import Sample
from prfaas.planner.latency.measured import IdleWake
from prfaas.planner.latency.model import DistServeForm

MODEL = DistServeForm(0.0, 1e-4, 0.0, 0.01, 0.0, 0.0)  # prefill 0.1 ms/token, decode 10 ms
POOL = {"prfaas_io_cluster": "pd", "prfaas_io_role": "decode"}


def _predict(cluster: str, role: str) -> DistServeForm | None:
    return MODEL if cluster == "pd" else None


def test_factor_moves_geometrically_toward_the_ratio_within_bounds() -> None:
    cal = Calibration()
    key = ("pd", "decode", "decode")
    slow = {key: EngineObservation(0.02, 500, 1000, 8)}  # twice the predicted 10 ms
    (move,) = cal.update(slow, _predict)
    assert move.before == 1.0 and move.after == pytest.approx(2**0.5)
    for _ in range(20):
        cal.update(slow, _predict)
    assert cal.factors[key] == pytest.approx(2.0, rel=1e-3)
    cal.update({key: EngineObservation(1.0, 500, 1000, 8)}, _predict)  # 100× slower: bounded
    assert cal.factors[key] <= 4.0
    assert cal.corrections() == ((*key, cal.factors[key]),)


def test_too_few_samples_or_no_model_move_nothing() -> None:
    cal = Calibration()
    assert (
        cal.update({("pd", "decode", "decode"): EngineObservation(0.02, 10, 1000, 8)}, _predict)
        == []
    )
    assert (
        cal.update({("pd", "prefill", "prefill"): EngineObservation(0.5, 3, 1000)}, _predict) == []
    )
    assert (
        cal.update({("other", "decode", "decode"): EngineObservation(0.02, 500, 1000, 8)}, _predict)
        == []
    )
    assert cal.factors == {} and cal.corrections() == () and cal.to_status() == []


def test_missing_series_are_no_observation() -> None:
    assert observe_engines({}) == {}
    partial = {"itl_sum": [Sample(POOL, 20.0)], "itl_count": [Sample(POOL, 1000.0)]}
    assert observe_engines(partial) == {}  # no batch or context: nothing to predict at
    nan = {**partial, "itl_sum": [Sample(POOL, float("nan"))]}
    assert observe_engines(nan) == {}


def test_observations_from_vllm_histograms() -> None:
    answers = {
        "itl_sum": [Sample(POOL, 20.0)],
        "itl_count": [Sample(POOL, 1000.0)],
        "running": [Sample(POOL, 8.0)],
        "prompt_sum": [Sample(POOL, 3000.0)],
        "prompt_count": [Sample(POOL, 10.0)],
        "generation_sum": [Sample(POOL, 400.0)],
        "generation_count": [Sample(POOL, 10.0)],
    }
    obs = observe_engines(answers)[("pd", "decode", "decode")]
    assert (obs.seconds, obs.samples, obs.tokens, obs.batch) == (0.02, 1000.0, 320.0, 8.0)
    q = calibration_queries('{prfaas_io_plan="p"}', 60)
    assert q["itl_sum"] == (
        "sum by (prfaas_io_cluster, prfaas_io_role) "
        '(increase(vllm:inter_token_latency_seconds_sum{prfaas_io_plan="p"}[60s]))'
    )


PREFILL_POOL = {"prfaas_io_cluster": "pd", "prfaas_io_role": "prefill"}
WAKE = IdleWake((0.05, 1.0, 2.0), (0.0, 0.02, 0.03), (0.0, 0.01, 0.016), (0.0,) * 3, (0.0,) * 3)


def test_prefill_rate_per_engine_from_the_window_and_the_engine_count() -> None:
    answers = {
        "prefill_s_sum": [Sample(PREFILL_POOL, 12.0)],
        "prefill_s_count": [Sample(PREFILL_POOL, 120.0)],
        "prefill_tokens_sum": [Sample(PREFILL_POOL, 120_000.0)],
        "prefill_tokens_count": [Sample(PREFILL_POOL, 120.0)],
        "engines": [Sample(PREFILL_POOL, 2.0)],
    }
    obs = observe_engines(answers, 60.0)[("pd", "prefill", "prefill")]
    assert (obs.seconds, obs.tokens, obs.rate) == (0.1, 1000.0, 1.0)
    assert observe_engines(answers)[("pd", "prefill", "prefill")].rate == 0.0  # no window
    no_count = {k: v for k, v in answers.items() if k != "engines"}
    assert observe_engines(no_count, 60.0)[("pd", "prefill", "prefill")].rate == 0.0
    assert calibration_queries("{}", 60)["engines"] == (
        "count by (prfaas_io_cluster, prfaas_io_role) (vllm:num_requests_running{})"
    )


def test_an_idle_wake_the_profile_measured_is_not_read_as_a_slower_engine() -> None:
    """At 0.5 req/s per engine the histogram holds the model's 0.1 s plus the idle wake's mean;
    with the profile's wake that is what calibration predicts, and the factor stays 1."""
    key = ("pd", "prefill", "prefill")
    base = MODEL.prefill_seconds([1000])
    observed = base + WAKE.expected_prefill_engine(0.5, base)
    obs = {key: EngineObservation(observed, 50, 1000, rate=0.5)}
    aware = Calibration()
    (move,) = aware.update(obs, _predict, WAKE)
    assert move.predicted_s == pytest.approx(observed) and move.after == pytest.approx(1.0)
    blind = Calibration()
    (move,) = blind.update(obs, _predict)
    assert move.after > 1.05  # without it, the wake looks like a slower engine
    # An unknown rate adds nothing: the model alone.
    (move,) = Calibration().update({key: EngineObservation(observed, 50, 1000)}, _predict, WAKE)
    assert move.predicted_s == pytest.approx(base)
