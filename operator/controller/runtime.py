"""Starting the operator: clients, reconciler, kopf registry and settings, metrics server.

``run_operator`` is the coroutine behind ``prfaas operator`` and the integration tests (which
pass the emulator's URL as ``server`` and their own stop flag). Kopf runs standalone (no peering
CRDs needed) and cluster-wide.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf
from prfaas.operator.autoscaling.loop import Autoscaler
from prfaas.operator.controller.clients import ClientPool, ClusterClient, Unreachable
from prfaas.operator.controller.handlers import register
from prfaas.operator.controller.reconcile import PlannerFn, Reconciler, default_planner
from prfaas.operator.controller.settings import OperatorSettings
from prfaas.operator.metrics import OperatorMetrics

__all__ = ["kopf_settings", "local_client", "run_operator"]

log = logging.getLogger(__name__)


def local_client(settings: OperatorSettings, server: str | None = None) -> ClusterClient:
    """The client of the cluster the operator runs in: ``server`` (no auth, for tests and
    ``kubectl proxy``), else the in-cluster service account, else ``~/.kube/config``."""
    opts: dict[str, Any] = {
        "retries": settings.retry.api_retries,
        "backoff": settings.retry.api_backoff_seconds,
        "namespaces": frozenset(settings.reconcile.workload_namespaces) or None,
    }
    if server is not None:
        return ClusterClient(name="local", server=server.rstrip("/"), ssl_context=False, **opts)
    import kubernetes

    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config(client_configuration=cfg)
        except Exception as exc:
            raise Unreachable(
                "local",
                f"no Kubernetes API server to talk to: not in a pod (no service account) and "
                f"no usable kubeconfig ({exc}); set KUBECONFIG, or give --server URL "
                "(e.g. of `kubectl proxy`)",
            ) from exc
    return ClusterClient.from_configuration("local", cfg, **opts)


def kopf_settings() -> kopf.OperatorSettings:
    """Kopf settings we rely on (watching left at defaults: the emulator cannot honour more)."""
    s = kopf.OperatorSettings()
    s.peering.standalone = True
    # Only warnings of kopf's own become Events (not "Timer succeeded" every resync); our
    # ``kopf.event`` calls (plan changes, Stalled, Degraded) are posted regardless of level.
    s.posting.level = logging.WARNING
    s.persistence.finalizer = "prfaas.io/children"
    return s


async def run_operator(
    settings: OperatorSettings,
    *,
    server: str | None = None,
    planner: PlannerFn = default_planner,
    stop_flag: asyncio.Event | None = None,
    metrics: OperatorMetrics | None = None,
    post_events: bool = True,
    liveness_endpoint: str | None = None,
    autoscaler: Autoscaler | None = None,
) -> None:
    """Run until ``stop_flag`` is set (or forever). ``server``: talk to that URL without auth.
    ``autoscaler``: one built by the caller (tests give it a clock they move)."""
    local = local_client(settings, server)
    pool = ClientPool(
        local,
        namespace=settings.reconcile.namespace,
        client_options={
            "retries": settings.retry.api_retries,
            "backoff": settings.retry.api_backoff_seconds,
        },
    )
    metrics = metrics or OperatorMetrics()
    rec = Reconciler(pool, settings, planner=planner, metrics=metrics, autoscaler=autoscaler)
    if post_events:
        rec.on_event = lambda body, type_, reason, message: kopf.event(
            kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message
        )
    registry = register(kopf.OperatorRegistry(), rec)
    if server is not None:

        @kopf.on.login(registry=registry)
        def _login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, insecure=True)

    ks = kopf_settings()
    ks.posting.enabled = post_events
    serving = settings.metrics_port > 0
    if serving:
        metrics.serve(settings.metrics_port)
    try:
        await kopf.operator(
            registry=registry,
            settings=ks,
            standalone=True,
            clusterwide=True,
            stop_flag=stop_flag,
            liveness_endpoint=liveness_endpoint,
        )
    finally:
        if serving:
            metrics.stop()
        await pool.close()
