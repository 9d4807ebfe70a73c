"""The autoscaling loop's state and I/O: poll Prometheus per ServingPlan, keep the observation in
force, hand the planner the observed workload, and stabilise the planned replicas.

The ``Reconciler`` owns one ``Autoscaler``. Its kopf timer calls ``Reconciler.autoscale_plan``,
which polls here (when the plan's ``spec.autoscaling.interval`` has passed), writes measured
link bandwidth to InterDCLink status and re-runs the ordinary reconcile; every reconcile asks
``planning_plan`` for the ServingPlan to plan with and ``apply`` for the replicas to run.
Decisions themselves are in ``autoscale`` (pure).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prfaas.operator.api import models as api
from prfaas.operator.api.messages import safe_message
from prfaas.operator.autoscaling.calibration import (
    Calibration,
    EngineObservation,
    FactorMove,
    calibration_queries,
    observe_engines,
    plan_predictor,
    spec_wake,
)
from prfaas.operator.autoscaling.decide import (
    Observation,
    Stabilizer,
    observe,
    observed_workload,
    queries,
    settle,
    stabilise_plan,
)
from prfaas.operator.autoscaling.prometheus import PrometheusClient, PrometheusError
from prfaas.operator.autoscaling.settings import AutoscaleSettings
from prfaas.operator.metrics import OperatorMetrics
from prfaas.planner.plan import Plan

__all__ = ["Autoscaler", "PlanScaling"]

_NO_URL = (
    "spec.autoscaling.prometheusUrl is not set (nor PRFAAS_PROMETHEUS_URL): set it to "
    "Prometheus' HTTP API, e.g. http://prometheus-operated.monitoring:9090"
)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _selector(router_query: str) -> str:
    """The ``{...}`` label selector of one of ``queries()`` (the engines carry the same plan
    labels as the routers)."""
    start = router_query.index("{")
    return router_query[start : router_query.index("}", start) + 1]


def _format(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PlanScaling:
    """One plan's autoscaling state."""

    in_force: Observation | None = None
    """The observation the planner uses (changes only beyond the dead band)."""
    latest: Observation | None = None
    polled_at: float | None = None
    """Monotonic time of the last poll (answered or not)."""
    error: str | None = None
    """Why the last poll got no answer; ``None`` after a good one."""
    answered_at: _dt.datetime | None = None
    engines: dict[tuple[str, str, str], EngineObservation] = field(default_factory=dict)
    """The engines' own latency from the last poll, not yet compared with the model."""
    calibration: Calibration = field(default_factory=Calibration)


@dataclass
class Autoscaler:
    settings: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    clock: Callable[[], _dt.datetime] = _utcnow
    monotonic: Callable[[], float] = time.monotonic
    client: Callable[[str, float], PrometheusClient] = PrometheusClient
    stabilizer: Stabilizer = field(init=False)
    plans: dict[str, PlanScaling] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stabilizer = Stabilizer(self.settings.scale_down_window_seconds)

    def due(self, key: str, scaling: api.Autoscaling) -> bool:
        """Whether the plan's ``interval`` has passed since its last poll."""
        state = self.plans.get(key)
        if state is None or state.polled_at is None:
            return True
        return self.monotonic() - state.polled_at >= api.duration_seconds(scaling.interval)

    async def poll(
        self, key: str, namespace: str, name: str, scaling: api.Autoscaling
    ) -> Observation | None:
        """Query Prometheus once; the new observation, or ``None`` (reason in ``error``)."""
        state = self.plans.setdefault(key, PlanScaling())
        state.polled_at = self.monotonic()
        own = scaling.prometheus_url if self.settings.allow_plan_prometheus_url else None
        url = own or self.settings.prometheus_url
        window = self.settings.query_window_seconds
        if not url:
            state.error = _NO_URL
            self.metrics.autoscale_errors.labels(key).inc()
            self.metrics.autoscale_metrics_available.labels(key).set(0)
            return None
        try:
            async with self.client(url, self.settings.query_timeout_seconds) as prom:
                wanted = queries(name, namespace, window)
                results = {k: await prom.query(q) for k, q in wanted.items()}
                engine_q = calibration_queries(_selector(wanted["requests"]), window)
                engines = {k: await prom.query(q) for k, q in engine_q.items()}
        except PrometheusError as exc:
            state.error = f"{exc}; keeping the current replicas (nothing is scaled down)"
            self.metrics.autoscale_errors.labels(key).inc()
            self.metrics.autoscale_metrics_available.labels(key).set(0)
            return None
        obs = observe(
            results, window, self.clock(), min_transfer_seconds=self.settings.min_transfer_seconds
        )
        state.error, state.answered_at, state.latest = None, obs.at, obs
        state.engines = observe_engines(engines, window)
        self.metrics.autoscale_metrics_available.labels(key).set(1)
        state.in_force = settle(state.in_force, obs, self.settings.tolerance)
        if obs.rate_rps is not None:
            self.metrics.autoscale_rate.labels(key).set(obs.rate_rps)
        if obs.mean_uncached_tokens is not None:
            self.metrics.autoscale_input_tokens.labels(key).set(obs.mean_uncached_tokens)
        for link, gbps in obs.link_gbps.items():
            self.metrics.link_measured_gbps.labels(link).set(gbps)
        return obs

    def calibrate(self, key: str, spec: api.ServingPlanSpec, plan: Any) -> list[FactorMove]:
        """Compare the last poll's engine latency with the model of the plan in force
        (``status.plan``) and move the correction factors; each observation is used once."""
        state = self.plans.get(key)
        if state is None or not state.engines:
            return []
        observations, state.engines = state.engines, {}
        return state.calibration.update(observations, plan_predictor(spec, plan), spec_wake(spec))

    def corrections(
        self, key: str, scaling: api.Autoscaling
    ) -> tuple[tuple[str, str, str, float], ...]:
        """The correction factors the next plan uses (none when autoscaling is off)."""
        state = self.plans.get(key)
        if not scaling.enabled or state is None:
            return ()
        return state.calibration.corrections()

    def planning_plan(self, key: str, sp: api.ServingPlan) -> tuple[api.ServingPlan, list[str]]:
        """The ServingPlan to plan with: its workload replaced by the observed one when
        ``autoscaling.enabled`` and ``workload.observe``; notes saying what changed."""
        state = self.plans.get(key)
        spec = sp.spec
        if not (spec.autoscaling.enabled and spec.workload.observe) or state is None:
            return sp, []
        if state.in_force is None:
            return sp, []
        workload, notes = observed_workload(spec.workload, state.in_force)
        new_spec = spec.model_copy(update={"workload": workload})
        return sp.model_copy(update={"spec": new_spec}), notes

    def apply(self, key: str, spec: api.ServingPlanSpec, plan: Plan, previous: Any) -> None:
        """Clamp and stabilise ``plan``'s instances in place (autoscaling enabled only).
        ``previous``: ``status.plan`` as written last time (what runs now)."""
        if not spec.autoscaling.enabled:
            return
        current: dict[tuple[str, str], int] = {}
        for c in (previous or {}).get("clusters") or []:
            if isinstance(c.get("instances"), int):
                current[(c.get("name", ""), c.get("role", ""))] = c["instances"]
        decisions = stabilise_plan(
            plan, key, spec.autoscaling, current, self.stabilizer, self.monotonic()
        )
        for cluster, role, planned, applied in decisions:
            before = current.get((cluster, role))
            if before is None or applied == before:
                direction = "hold" if planned < applied else ""
            else:
                direction = "up" if applied > before else "down"
            if direction:
                self.metrics.autoscale_decisions.labels(key, cluster, role, direction).inc()

    def status(self, key: str, scaling: api.Autoscaling | None) -> dict[str, Any]:
        """The ``status`` fields autoscaling owns (none when it is disabled)."""
        if scaling is None or not scaling.enabled:
            return {}
        state = self.plans.get(key) or PlanScaling()
        out: dict[str, Any] = {
            "autoscaling": {
                "metricsAvailable": None if state.polled_at is None else state.error is None,
                "message": safe_message(state.error or ""),
                "lastAnswer": None if state.answered_at is None else _format(state.answered_at),
            }
        }
        if state.latest is not None:
            out["observed"] = state.latest.to_status()
        if state.calibration.last:
            out["calibration"] = state.calibration.to_status()
        return out

    def forget(self, key: str) -> None:
        self.plans.pop(key, None)
        self.stabilizer.forget(key)
