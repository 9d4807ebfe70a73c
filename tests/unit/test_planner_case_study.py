"""`prfaas plan crds/samples/case-study.yaml` reproduces PrfaaS Table 6 within 5% (papers.md §1.8).

Nothing here feeds the expected numbers in: they come out of the catalog (architecture, Table 5
profile), the sample (workload, link, the decode point derived from Table 6's per-instance
Θ_pd-d) and the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.plan import Plan
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
WITHIN = 0.05


@pytest.fixture(scope="module")
def case_study() -> Plan:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    return plan(problem)


def test_prfaas_pd_matches_table6(case_study: Plan) -> None:
    p = case_study
    assert p.feasible, p.reason
    assert p.throughput_rps == pytest.approx(3.24, rel=WITHIN)
    assert p.threshold_tokens == pytest.approx(19.4e3, rel=WITHIN)
    assert p.offload_fraction == pytest.approx(0.496, rel=WITHIN)
    assert p.stages["prfaas"] == pytest.approx(1.61, rel=WITHIN)
    assert p.stages["pdPrefill"] == pytest.approx(1.64, rel=WITHIN)
    assert p.stages["pdDecode"] == pytest.approx(3.91, rel=WITHIN)
    assert p.instances("prfaas-h200", "prefill") == 4
    assert p.instances("pd-h20", "prefill") == 3
    assert p.instances("pd-h20", "decode") == 5
    assert all(c.gpus_per_instance == 8 for c in p.clusters)


def test_egress_is_about_13_gbps(case_study: Plan) -> None:
    (link,) = case_study.links
    assert link.egress_gbps == pytest.approx(13.0, rel=WITHIN)
    assert link.egress_gbps <= link.headroom * link.capacity_gbps


def test_baselines_match_table6(case_study: Plan) -> None:
    base = {b.name: b for b in case_study.baselines}
    assert base["homogeneous-pd"].throughput_rps == pytest.approx(2.11, rel=WITHIN)
    assert base["homogeneous-pd"].gpus == 96
    assert base["naive-heterogeneous"].throughput_rps == pytest.approx(2.45, rel=WITHIN)
    assert base["homogeneous-pd"].ratio == pytest.approx(1.54, rel=2 * WITHIN)
    assert base["homogeneous-pd-equal-cost"].ratio > 1.0  # the paper: +15% at equal cost


def test_every_number_says_where_it_came_from(case_study: Plan) -> None:
    sources = {(c.name, c.role): c.latency_source for c in case_study.clusters}
    assert sources[("prfaas-h200", "prefill")] == "published"
    assert sources[("pd-h20", "prefill")] == "roofline"
    assert sources[("pd-h20", "decode")] == "published"
    text = "\n".join(case_study.notes)
    assert "Table 5" in text and "Table 6" in text and "computed from the hybrid-1t" in text


def test_json_form_round_trips(case_study: Plan) -> None:
    data = case_study.to_dict()
    assert data["version"] == 1 and data["routers"][0]["remotes"][0]["link"] == "dc-a-to-dc-b"
    assert Plan.from_dict(data).to_dict() == data


def test_a_target_rate_sizes_the_plan_down() -> None:
    import dataclasses

    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    workload = dataclasses.replace(problem.workload, requests_per_second=2.0)
    sized = plan(dataclasses.replace(problem, workload=workload))
    assert sized.feasible
    assert 2.0 <= sized.throughput_rps < 3.24
    assert sum(c.gpus for c in sized.clusters) < 96
    assert sized.threshold_tokens == pytest.approx(19.4e3, rel=WITHIN)
    assert any("sized for the target" in n for n in sized.notes)
