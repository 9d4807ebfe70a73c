"""The operator's Prometheus metrics (``prfaas_operator_*``) and the HTTP server behind them.

Metrics live in a ``CollectorRegistry`` owned by an ``OperatorMetrics`` instance, not the
process-global one, so tests and a restarted operator start from zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from prfaas.planner.plan import Plan
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["OperatorMetrics"]


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconcile_seconds = Histogram(
            "prfaas_operator_reconcile_duration_seconds",
            "Wall time of one reconcile, by kind.",
            ["kind"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.reconcile_errors = Counter(
            "prfaas_operator_reconcile_errors",
            "Reconciles that failed and will be retried, by kind and reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.planned_instances = Gauge(
            "prfaas_operator_planned_instances",
            "Engine instances in the current plan, by plan, cluster and role.",
            ["plan", "cluster", "role"],
            registry=r,
        )
        self.threshold_tokens = Gauge(
            "prfaas_operator_threshold_tokens",
            "Planned offload threshold t (uncached prompt tokens); +Inf: no offload.",
            ["plan"],
            registry=r,
        )
        self.predicted_throughput = Gauge(
            "prfaas_operator_predicted_throughput_rps",
            "Predicted Λ_max of the current plan (requests/s).",
            ["plan"],
            registry=r,
        )
        self.autoscale_rate = Gauge(
            "prfaas_operator_autoscale_observed_rate_rps",
            "Arrival rate the routers saw (the last autoscaling observation), requests/s.",
            ["plan"],
            registry=r,
        )
        self.autoscale_input_tokens = Gauge(
            "prfaas_operator_autoscale_observed_input_tokens",
            "Mean uncached prompt length the routers saw, tokens.",
            ["plan"],
            registry=r,
        )
        self.autoscale_decisions = Counter(
            "prfaas_operator_autoscale_decisions",
            "Replica decisions by plan, cluster, role and direction (up, down, hold: the plan "
            "wants fewer but the scale-down window has not passed).",
            ["plan", "cluster", "role", "direction"],
            registry=r,
        )
        self.autoscale_errors = Counter(
            "prfaas_operator_autoscale_query_errors",
            "Autoscaling polls that got no answer from Prometheus (nothing was scaled down).",
            ["plan"],
            registry=r,
        )
        self.autoscale_metrics_available = Gauge(
            "prfaas_operator_autoscale_metrics_available",
            "1 when the last autoscaling poll got Prometheus' answers, 0 when it did not (then "
            "nothing is scaled down); status.autoscaling.metricsAvailable.",
            ["plan"],
            registry=r,
        )
        self.link_measured_gbps = Gauge(
            "prfaas_operator_autoscale_link_measured_gbps",
            "KV throughput achieved on an InterDCLink while transfers were under way, Gbit/s.",
            ["link"],
            registry=r,
        )
        self._server: Any = None

    @contextmanager
    def time_reconcile(self, kind: str) -> Iterator[None]:
        """Observe the duration of the ``with`` body; count it as an error if it raises."""
        start = perf_counter()
        try:
            yield
        except BaseException as exc:
            self.reconcile_errors.labels(kind, type(exc).__name__).inc()
            raise
        finally:
            self.reconcile_seconds.labels(kind).observe(perf_counter() - start)

    def record_plan(self, plan_key: str, plan: Plan) -> None:
        """Publish the planned instances, t and Λ_max of ``plan`` under ``plan_key``."""
        self.forget_plan(plan_key, observed=False)
        for cp in plan.clusters:
            self.planned_instances.labels(plan_key, cp.name, cp.role).set(cp.instances)
        t = plan.threshold_tokens
        self.threshold_tokens.labels(plan_key).set(float("inf") if t is None else t)
        self.predicted_throughput.labels(plan_key).set(plan.throughput_rps)

    def forget_plan(self, plan_key: str, *, observed: bool = True) -> None:
        """Drop every series of a deleted (or, with ``observed=False``, re-planned) ServingPlan."""
        gauges = [self.planned_instances, self.threshold_tokens, self.predicted_throughput]
        if observed:
            gauges += [
                self.autoscale_rate, self.autoscale_input_tokens, self.autoscale_metrics_available
            ]
        for gauge in gauges:
            for labels in list(gauge._metrics):  # prometheus_client keeps them here
                if labels and labels[0] == plan_key:
                    gauge.remove(*labels)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread (prometheus_client's server)."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = (server, thread)

    def stop(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            thread.join(timeout=5)
            self._server = None
