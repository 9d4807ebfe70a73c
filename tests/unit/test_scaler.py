"""The autoscaler's state between polls: when it polls, what the planner is handed, how errors
and decisions are reported (Prometheus replaced by an in-memory client)."""

from __future__ import annotations

import datetime as _dt
from typing import Any, ClassVar

from prfaas.operator.api import models as api
from prfaas.operator.autoscaling.loop import Autoscaler
from prfaas.operator.autoscaling.prometheus import PrometheusError, Sample
from prfaas.operator.autoscaling.settings import AutoscaleSettings
from prfaas.operator.controller.settings import OperatorSettings
from prfaas.planner.plan import ClusterPlan, Plan

NOW = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)


class FakeClient:
    """Stands in for ``PrometheusClient(url, timeout)``: answers from ``values`` or raises."""

    values: ClassVar[dict[str, float]] = {}
    fail: ClassVar[str | None] = None

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def query(self, expr: str) -> list[Sample]:
        if self.fail:
            raise PrometheusError(self.fail)
        for needle, value in self.values.items():
            if needle in expr:
                return [Sample({}, value)]
        return []


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _spec(**autoscaling: Any) -> api.ServingPlanSpec:
    return api.ServingPlanSpec.model_validate(
        {
            "model": {"servedName": "m", "catalog": "llama-3-8b"},
            "workload": {
                "observe": True,
                "inputLength": {"type": "fixed", "value": 1000},
                "outputLength": {"type": "fixed", "value": 100},
            },
            "clusters": {"decode": ["d"]},
            "autoscaling": {"enabled": True, "prometheusUrl": "http://p", **autoscaling},
        }
    )


def _sp(spec: api.ServingPlanSpec) -> api.ServingPlan:
    return api.ServingPlan.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": "ServingPlan",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": spec.model_dump(by_alias=True, exclude_none=True),
        }
    )


def _scaler(clock: Clock, window: float = 10.0) -> Autoscaler:
    FakeClient.values, FakeClient.fail = {}, None
    settings = AutoscaleSettings(scale_down_window_seconds=window, query_window_seconds=100)
    return Autoscaler(settings, clock=lambda: NOW, monotonic=clock, client=FakeClient)


async def test_polls_once_per_interval_and_hands_the_planner_the_observed_rate() -> None:
    clock = Clock()
    a = _scaler(clock)
    spec = _spec(interval="30s")
    assert a.due("ns/x", spec.autoscaling)
    assert a.planning_plan("ns/x", _sp(spec))[0].spec.workload.requests_per_second is None

    FakeClient.values = {
        "requests_total": 300.0,
        "uncached_tokens_sum": 400_000.0,
        "uncached_tokens_count": 200.0,
    }
    obs = await a.poll("ns/x", "ns", "x", spec.autoscaling)
    assert obs is not None and obs.rate_rps == 3.0 and obs.mean_uncached_tokens == 2000.0
    assert not a.due("ns/x", spec.autoscaling)
    clock.t = 30.0
    assert a.due("ns/x", spec.autoscaling)

    planned, notes = a.planning_plan("ns/x", _sp(spec))
    assert planned.spec.workload.requests_per_second == 3.0
    assert planned.spec.workload.input_length == api.FixedDistribution(type="fixed", value=2000)
    assert len(notes) == 2
    unobserved = _spec(interval="30s")
    unobserved.workload.observe = False
    assert a.planning_plan("ns/x", _sp(unobserved))[0].spec.workload.requests_per_second is None

    status = a.status("ns/x", spec.autoscaling)
    assert status["observed"]["rateRps"] == 3.0
    assert status["autoscaling"] == {
        "metricsAvailable": True,
        "message": "",
        "lastAnswer": "2026-01-01T00:00:00Z",
    }
    assert (
        a.metrics.registry.get_sample_value(
            "prfaas_operator_autoscale_observed_rate_rps", {"plan": "ns/x"}
        )
        == 3.0
    )


async def test_a_failed_poll_keeps_the_observation_in_force_and_says_why() -> None:
    clock = Clock()
    a = _scaler(clock)
    spec = _spec()
    FakeClient.values = {"requests_total": 100.0}
    await a.poll("ns/x", "ns", "x", spec.autoscaling)
    available = {"plan": "ns/x"}
    gauge = "prfaas_operator_autoscale_metrics_available"
    assert a.metrics.registry.get_sample_value(gauge, available) == 1.0
    FakeClient.fail = "Prometheus at http://p is unreachable"
    assert await a.poll("ns/x", "ns", "x", spec.autoscaling) is None
    status = a.status("ns/x", spec.autoscaling)["autoscaling"]
    assert status["metricsAvailable"] is False
    assert "unreachable" in status["message"] and "nothing is scaled down" in status["message"]
    assert a.planning_plan("ns/x", _sp(spec))[0].spec.workload.requests_per_second == 1.0
    assert (
        a.metrics.registry.get_sample_value(
            "prfaas_operator_autoscale_query_errors_total", {"plan": "ns/x"}
        )
        == 1.0
    )
    assert a.metrics.registry.get_sample_value(gauge, available) == 0.0  # the alert's input


async def test_without_a_url_the_poll_fails_naming_the_field() -> None:
    a = _scaler(Clock())
    scaling = api.Autoscaling(enabled=True)
    assert await a.poll("ns/x", "ns", "x", scaling) is None
    assert "spec.autoscaling.prometheusUrl" in a.status("ns/x", scaling)["autoscaling"]["message"]
    assert a.status("ns/x", api.Autoscaling(enabled=False)) == {}


def test_apply_counts_up_down_and_hold_decisions() -> None:
    clock = Clock()
    a = _scaler(clock, window=10.0)
    spec = _spec(maxReplicas=8)

    def plan(n: int) -> Plan:
        return Plan(model="m", clusters=[ClusterPlan("d", "dc", "decode", "H20", n)])

    def count(direction: str) -> float:
        value = a.metrics.registry.get_sample_value(
            "prfaas_operator_autoscale_decisions_total",
            {"plan": "ns/x", "cluster": "d", "role": "decode", "direction": direction},
        )
        return value or 0.0

    first = plan(2)
    a.apply("ns/x", spec, first, {"clusters": [{"name": "d", "role": "decode", "instances": 1}]})
    assert first.clusters[0].instances == 2 and count("up") == 1
    held = plan(1)
    clock.t = 1.0
    a.apply("ns/x", spec, held, first.to_dict())
    assert held.clusters[0].instances == 2 and count("hold") == 1
    down = plan(1)
    clock.t = 12.0
    a.apply("ns/x", spec, down, held.to_dict())
    assert down.clusters[0].instances == 1 and count("down") == 1
    off = plan(1)
    a.apply("ns/x", _spec(enabled=False), off, {"clusters": []})
    assert off.clusters[0].instances == 1


async def test_the_operator_can_refuse_plan_chosen_prometheus_urls() -> None:
    urls: list[str] = []

    class Recording(FakeClient):
        def __init__(self, url: str, timeout_s: float) -> None:
            super().__init__(url, timeout_s)
            urls.append(url)

    settings = AutoscaleSettings(
        prometheus_url="http://operators-prometheus:9090", allow_plan_prometheus_url=False
    )
    a = Autoscaler(settings, clock=lambda: NOW, monotonic=Clock(), client=Recording)
    await a.poll("ns/x", "ns", "x", _spec(prometheusUrl="http://tenant-chosen").autoscaling)
    assert urls == ["http://operators-prometheus:9090"]
    env = {"PRFAAS_ALLOW_PLAN_PROMETHEUS_URL": "false"}
    assert OperatorSettings.from_env(env).autoscale.allow_plan_prometheus_url is False
    assert OperatorSettings.from_env({}).autoscale.allow_plan_prometheus_url is True
