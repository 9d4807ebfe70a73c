"""Pinned instance counts: the planner keeps them, sizes the rest, and says what was pinned."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prfaas.operator.api import models as api
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.plan import Plan
from prfaas.planner.problem import Problem
from prfaas.planner.solver import plan as make_plan
from pydantic import ValidationError

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"


def _problem(*pins: tuple[str, str, int]) -> Problem:
    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    return replace(problem, pins=pins)


def _rows(plan: Plan) -> dict[tuple[str, str], tuple[int, bool]]:
    return {(c.name, c.role): (c.instances, c.pinned) for c in plan.clusters}


def test_pins_are_kept_and_the_rest_is_optimised_around_them() -> None:
    free = make_plan(_problem())
    assert free.feasible
    assert not any(c.pinned for c in free.clusters)
    pinned = make_plan(_problem(("pd-h20", "decode", 6), ("prfaas-h200", "prefill", 2)))
    assert pinned.feasible, pinned.reason
    rows = _rows(pinned)
    assert rows[("pd-h20", "decode")] == (6, True)
    assert rows[("prfaas-h200", "prefill")] == (2, True)
    # PD-P was left to the planner: what the 64 GPUs hold beside 6 TP8 decode instances at most.
    n_p, was_pinned = rows[("pd-h20", "prefill")]
    assert not was_pinned and 1 <= n_p <= 2
    assert pinned.throughput_rps <= free.throughput_rps * (1 + 1e-9)
    assert any("pinned by spec.pins" in n and "pd-h20/decode=6" in n for n in pinned.notes)
    assert Plan.from_dict(pinned.to_dict()).clusters == pinned.clusters  # in status.plan


def test_sizing_for_a_target_rate_leaves_pins_alone() -> None:
    problem = _problem(("pd-h20", "decode", 5))
    small = replace(problem, workload=replace(problem.workload, requests_per_second=0.5))
    out = make_plan(small)
    assert out.feasible, out.reason
    rows = _rows(out)
    assert rows[("pd-h20", "decode")] == (5, True)
    assert rows[("prfaas-h200", "prefill")][0] < make_plan(problem).instances(
        "prfaas-h200", "prefill"
    )


def test_a_pin_beyond_the_cluster_is_infeasible_with_the_fix() -> None:
    out = make_plan(_problem(("pd-h20", "decode", 9)))
    assert not out.feasible
    assert "spec.pins" in out.reason and "64 GPUs" in out.reason and "lower the pins" in out.reason
    out = make_plan(_problem(("prfaas-h200", "prefill", 5)))
    assert not out.feasible and "prfaas-h200/prefill = 5" in out.reason


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ([{"cluster": "nowhere", "role": "decode", "instances": 1}], "not in clusters"),
        ([{"cluster": "prfaas-h200", "role": "decode", "instances": 1}], "only role prefill"),
        ([{"cluster": "pd-h20", "role": "decode", "instances": 1}] * 2, "pinned twice"),
        ([{"cluster": "pd-h20", "role": "decode", "instances": -1}], "greater than or equal"),
    ],
)
def test_bad_pins_are_refused_naming_the_field(pins: list[dict[str, object]], message: str) -> None:
    doc = next(r for r in read_manifests([SAMPLE]).resources if isinstance(r, api.ServingPlan))
    spec = doc.spec.model_dump(by_alias=True)
    spec["pins"] = pins
    with pytest.raises(ValidationError, match=message) as info:
        api.ServingPlanSpec.model_validate(spec)
    assert "pins" in str(info.value)
