"""Autoscaling: the Prometheus client, pure decisions (observe → decide → stabilise) and the
per-plan loop that polls and re-plans."""

from prfaas.operator.autoscaling.loop import Autoscaler
from prfaas.operator.autoscaling.prometheus import PrometheusClient, PrometheusError

__all__ = ["Autoscaler", "PrometheusClient", "PrometheusError"]
