"""The simulator as the parallelism search's goodput (DistServe Algorithm 1 with simu_*)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.latency.catalog import gpu_spec, model_arch
from prfaas.planner.parallelism import (
    candidates,
    decode_goodput,
    prefill_goodput,
    search,
)
from prfaas.planner.problem import PlannerSettings, RoleLoad
from prfaas.planner.sim.scenarios import simulated_goodput
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
MODEL = model_arch("llama-3-70b")
CANDS = candidates(MODEL, gpu_spec("H100"), 8, 8, MODEL.kv_bytes(4096), PlannerSettings())


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_simulated_goodput_tracks_the_closed_forms(role: str) -> None:
    length = 2048.0 if role == "prefill" else 2048.0 + 128
    load = RoleLoad(role, length, MODEL.kv_bytes(2200), 256, 1.0, 0.05, 256)
    sim = simulated_goodput(requests=600)
    closed = prefill_goodput if role == "prefill" else decode_goodput
    compared = 0
    for c in CANDS:
        a, b = closed(c, load), sim(c, load)
        if a > 0.5:  # comparable where the SLO leaves room for queueing
            assert 0.6 * a <= b <= 1.25 * a, (c.tp, c.pp, a, b)
            compared += 1
    assert compared >= 4
    best_sim = search(CANDS, load, sim)
    best_closed = search(CANDS, load)
    assert best_sim is not None and best_closed is not None
    # Per-GPU goodput of the simulated choice is near the closed form's best.
    assert (
        closed(best_sim, load) / best_sim.gpus >= 0.8 * closed(best_closed, load) / best_closed.gpus
    )


def test_plan_with_simulated_goodput_is_the_case_study_plan() -> None:
    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    settings = replace(problem.settings, goodput=simulated_goodput(requests=300))
    simulated = plan(replace(problem, settings=settings))
    closed = plan(problem)
    assert simulated.feasible
    shape = [(c.name, c.role, c.instances, c.tensor_parallel) for c in simulated.clusters]
    assert shape == [(c.name, c.role, c.instances, c.tensor_parallel) for c in closed.clusters]
    assert simulated.throughput_rps == pytest.approx(closed.throughput_rps, rel=0.05)
