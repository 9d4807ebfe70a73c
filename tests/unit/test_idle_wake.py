"""What an idle engine adds to its next request (a measured profile's ``idleWake``): parsed
with errors that name the field, carried into the problem and its notes, and applied by the
simulator only where an instance was idle: its engine part as occupancy that requests queued
behind it wait for too, its outside part as client latency only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from prfaas.operator.api.translate import TranslateError
from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.measured import IdleWake, measured_idle_wake
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import FixedLengths, RequestStream, synthetic_stream
from prfaas.planner.sim.scenarios import PRFAAS, scenarios
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, SimConfig, simulate
from prfaas.planner.solver import plan

from .conftest import SAMPLE, sample_problem, sample_with

WAKE = {
    "referenceS": 0.05,
    "points": [
        {
            "idleS": 0.05,
            "prefill": {"engineMs": 0, "outsideMs": 0},
            "decode": {"engineMs": 0, "outsideMs": 0},
        },
        {
            "idleS": 1.0,
            "prefill": {"engineMs": 20, "outsideMs": 10},
            "decode": {"engineMs": 12, "outsideMs": 4},
        },
        {
            "idleS": 2.0,
            "prefill": {"engineMs": 30, "outsideMs": 16},
            "decode": {"engineMs": 14, "outsideMs": 6},
        },
    ],
}


def _wake() -> IdleWake:
    wake = measured_idle_wake({"device": "x86", "idleWake": WAKE})
    assert wake is not None
    return wake


def test_parsed_piecewise_linear_from_zero_and_flat_beyond_the_last_point() -> None:
    wake = _wake()
    assert wake.idle_s == (0.05, 1.0, 2.0) and wake.origin == "measured on x86"
    assert wake.prefill(0.0) == (0.0, 0.0)
    assert wake.prefill(0.05) == (0.0, 0.0)
    assert wake.prefill(0.525) == pytest.approx((0.010, 0.005))
    assert wake.prefill(1.5) == pytest.approx((0.025, 0.013))
    assert wake.prefill(60.0) == pytest.approx((0.030, 0.016))  # never extrapolated
    assert wake.decode(2.0) == pytest.approx((0.014, 0.006))
    assert measured_idle_wake({"prefill": []}) is None


def _point(**change: Any) -> dict[str, Any]:
    point = {
        "idleS": 1.0,
        "prefill": {"engineMs": 1, "outsideMs": 1},
        "decode": {"engineMs": 1, "outsideMs": 1},
    }
    point.update(change)
    return point


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ([1, 2], r"idleWake: an object"),
        ({"referenceS": -1, "points": [_point()]}, r"idleWake\.referenceS"),
        ({"points": []}, r"idleWake\.points"),
        ({"points": [_point(idleS="long")]}, r"points\[0\]\.idleS"),
        ({"points": [_point(idleS=2.0), _point(idleS=1.0)]}, r"points\[1\]\.idleS: 1.0 must"),
        ({"points": [_point(decode=None)]}, r"points\[0\]\.decode"),
        ({"points": [_point(prefill={"engineMs": 1})]}, r"prefill: missing field 'outsideMs'"),
        ({"points": [_point(prefill={"engineMs": -1, "outsideMs": 0})]}, r"prefill\.engineMs"),
    ],
)
def test_a_malformed_idle_wake_names_the_field(value: Any, field: str) -> None:
    with pytest.raises(ProfileError, match=field):
        measured_idle_wake({"idleWake": value})


def test_the_problem_carries_it_and_the_plan_says_so() -> None:
    problem = sample_problem(sample_with(idleWake=WAKE))
    assert problem.idle_wake == replace(_wake(), origin=problem.idle_wake.origin)
    assert any("idle wake" in n and "30.0 ms longer" in n for n in plan(problem).notes)
    assert sample_problem(sample_with(idleWake=None)).idle_wake is None


def test_a_bad_idle_wake_in_a_plan_is_a_translate_error() -> None:
    with pytest.raises(TranslateError, match=r"measuredProfile\.inline\.idleWake\.points"):
        sample_problem(sample_with(idleWake={"points": "soon"}))


# -- the simulator ----------------------------------------------------------------------------


def _one_prefiller(wake: IdleWake | None) -> SimConfig:
    """One prefill instance, 0.1 s per prompt, no decode: each request ends at its prefill."""
    lat = DistServeForm(0.1, 0.0, 0.0, 0.01, 0.0, 0.0)
    pool = PrefillPool("p", "dc", 1, lat, token_budget=0)
    return SimConfig("one", (pool,), None, idle_wake=wake)


def _stream(arrivals: list[float]) -> RequestStream:
    n = len(arrivals)
    ones = np.ones(n, dtype=np.int64)
    return RequestStream(np.array(arrivals), ones * 64, ones, np.arange(n, dtype=np.int64))


def test_an_idle_prefill_instance_pays_once_and_the_queue_behind_it_waits() -> None:
    wake = _wake()
    # r0 at 0 (idle 0 s: nothing), r1 after 1.4 s idle, r2 queued behind r1, r3 back to back.
    stream = _stream([0.0, 1.5, 1.55, 1.7])
    base = simulate(_one_prefiller(None), stream)
    got = simulate(_one_prefiller(wake), stream)
    engine, outside = wake.prefill(1.5 - 0.1)
    np.testing.assert_allclose(base.prefill_end_s, [0.1, 1.6, 1.7, 1.8])
    # r1's step is longer by the engine part (occupancy) ...
    np.testing.assert_allclose(got.prefill_end_s[1], 1.6 + engine)
    # ... so r2, which found the instance busy, waits for it but pays no wake of its own
    np.testing.assert_allclose(got.prefill_end_s[2], 1.7 + engine)
    # the outside part is r1's latency alone: the engines never see it
    np.testing.assert_allclose(got.ttft[1] - base.ttft[1], engine + outside)
    np.testing.assert_allclose(got.ttft[2] - base.ttft[2], engine)
    np.testing.assert_allclose(got.ttft[0], base.ttft[0])


def test_a_busy_instance_never_pays_it() -> None:
    """At a load that keeps the instance busy, the wake changes nothing: it is not a constant."""
    stream = synthetic_stream(2000, 9.5, FixedLengths(64), FixedLengths(1), seed=1)
    base = simulate(_one_prefiller(None), stream)
    got = simulate(_one_prefiller(_wake()), stream)
    woke = got.ttft - base.ttft
    assert np.median(woke) == 0.0
    low = synthetic_stream(200, 0.5, FixedLengths(64), FixedLengths(1), seed=1)
    assert (
        np.median(
            simulate(_one_prefiller(_wake()), low).ttft - simulate(_one_prefiller(None), low).ttft
        )
        > 0.02
    )


def test_an_idle_decode_instance_pays_the_decode_wake_on_a_remote_path() -> None:
    """Prefill in one datacenter, decode in another: a request that meets both idle pays the
    prefill wake there and the decode wake here; TPOT is unchanged."""
    lat = DistServeForm(0.1, 0.0, 0.0, 0.01, 0.0, 0.0)
    config = SimConfig(
        "pd",
        (PrefillPool("p", "dc-b", 1, lat, token_budget=0),),
        DecodePool("d", "dc-b", 1, lat, max_batch=8),
        idle_wake=_wake(),
    )
    stream = _stream([0.0, 3.0])
    stream = replace(stream, output_tokens=np.array([5, 5], dtype=np.int64))
    base = simulate(replace(config, idle_wake=None), stream)
    got = simulate(config, stream)
    pe, po = _wake().prefill(3.0 - 0.1)
    de, do = _wake().decode(3.0 - base.finish_s[0])
    np.testing.assert_allclose(got.ttft[1] - base.ttft[1], pe + po + de + do)
    np.testing.assert_allclose(got.tpot, base.tpot)


def test_the_sample_at_low_load_predicts_more_with_it() -> None:
    problem = sample_problem(sample_with(idleWake=WAKE))
    (sc,) = [s for s in scenarios(problem, plan(problem)) if s.name == PRFAAS]
    w = problem.workload
    stream = synthetic_stream(300, 0.5, w.input_length, w.output_length, seed=3)
    with_wake = simulate(sc.config, stream)
    without = simulate(replace(sc.config, idle_wake=None), stream)
    gap = with_wake.ttft - without.ttft
    # A woken step can shift which step a later request lands in: within a step either way.
    assert gap.min() > -0.005 and np.median(gap) > 0.01
    assert with_wake.remote.any() and (~with_wake.remote).any()
    np.testing.assert_allclose(with_wake.tpot, without.tpot, atol=1e-3)


def test_the_fidelity_bench_writes_points_the_planner_reads(
    bench_script: Callable[[str], ModuleType],
) -> None:
    """``bench/fidelity.py`` turns per-gap medians into ``idleWake``: the prefill wake from the
    local path, the decode wake from the remote path beyond its prefill engine and the local
    path's outside part, so that both parts together give the remote path's measured wake."""
    fidelity = bench_script("fidelity")

    def medians(lc: float, le: float, rc: float, rp: float, rd: float) -> dict[str, float]:
        return {
            "local_client": lc,
            "local_decode_engine": le,
            "local_prefill_engine": 0.0,
            "remote_client": rc,
            "remote_prefill_engine": rp,
            "remote_decode_engine": rd,
        }

    med = {
        0.05: medians(0.017, 0.013, 0.044, 0.015, 0.019),
        1.0: medians(0.044, 0.029, 0.102, 0.031, 0.031),
    }
    profile = {"idleWake": fidelity.wake_points(med)}
    wake = measured_idle_wake(profile)
    assert wake is not None and wake.idle_s == (0.05, 1.0)
    pe, po = wake.prefill(1.0)
    de, do = wake.decode(1.0)
    assert (pe, po) == pytest.approx((0.016, 0.011))
    assert de == pytest.approx(0.012)
    # The remote path woke by 58 ms: its prefill engine's 16, the decode engine's 12, and
    # 30 ms outside the engines, 11 of them the local path's outside part.
    assert pe + po + de + do == pytest.approx(0.102 - 0.044)
    assert profile["idleWake"]["remoteCheck"][0]["clientMs"] == pytest.approx(58.0)


def test_the_local_sample_carries_its_measured_idle_wake() -> None:
    """``crds/samples/local.yaml``'s profile (bench/fidelity.py) has the idle wake measured on
    this project's CPU hosts: it grows with the idle time, and ``prfaas plan`` notes it."""
    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    problem = sample_problem(docs)
    wake = problem.idle_wake
    assert wake is not None and wake.idle_s[0] < 0.25 < wake.idle_s[-1]
    assert 0 < wake.prefill(0.25)[0] < wake.prefill(wake.idle_s[-1])[0]
    assert any(n.startswith("idle wake") for n in plan(problem).notes)


def test_the_mean_wake_calibration_expects_is_the_simulators() -> None:
    """``IdleWake.expected_prefill_engine`` (what calibration adds to its prediction) against
    the simulator: one engine, Poisson arrivals, the mean lengthening of its steps."""
    wake = _wake()
    rate, service = 0.7, 0.1
    stream = synthetic_stream(20_000, rate, FixedLengths(64), FixedLengths(1), seed=5)
    got = simulate(_one_prefiller(wake), stream)
    longer = np.mean(got.prefill_end_s - got.prefill_start_s) - service
    assert longer == pytest.approx(wake.expected_prefill_engine(rate, service), rel=0.05)
    assert wake.expected_prefill_engine(0.0, service) == 0.0
