"""The kopf handlers: thin wrappers that call ``Reconciler`` and steer kopf's retries.

``register(registry, reconciler)`` declares every handler on a fresh ``kopf.OperatorRegistry``
(so tests and restarts get their own), with cadences from the reconciler's settings:

- ServingPlan create / update / resume / every ``resyncSeconds`` → ``reconcile_plan``;
  delete → ``cleanup_plan`` (kopf's finalizer keeps the object until children in every cluster
  are gone); with ``spec.autoscaling.enabled``, every ``autoscale.tick_seconds`` →
  ``autoscale_plan`` (which polls Prometheus once the plan's own interval has passed).
- PrefillCluster / DecodeCluster create / update / delete → re-reconcile the plans naming them;
  every ``clusterProbeSeconds`` → ``probe_cluster`` (reachability, allocatable GPUs).
- InterDCLink create / update / delete → re-reconcile every plan; timer → ``observe_link``.
- Deployments carrying ``prfaas.io/plan`` (this cluster only; remote ones are seen by the
  resync timer) → re-reconcile their plan, so ``Ready`` follows availability.

Handlers return ``None``: kopf would otherwise store return values under ``status``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prfaas.operator.api import models as api
from prfaas.operator.api.labels import LABEL_PLAN, LABEL_PLAN_NAMESPACE
from prfaas.operator.controller.clients import ApiError
from prfaas.operator.controller.conditions import Outcome
from prfaas.operator.controller.phases import ClusterKind
from prfaas.operator.controller.reconcile import Reconciler

__all__ = ["register"]

log = logging.getLogger(__name__)

_PLANS = (api.GROUP, api.VERSION, "servingplans")
_CLUSTERS: dict[ClusterKind, str] = {
    "PrefillCluster": "prefillclusters",
    "DecodeCluster": "decodeclusters",
}
_LINKS = (api.GROUP, api.VERSION, "interdclinks")


def _retry_if_failed(outcome: Outcome | None, delay: float) -> None:
    if outcome is not None and (outcome.errors or outcome.unreachable):
        problems = outcome.errors + [f"{c} unreachable" for c in outcome.unreachable]
        raise kopf.TemporaryError("; ".join(problems), delay=delay)


def register(registry: kopf.OperatorRegistry, rec: Reconciler) -> kopf.OperatorRegistry:
    """Declare all handlers on ``registry``, bound to ``rec``; returns the registry."""
    delay = rec.settings.retry.reconcile_delay_seconds
    resync = rec.settings.reconcile.resync_seconds
    probe = rec.settings.reconcile.cluster_probe_seconds

    async def _reconcile(namespace: str, name: str) -> None:
        try:
            outcome = await rec.reconcile_plan(namespace, name)
        except ApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=delay) from exc
        _retry_if_failed(outcome, delay)

    async def _wake(cluster: str | None) -> None:
        for namespace, name in await rec.plans_using(cluster):
            try:
                await rec.reconcile_plan(namespace, name)
            except ApiError as exc:
                log.warning("re-reconcile of %s/%s failed: %s", namespace, name, exc)

    @kopf.on.create(*_PLANS, registry=registry)
    @kopf.on.update(*_PLANS, registry=registry, field="spec")
    @kopf.on.resume(*_PLANS, registry=registry)
    async def plan_changed(namespace: str | None, name: str, **_: Any) -> None:
        await _reconcile(namespace or "default", name)

    @kopf.timer(*_PLANS, registry=registry, interval=resync, initial_delay=resync)
    async def plan_resync(namespace: str | None, name: str, **_: Any) -> None:
        await _reconcile(namespace or "default", name)

    def _autoscaled(spec: kopf.Spec, **_: Any) -> bool:
        return bool((spec.get("autoscaling") or {}).get("enabled"))

    @kopf.timer(
        *_PLANS,
        registry=registry,
        id="plan-autoscale",
        interval=rec.settings.autoscale.tick_seconds,
        when=_autoscaled,
    )
    async def plan_autoscale(namespace: str | None, name: str, **_: Any) -> None:
        try:
            await rec.autoscale_plan(namespace or "default", name)
        except ApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=delay) from exc

    @kopf.on.delete(*_PLANS, registry=registry)
    async def plan_deleted(body: kopf.Body, **_: Any) -> None:
        try:
            deleted = await rec.cleanup_plan(dict(body))
        except ApiError as exc:
            raise kopf.TemporaryError(f"children not deleted yet: {exc}", delay=delay) from exc
        log.info(
            "deleted %d children of %s/%s",
            len(deleted),
            body.metadata.namespace,
            body.metadata.name,
        )

    for kind, plural in _CLUSTERS.items():
        resource = (api.GROUP, api.VERSION, plural)

        @kopf.on.create(*resource, registry=registry, id=f"{plural}-changed")
        @kopf.on.update(*resource, registry=registry, id=f"{plural}-updated", field="spec")
        @kopf.on.resume(*resource, registry=registry, id=f"{plural}-resumed")
        async def cluster_changed(name: str, _kind: ClusterKind = kind, **_: Any) -> None:
            await rec.probe_cluster(_kind, name)
            await _wake(name)

        @kopf.on.delete(*resource, registry=registry, id=f"{plural}-deleted", optional=True)
        async def cluster_deleted(name: str, **_: Any) -> None:
            await _wake(name)

        @kopf.timer(
            *resource, registry=registry, id=f"{plural}-probe", interval=probe, initial_delay=probe
        )
        async def cluster_probe(name: str, _kind: ClusterKind = kind, **_: Any) -> None:
            await rec.probe_cluster(_kind, name)

    @kopf.on.create(*_LINKS, registry=registry)
    @kopf.on.update(*_LINKS, registry=registry, field="spec")
    @kopf.on.resume(*_LINKS, registry=registry)
    async def link_changed(name: str, **_: Any) -> None:
        await rec.observe_link(name)
        await _wake(None)

    @kopf.on.delete(*_LINKS, registry=registry, optional=True)
    async def link_deleted(**_: Any) -> None:
        await _wake(None)

    @kopf.timer(*_LINKS, registry=registry, interval=probe, initial_delay=probe)
    async def link_observe(name: str, **_: Any) -> None:
        await rec.observe_link(name)

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        registry=registry,
        labels={LABEL_PLAN: kopf.PRESENT, LABEL_PLAN_NAMESPACE: kopf.PRESENT},
    )
    async def child_changed(labels: kopf.Labels, type: str | None, **_: Any) -> None:
        if type is None:  # the initial listing: the plans' own resume handlers cover it
            return
        try:
            await rec.reconcile_plan(labels[LABEL_PLAN_NAMESPACE], labels[LABEL_PLAN])
        except ApiError as exc:
            log.warning("reconcile after a child change failed: %s", exc)

    return registry
