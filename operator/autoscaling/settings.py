"""The autoscaler's settings (part of ``OperatorSettings``; the Helm chart sets them through
``PRFAAS_*`` variables)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AutoscaleSettings"]


@dataclass(slots=True)
class AutoscaleSettings:
    tick_seconds: float = 5.0
    """How often ServingPlans with ``autoscaling.enabled`` are checked (seconds); each plan is
    polled only once its own ``spec.autoscaling.interval`` has passed."""
    scale_down_window_seconds: float = 300.0
    """A lower replica target must hold this long before a role shrinks (HPA's default 5 min),
    so a dip in traffic does not tear down engines that take minutes to load weights."""
    query_window_seconds: float = 120.0
    """Range of the ``increase(...)`` queries (seconds): at least 4 scrape intervals of 15 s so a
    missed scrape does not zero the rate."""
    tolerance: float = 0.1
    """A new observed rate or mean prompt length replaces the one in force only when it moved
    by more than this fraction, so noise neither re-plans nor rolls the routers."""
    min_transfer_seconds: float = 5.0
    """A link's measured bandwidth is published only after this much KV transfer time in the
    window; less is too little to tell the link's throughput from request latency."""
    query_timeout_seconds: float = 10.0
    """Timeout of one Prometheus query (seconds)."""
    prometheus_url: str | None = None
    """Used when a ServingPlan does not set ``spec.autoscaling.prometheusUrl``."""
    allow_plan_prometheus_url: bool = True
    """Whether a ServingPlan's ``spec.autoscaling.prometheusUrl`` is used at all. Off, only
    ``prometheus_url`` is queried, so a tenant cannot point the operator's requests anywhere."""
