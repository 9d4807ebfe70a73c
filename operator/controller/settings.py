"""The operator's settings: grouped dataclasses, each field saying its unit and why the default.

Nothing is read at import time; ``OperatorSettings.from_env()`` reads ``PRFAAS_*`` variables
when the operator starts (the Helm chart sets them), tests build settings directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prfaas.operator.autoscaling.settings import AutoscaleSettings
from prfaas.operator.controller.apply import ApplyMode

__all__ = [
    "OperatorSettings",
    "ReconcileSettings",
    "RetrySettings",
    "parse_apply_mode",
]


def parse_apply_mode(value: str) -> ApplyMode:
    """``server-side`` or ``merge``; ``ValueError`` naming both otherwise."""
    if value == "server-side":
        return "server-side"
    if value == "merge":
        return "merge"
    raise ValueError(f"apply mode {value!r}: use server-side or merge")


@dataclass(slots=True)
class ReconcileSettings:
    resync_seconds: float = 30.0
    """Every ServingPlan is re-reconciled this often (seconds), which is how status changes of
    children in *remote* clusters (no watch there) reach its ``Ready`` condition. 30 s keeps the
    load on remote API servers to a few GETs per child per half minute."""
    cluster_probe_seconds: float = 60.0
    """PrefillCluster/DecodeCluster reachability and allocatable GPUs are refreshed this often
    (seconds)."""
    apply_mode: ApplyMode = "server-side"
    """``server-side`` (server-side apply, field manager ``prfaas``) for real API servers;
    ``merge`` (read, create or merge-patch) for API servers without it, e.g. kmock."""
    namespace: str = "default"
    """The operator's namespace: where ``kubeconfigSecretRef`` Secrets without a namespace are."""
    router_image: str = "ghcr.io/prfaas/prfaas-router:0.1.0"
    """Image of the per-decode-cluster router (``Dockerfile.router``: the ``router`` extra only)."""
    workload_namespaces: tuple[str, ...] = ()
    """The only namespaces of the operator's own cluster it writes children in, when the chart
    grants child verbs there only (``operator.workloadNamespaces``); empty: every namespace."""
    detect_pod_monitor: bool = True
    """Create a PodMonitor per cluster when that cluster serves ``monitoring.coreos.com/v1``."""


@dataclass(slots=True)
class RetrySettings:
    api_retries: int = 3
    """Transient API answers (429, 5xx, connection errors) are retried this many times inside
    one call before the reconcile fails and kopf retries it."""
    api_backoff_seconds: float = 0.2
    """First pause between those retries (seconds); it doubles each time."""
    reconcile_delay_seconds: float = 10.0
    """After a failed reconcile (unreachable cluster, API error) kopf retries after this many
    seconds."""


@dataclass(slots=True)
class OperatorSettings:
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    metrics_port: int = 8080
    """Port of ``/metrics`` (Prometheus) and ``/healthz``; 0 disables the server."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """Settings from ``PRFAAS_*`` variables (unset ones keep their defaults)."""
        e = dict(os.environ) if env is None else env
        s = cls()
        r = s.reconcile
        r.resync_seconds = float(e.get("PRFAAS_RESYNC_SECONDS", r.resync_seconds))
        r.cluster_probe_seconds = float(
            e.get("PRFAAS_CLUSTER_PROBE_SECONDS", r.cluster_probe_seconds)
        )
        r.apply_mode = parse_apply_mode(e.get("PRFAAS_APPLY_MODE", r.apply_mode))
        r.namespace = e.get("PRFAAS_NAMESPACE", e.get("POD_NAMESPACE", r.namespace))
        r.router_image = e.get("PRFAAS_ROUTER_IMAGE", r.router_image)
        r.workload_namespaces = tuple(
            n.strip() for n in e.get("PRFAAS_WORKLOAD_NAMESPACES", "").split(",") if n.strip()
        )
        a = s.autoscale
        a.tick_seconds = float(e.get("PRFAAS_AUTOSCALE_TICK_SECONDS", a.tick_seconds))
        a.scale_down_window_seconds = float(
            e.get("PRFAAS_SCALE_DOWN_WINDOW_SECONDS", a.scale_down_window_seconds)
        )
        a.prometheus_url = e.get("PRFAAS_PROMETHEUS_URL") or a.prometheus_url
        allow = e.get("PRFAAS_ALLOW_PLAN_PROMETHEUS_URL", "true").strip().lower()
        a.allow_plan_prometheus_url = allow not in ("false", "0", "no")
        s.metrics_port = int(e.get("PRFAAS_METRICS_PORT", s.metrics_port))
        return s
