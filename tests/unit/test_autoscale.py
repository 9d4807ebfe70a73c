"""Autoscaling decisions: observations from query results, the dead band, the observed workload
handed to the planner, clamping and scale-down stabilisation."""

from __future__ import annotations

import datetime as _dt
import math

import pytest
from prfaas.operator.api import models as api
from prfaas.operator.api.translate import distribution
from prfaas.operator.autoscaling.decide import (
    QUERY_NAMES,
    Observation,
    Stabilizer,
    clamp,
    observe,
    observed_workload,
    prom_label,
    queries,
    settle,
    stabilise_plan,
)
from prfaas.operator.autoscaling.prometheus import Sample
from prfaas.planner.plan import ClusterPlan, Plan

AT = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)


def _obs(rate: float | None, mean: float | None = None, **links: float) -> Observation:
    return Observation(AT, 60.0, rate, mean, dict(links))


def _workload(**extra: object) -> api.Workload:
    return api.Workload.model_validate(
        {
            "inputLength": {
                "type": "lognormal",
                "mu": 9.9,
                "sigma": 1.0,
                "min": 128,
                "max": 131072,
            },
            "outputLength": {"type": "fixed", "value": 1024},
            **extra,
        }
    )


def test_queries_select_one_plan_and_cover_every_name() -> None:
    qs = queries("hybrid-1t", "default", 120)
    assert set(qs) == set(QUERY_NAMES)
    for q in qs.values():
        assert 'prfaas_io_plan="hybrid-1t",prfaas_io_plan_namespace="default"' in q
        assert "[120s]" in q
    assert qs["kv_bytes"].startswith("sum by (link)")


def test_observation_from_query_results() -> None:
    results = {
        "requests": [Sample({}, 120.0)],
        "uncached_sum": [Sample({}, 2_000_000.0)],
        "uncached_count": [Sample({}, 100.0)],
        "kv_bytes": [Sample({"link": "a-b"}, 125e9), Sample({"link": "c-d"}, 1e9)],
        "kv_seconds": [Sample({"link": "a-b"}, 20.0), Sample({"link": "c-d"}, 1.0)],
    }
    obs = observe(results, 60.0, AT, min_transfer_seconds=5.0)
    assert obs.rate_rps == 2.0
    assert obs.mean_uncached_tokens == 20_000.0
    assert obs.link_gbps == {"a-b": 50.0}  # c-d: 1 s of transfers is too little to tell
    assert obs.to_status() == {
        "rateRps": 2.0,
        "meanInputTokens": 20000.0,
        "windowSeconds": 60.0,
        "at": "2026-01-01T00:00:00Z",
    }


def test_missing_series_give_no_rate_and_no_mean() -> None:
    obs = observe({k: [] for k in QUERY_NAMES}, 60.0, AT)
    assert obs.rate_rps is None and obs.mean_uncached_tokens is None and obs.link_gbps == {}
    idle = observe({"requests": [Sample({}, 0.0)], "uncached_count": [Sample({}, 0.0)]}, 60, AT)
    assert idle.rate_rps == 0.0 and idle.mean_uncached_tokens is None


def test_dead_band_keeps_the_observation_in_force_and_missing_data_never_replaces_it() -> None:
    first = _obs(2.0, 1000.0)
    assert settle(None, first) is first
    assert settle(first, _obs(2.1, 1050.0)).rate_rps == 2.0  # within 10 %
    moved = settle(first, _obs(3.0, 1050.0))
    assert moved.rate_rps == 3.0 and moved.mean_uncached_tokens == 1000.0
    kept = settle(first, _obs(None, None, l=5.0))
    assert kept.rate_rps == 2.0 and kept.link_gbps == {"l": 5.0}


def test_observed_workload_sets_the_rate_and_scales_lengths_keeping_the_shape() -> None:
    w = _workload(prefixCacheHitRate=0.5)
    declared = distribution(w.input_length).uncached(0.5).mean
    new, notes = observed_workload(w, _obs(3.0, 2.0 * declared))
    assert new.requests_per_second == 3.0
    assert isinstance(new.input_length, api.LogNormalDistribution)
    assert new.input_length.sigma == 1.0 and new.input_length.max == 131072
    assert new.input_length.mu == pytest.approx(9.9 + math.log(2.0))
    assert new.output_length == w.output_length and len(notes) == 2

    empirical = api.Workload.model_validate(
        {
            "inputLength": {
                "type": "empirical",
                "buckets": [{"upTo": 10, "weight": 1}, {"upTo": 11, "weight": 1}],
            },
            "outputLength": {"type": "fixed", "value": 8},
        }
    )
    half, _ = observed_workload(
        empirical, _obs(None, 0.5 * distribution(empirical.input_length).mean)
    )
    assert isinstance(half.input_length, api.EmpiricalDistribution)
    assert [b.up_to for b in half.input_length.buckets] == [5, 6]  # still strictly increasing
    assert half.requests_per_second is None  # no rate observed: the declared one stays


def test_an_idle_plan_is_planned_for_a_tiny_positive_rate() -> None:
    new, _ = observed_workload(_workload(), _obs(0.0))
    assert new.requests_per_second is not None and 0 < new.requests_per_second < 0.01


@pytest.mark.parametrize(
    ("planned", "lo", "hi", "want"),
    [(3, 1, 8, 3), (12, 1, 8, 8), (1, 2, 8, 2), (0, 2, 8, 0), (1, 1, 1, 1)],
)
def test_clamp_keeps_used_roles_within_bounds_and_unused_at_zero(
    planned: int, lo: int, hi: int, want: int
) -> None:
    assert clamp(planned, lo, hi) == want


def test_scale_up_is_immediate_and_scale_down_waits_for_the_window() -> None:
    s = Stabilizer(window_s=10.0)
    key = ("ns/p", "c", "decode")
    assert s.decide(key, 2, None, 0.0) == 2
    assert s.decide(key, 5, 2, 1.0) == 5  # up at once
    assert s.decide(key, 3, 5, 2.0) == 5  # lower target, window not passed
    assert s.decide(key, 3, 5, 10.5) == 5  # 5 was recommended at t=1: still within 10 s
    assert s.decide(key, 3, 5, 11.5) == 3  # 3 held for the whole window
    assert s.decide(key, 1, 3, 12.0) == 3
    assert s.decide(key, 4, 3, 13.0) == 4  # a rise cancels the pending scale-down


def test_after_a_restart_the_running_replicas_seed_the_window() -> None:
    s = Stabilizer(window_s=10.0)
    key = ("ns/p", "c", "decode")
    assert s.decide(key, 2, 6, 100.0) == 6
    assert s.decide(key, 2, 6, 109.0) == 6
    assert s.decide(key, 2, 6, 110.5) == 2
    s.forget("ns/p")
    assert s.decide(key, 1, 6, 200.0) == 6


def test_stabilise_plan_clamps_holds_and_notes() -> None:
    plan = Plan(
        model="m",
        clusters=[
            ClusterPlan("p", "dc-a", "prefill", "H200", 1),
            ClusterPlan("d", "dc-b", "decode", "H20", 20),
            ClusterPlan("d", "dc-b", "prefill", "H20", 0),
        ],
    )
    scaling = api.Autoscaling(minReplicas=2, maxReplicas=8)
    s = Stabilizer(window_s=60.0)
    current = {("p", "prefill"): 4, ("d", "decode"): 3}
    out = stabilise_plan(plan, "ns/x", scaling, current, s, 0.0)
    assert out == [("p", "prefill", 1, 4), ("d", "decode", 20, 8), ("d", "prefill", 0, 0)]
    assert [c.instances for c in plan.clusters] == [4, 8, 0]
    assert any("p/prefill at 4 (planned 1) until the scale-down window" in n for n in plan.notes)
    assert any("d/decode at 8 (planned 20) within minReplicas" in n for n in plan.notes)


def test_settings_from_env_read_the_autoscaling_variables() -> None:
    from prfaas.operator.controller.settings import OperatorSettings

    s = OperatorSettings.from_env(
        {
            "PRFAAS_PROMETHEUS_URL": "http://prom:9090",
            "PRFAAS_SCALE_DOWN_WINDOW_SECONDS": "42",
            "PRFAAS_AUTOSCALE_TICK_SECONDS": "2",
        }
    )
    assert s.autoscale.prometheus_url == "http://prom:9090"
    assert s.autoscale.scale_down_window_seconds == 42.0 and s.autoscale.tick_seconds == 2.0
    assert OperatorSettings.from_env({}).autoscale.prometheus_url is None


def test_queries_select_by_the_labels_the_pod_monitor_copies_onto_router_series() -> None:
    from pathlib import Path

    import yaml
    from prfaas.operator.controller.builders import ClusterTarget, PlanInputs, build_children
    from prfaas.operator.controller.reconcile import PlanRequest, default_planner

    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
    docs = {d["kind"]: d for d in yaml.safe_load_all(sample.read_text()) if d}
    sp = api.ServingPlan.model_validate(docs["ServingPlan"])
    pc = api.PrefillCluster.model_validate(docs["PrefillCluster"])
    dc = api.DecodeCluster.model_validate(docs["DecodeCluster"])
    link = api.InterDCLink.model_validate(docs["InterDCLink"])
    plan = default_planner(PlanRequest(sp, (pc,), (dc,), (link,)))
    targets = {
        pc.metadata.name: ClusterTarget(
            pc.metadata.name, "PrefillCluster", pc.spec, pod_monitor=True
        ),
        dc.metadata.name: ClusterTarget(
            dc.metadata.name, "DecodeCluster", dc.spec, pod_monitor=True
        ),
    }
    objs = build_children(PlanInputs("hybrid-1t", "default", sp.spec, plan, targets))
    router = next(
        o
        for o in objs[dc.metadata.name]
        if o["kind"] == "Deployment" and "router" in o["metadata"]["name"]
    )
    monitor = next(o for o in objs[dc.metadata.name] if o["kind"] == "PodMonitor")
    pod_labels = router["spec"]["template"]["metadata"]["labels"]
    copied = {prom_label(k): pod_labels[k] for k in monitor["spec"]["podTargetLabels"]}
    query = queries("hybrid-1t", "default", 60)["requests"]
    for label in ("prfaas_io_plan", "prfaas_io_plan_namespace"):
        assert f'{label}="{copied[label]}"' in query
    # Cluster and role group the dashboards' per-pool panels and the engine-down alert.
    assert copied["prfaas_io_role"] == "router" and "prfaas_io_cluster" in copied
