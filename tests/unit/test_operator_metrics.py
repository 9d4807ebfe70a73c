"""Operator metrics: per-plan gauges, reconcile timing and errors, served over HTTP."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prfaas.operator.metrics import OperatorMetrics
from prfaas.planner.plan import ClusterPlan, Plan


def _value(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_plan_gauges_follow_the_current_plan() -> None:
    m = OperatorMetrics()
    plan = Plan(
        model="x",
        threshold_tokens=19400.0,
        throughput_rps=3.24,
        clusters=[
            ClusterPlan("pd", "dc-b", "decode", "H20", 5, 8),
            ClusterPlan("pd", "dc-b", "prefill", "H20", 3, 8),
        ],
    )
    m.record_plan("ns/p", plan)
    assert (
        _value(m, "prfaas_operator_planned_instances", plan="ns/p", cluster="pd", role="decode")
        == 5
    )
    assert _value(m, "prfaas_operator_threshold_tokens", plan="ns/p") == 19400.0
    assert _value(m, "prfaas_operator_predicted_throughput_rps", plan="ns/p") == 3.24
    plan.clusters.pop()
    plan.threshold_tokens = None
    m.record_plan("ns/p", plan)
    assert (
        _value(m, "prfaas_operator_planned_instances", plan="ns/p", cluster="pd", role="prefill")
        is None
    )
    assert _value(m, "prfaas_operator_threshold_tokens", plan="ns/p") == float("inf")
    m.forget_plan("ns/p")
    assert _value(m, "prfaas_operator_predicted_throughput_rps", plan="ns/p") is None


def test_reconcile_duration_and_errors_by_kind() -> None:
    m = OperatorMetrics()
    with m.time_reconcile("ServingPlan"):
        pass
    with pytest.raises(RuntimeError), m.time_reconcile("DecodeCluster"):
        raise RuntimeError("boom")
    assert _value(m, "prfaas_operator_reconcile_duration_seconds_count", kind="ServingPlan") == 1
    assert (
        _value(
            m, "prfaas_operator_reconcile_errors_total", kind="DecodeCluster", reason="RuntimeError"
        )
        == 1
    )


def test_metrics_are_served_over_http() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = OperatorMetrics()
    m.record_plan("ns/p", Plan(model="x", throughput_rps=1.5))
    m.serve(port, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        m.stop()
    assert b'prfaas_operator_predicted_throughput_rps{plan="ns/p"} 1.5' in text
