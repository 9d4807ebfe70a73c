"""The data plane's per-request cost per path (a measured profile's ``dataPlane``): parsed with
errors that name the field, carried into the problem and the plan, and added by the simulator
to each request's TTFT on its own path without changing TPOT or what the engines do."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import yaml
from prfaas.operator.api.translate import TranslateError
from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.measured import DataPlane, measured_data_plane
from prfaas.planner.plan import Plan
from prfaas.planner.sim.arrivals import RequestStream, synthetic_stream
from prfaas.planner.sim.scenarios import PRFAAS, predict
from prfaas.planner.sim.simulator import SimConfig, simulate
from prfaas.planner.solver import plan

from .conftest import SAMPLE, sample_problem, sample_with


def test_parsed_in_seconds_with_its_provenance() -> None:
    dp = measured_data_plane(
        {"device": "x86", "dataPlane": {"localMs": 12.5, "remoteMs": 80, "cores": 2}}
    )
    assert dp == DataPlane(0.0125, 0.08, 2, "measured on x86")
    assert dp.seconds(remote=True) == 0.08 and dp.seconds(remote=False) == 0.0125
    assert measured_data_plane({"prefill": []}) is None


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"remoteMs": 1}, "localMs"),
        ({"localMs": -1, "remoteMs": 1}, "localMs"),
        ({"localMs": 1, "remoteMs": "fast"}, "remoteMs"),
        ({"localMs": 1, "remoteMs": True}, "remoteMs"),
        ({"localMs": 1, "remoteMs": 1, "cores": 1.5}, "cores"),
        ([1, 2], "dataPlane"),
    ],
)
def test_a_malformed_data_plane_names_the_field(value: Any, field: str) -> None:
    with pytest.raises(ProfileError, match=field):
        measured_data_plane({"dataPlane": value})


def test_a_bad_data_plane_in_a_plan_is_a_translate_error() -> None:
    with pytest.raises(
        TranslateError, match=r"measuredProfile\.inline\.dataPlane: missing field 'remoteMs'"
    ):
        sample_problem(sample_with(dataPlane={"localMs": 1}))


def test_the_plan_carries_it_and_round_trips() -> None:
    problem = sample_problem(sample_with(dataPlane={"localMs": 20, "remoteMs": 150, "cores": 2}))
    assert problem.data_plane is not None and problem.data_plane.remote_s == pytest.approx(0.15)
    p = plan(problem)
    assert p.data_plane_s == pytest.approx({"local": 0.02, "remote": 0.15})
    assert any("data plane per request" in n and "150.0 ms" in n for n in p.notes)
    back = Plan.from_dict(p.to_dict())
    assert back.data_plane_s == p.data_plane_s
    assert p.to_dict()["dataPlaneS"] == pytest.approx({"local": 0.02, "remote": 0.15})
    none = plan(sample_problem(sample_with(dataPlane=None)))
    assert none.data_plane_s == {} and Plan.from_dict(none.to_dict()).data_plane_s == {}


def _config_and_stream() -> tuple[SimConfig, RequestStream]:
    from prfaas.planner.sim.scenarios import scenarios

    problem = sample_problem(sample_with(dataPlane=None))
    p = plan(problem)
    (sc,) = [s for s in scenarios(problem, p) if s.name == PRFAAS]
    w = problem.workload
    stream = synthetic_stream(400, 0.5, w.input_length, w.output_length, seed=3)
    return sc.config, stream


def test_the_simulator_adds_each_paths_cost_to_ttft_only() -> None:
    config, stream = _config_and_stream()
    base = simulate(config, stream)
    shifted = simulate(replace(config, data_plane_s=(0.02, 0.15)), stream)
    remote = base.remote
    assert remote.any() and (~remote).any()  # both paths are exercised
    gap = shifted.ttft - base.ttft
    np.testing.assert_allclose(gap[remote], 0.15)
    np.testing.assert_allclose(gap[~remote], 0.02)
    np.testing.assert_allclose(shifted.tpot, base.tpot)
    # The engines do the same work at the same times: it is the client's view that moves.
    np.testing.assert_array_equal(shifted.prefill_end_s, base.prefill_end_s)
    np.testing.assert_array_equal(shifted.decode_start_s, base.decode_start_s)


def test_predict_uses_the_profiles_data_plane() -> None:
    with_dp = sample_problem(sample_with(dataPlane={"localMs": 20, "remoteMs": 150}))
    without = replace(with_dp, data_plane=None)

    def p50_ttft(problem: Any) -> tuple[float, np.ndarray]:
        runs = predict(problem, plan(problem), requests=300, rate=0.5)
        run = next(r for r in runs if r.scenario.name == PRFAAS)
        return float(np.median(run.result.ttft)), run.result.remote

    a, remote = p50_ttft(with_dp)
    b, _ = p50_ttft(without)
    assert 0.02 - 1e-9 <= a - b <= 0.15 + 1e-9
    assert remote.any()


def test_the_local_sample_carries_its_measured_data_plane() -> None:
    """``crds/samples/local.yaml``'s profile (bench/fidelity.py) has both paths' cost, and
    ``prfaas plan`` reports them: the remote path, with its second leg and NIXL, costs more."""
    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    p = plan(sample_problem(docs))
    assert set(p.data_plane_s) == {"local", "remote"}
    assert 0 < p.data_plane_s["local"] < p.data_plane_s["remote"]
