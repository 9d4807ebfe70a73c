"""The reconcile steps behind the kopf handlers, free of kopf so they can be read and tested alone.

``Reconciler.reconcile_plan`` is one pass over a ServingPlan, in phases (``phases`` holds what
each hands on): load (the plan, the clusters and links it names, a client per cluster) → plan
(off the event loop) → build the children → apply them per cluster and read their availability
back → report: ``status`` written once (always the full condition list). Failures never delete
what runs: a missing cluster → ``Degraded`` naming it; a plan the planner cannot satisfy →
``Stalled`` with its reason; an unreachable cluster → that cluster's ``Reachable`` condition
False and the plan ``Degraded``, children elsewhere untouched.

Passes for one plan are serialised by a lock, and requests that arrive while one waits are
coalesced into it, so a burst of child events costs one extra pass, not one per event.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as _dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prfaas.operator.api import models as api
from prfaas.operator.api.messages import safe_message
from prfaas.operator.autoscaling.loop import Autoscaler
from prfaas.operator.controller.apply import (
    ApplyError,
    apply_children,
    availability,
    cluster_selector,
    delete_children,
    plan_selector,
)
from prfaas.operator.controller.builders import (
    BuildError,
    ClusterTarget,
    PlanInputs,
    build_children,
)
from prfaas.operator.controller.clients import (
    KINDS,
    ApiError,
    ClientPool,
    ClusterClient,
    Unreachable,
)
from prfaas.operator.controller.conditions import (
    Outcome,
    condition,
    format_time,
    merge_conditions,
    set_condition,
    summarize,
)
from prfaas.operator.controller.phases import (
    Built,
    ClusterApplied,
    ClusterFailed,
    ClusterKind,
    ClusterResult,
    Degraded,
    Halt,
    Loaded,
    Planned,
    Stalled,
    record,
)
from prfaas.operator.controller.settings import OperatorSettings
from prfaas.operator.metrics import OperatorMetrics
from prfaas.planner.plan import Plan
from pydantic import ValidationError

__all__ = [
    "EventSink",
    "PlanRequest",
    "PlannerFn",
    "Reconciler",
    "default_planner",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the planner is asked: the ServingPlan and the objects it names, validated."""

    serving_plan: api.ServingPlan
    prefill: tuple[api.PrefillCluster, ...]
    decode: tuple[api.DecodeCluster, ...]
    links: tuple[api.InterDCLink, ...]
    corrections: tuple[tuple[str, str, str, float], ...] = ()
    """``(cluster, role, phase, factor)`` the autoscaler learned from the engines' latency."""


PlannerFn = Callable[[PlanRequest], Plan]
EventSink = Callable[[dict[str, Any], str, str, str], Awaitable[None] | None]
"""``(body, type, reason, message)`` → posts a Kubernetes Event (kopf's ``kopf.event``)."""


def default_planner(request: PlanRequest) -> Plan:
    """The real planner: translate the resources into a planning problem and solve it."""
    from prfaas.operator.api import translate  # owned by the planner component
    from prfaas.planner.solver import plan

    problem = translate.problem_from_resources(
        request.serving_plan,
        list(request.prefill),
        list(request.decode),
        list(request.links),
        corrections=request.corrections,
    )
    return plan(problem)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"spec.{where}: {err.get('msg')}"


@dataclass
class Reconciler:
    pool: ClientPool
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    planner: PlannerFn = default_planner
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    clock: Callable[[], _dt.datetime] = _utcnow
    on_event: EventSink | None = None
    autoscaler: Autoscaler | None = None
    """Observed load and replica stabilisation (built from ``settings.autoscale`` if absent)."""
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    _pending: set[tuple[str, str]] = field(default_factory=set)
    _serves_pod_monitor: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.autoscaler is None:
            self.autoscaler = Autoscaler(self.settings.autoscale, self.metrics, clock=self.clock)

    @property
    def scaler(self) -> Autoscaler:
        assert self.autoscaler is not None  # set in __post_init__
        return self.autoscaler

    # ------------------------------------------------------------------------------------------
    # ServingPlan
    # ------------------------------------------------------------------------------------------

    async def reconcile_plan(self, namespace: str, name: str) -> Outcome | None:
        """One pass (or nothing, if a pass for this plan is already waiting to start)."""
        key = (namespace, name)
        if key in self._pending:
            return None
        self._pending.add(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            self._pending.discard(key)
            with self.metrics.time_reconcile("ServingPlan"):
                return await self._reconcile(namespace, name)

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if self.on_event is None:
            return
        result = self.on_event(body, type_, reason, safe_message(message))
        if result is not None:
            await result

    async def _inline_measured_profile(self, sp: api.ServingPlan) -> api.ServingPlan:
        """``sp`` with a ``measuredProfile.configMapKeyRef`` replaced by the profile it names,
        read from the ServingPlan's namespace; ``ValueError`` says what is missing."""
        ref = sp.spec.model.measured_profile
        if ref is None or ref.config_map_key_ref is None:
            return sp
        cm = ref.config_map_key_ref
        field_ = "spec.model.measuredProfile.configMapKeyRef"
        ns = sp.metadata.namespace or "default"
        obj = await self.pool.local.get(KINDS["ConfigMap"], ns, cm.name)
        text = ((obj or {}).get("data") or {}).get(cm.key)
        if text is None:
            raise ValueError(
                f"{field_}: ConfigMap {ns}/{cm.name} has no key {cm.key!r}; create it with "
                f"kubectl create configmap {cm.name} --from-file={cm.key}=PROFILE.json"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{field_}: ConfigMap {ns}/{cm.name} key {cm.key}: {exc}") from None
        model = sp.spec.model.model_copy(
            update={"measured_profile": api.MeasuredProfileRef(inline=data)}
        )
        return sp.model_copy(update={"spec": sp.spec.model_copy(update={"model": model})})

    async def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        """One pass: load → plan → build → apply per cluster → report (status written once)."""
        body = await self.pool.local.get(KINDS["ServingPlan"], namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return None
        outcome = Outcome(generation=body["metadata"].get("generation"))
        outcome.planned = bool((body.get("status") or {}).get("plan"))
        planned = await self._run_phases(body, outcome)
        await self._report(body, outcome, planned)
        return outcome

    async def _run_phases(self, body: dict[str, Any], outcome: Outcome) -> Planned | None:
        """Load, plan, build and apply, recording each result in ``outcome``; the plan to
        report, or ``None`` when a phase halted the pass."""
        loaded = await self._load(body)
        if isinstance(loaded, Stalled | Degraded):
            record(outcome, loaded)
            return None
        outcome.unreachable.extend(loaded.unreachable)
        planned = await self._plan(loaded)
        if isinstance(planned, Stalled):
            record(outcome, planned)
            return None
        built = self._build(loaded, planned)
        if isinstance(built, Stalled):
            record(outcome, built)
            return None
        for cname, objs in sorted(built.children.items()):
            client = loaded.clients.get(cname)
            if client is None:
                continue  # unreachable: keep what runs there
            owner = body if self.pool.key(built.targets[cname].spec.target) == "local" else None
            record(outcome, await self._apply_cluster(loaded, cname, client, objs, owner))
        meta = body["metadata"]
        await self._prune_dropped_clusters(
            body.get("status") or {},
            loaded.clusters,
            meta.get("namespace") or "default",
            meta["name"],
        )
        outcome.planned = True
        return planned

    async def _load(self, body: dict[str, Any]) -> Loaded | Halt:
        """The ServingPlan validated, the clusters and links it names, a client per cluster
        (an unreachable one is marked on its cluster and left out)."""
        try:
            # The spec alone first, so an error names its field as ``spec.<field>``.
            api.ServingPlanSpec.model_validate(body.get("spec") or {})
            sp = api.ServingPlan.model_validate(
                {
                    "apiVersion": api.API_VERSION,
                    "kind": "ServingPlan",
                    "metadata": body["metadata"],
                    "spec": body["spec"],
                }
            )
        except ValidationError as exc:
            return Stalled(f"invalid spec: {_first_error(exc)}")
        try:
            sp = await self._inline_measured_profile(sp)
        except ValueError as exc:
            return Stalled(str(exc))
        prefill, decode, missing = await self._resolve_clusters(sp.spec)
        if missing:
            return Degraded(tuple(missing))
        links = await self._links()
        clusters: dict[str, tuple[ClusterKind, api.PrefillClusterSpec | api.DecodeClusterSpec]]
        clusters = {c.metadata.name: ("PrefillCluster", c.spec) for c in prefill}
        clusters |= {c.metadata.name: ("DecodeCluster", c.spec) for c in decode}
        clients: dict[str, ClusterClient] = {}
        unreachable: list[str] = []
        for cname, (kind, cspec) in clusters.items():
            try:
                clients[cname] = await self.pool.client_for(cname, cspec.target)
            except Unreachable as exc:
                unreachable.append(cname)
                await self._mark_reachable(kind, cname, False, str(exc), reason=exc.reason)
        pod_monitor = {cname: await self._pod_monitor(client) for cname, client in clients.items()}
        return Loaded(
            sp,
            tuple(prefill),
            tuple(decode),
            tuple(links),
            clusters,
            clients,
            tuple(unreachable),
            pod_monitor,
            previous_plan=(body.get("status") or {}).get("plan"),
        )

    async def _plan(self, loaded: Loaded) -> Planned | Stalled:
        """A feasible plan for the workload the autoscaler has in force (off the event loop)."""
        spec, meta = loaded.spec, loaded.serving_plan.metadata
        key = f"{meta.namespace or 'default'}/{meta.name}"
        # Status shows the observation this pass plans with, even if a poll lands meanwhile.
        scaling_status = self.scaler.status(key, spec.autoscaling)
        planned_sp, observed_notes = self.scaler.planning_plan(key, loaded.serving_plan)
        request = PlanRequest(
            planned_sp,
            loaded.prefill,
            loaded.decode,
            loaded.links,
            self.scaler.corrections(key, spec.autoscaling),
        )
        try:
            plan = await asyncio.to_thread(self.planner, request)
        except Exception as exc:  # the planner's errors, and anything it did not foresee
            log.warning("planner failed for %s: %s", key, exc)
            plan = Plan(
                model=spec.model.served_name, feasible=False, reason=f"the planner failed: {exc}"
            )
        if not plan.feasible:
            return Stalled(plan.reason or "the planner found no feasible plan")
        plan.notes.extend(observed_notes)
        self.scaler.apply(key, spec, plan, loaded.previous_plan)
        return Planned(plan, scaling_status)

    def _build(self, loaded: Loaded, planned: Planned) -> Built | Stalled:
        """Every cluster's children (pure builders); a plan they reject stalls the pass."""
        meta = loaded.serving_plan.metadata
        targets = {
            cname: ClusterTarget(
                cname,
                kind,
                cspec,
                api_server=self.pool.key(cspec.target),
                pod_monitor=loaded.pod_monitor.get(cname, False),
            )
            for cname, (kind, cspec) in loaded.clusters.items()
        }
        inputs = PlanInputs(
            meta.name,
            meta.namespace or "default",
            loaded.spec,
            planned.plan,
            targets,
            router_image=self.settings.reconcile.router_image,
        )
        try:
            return Built(targets, build_children(inputs))
        except BuildError as exc:
            return Stalled(str(exc))

    async def _apply_cluster(
        self,
        loaded: Loaded,
        cname: str,
        client: ClusterClient,
        objs: list[dict[str, Any]],
        owner: dict[str, Any] | None,
    ) -> ClusterResult:
        """Apply one cluster's children and read back how many of its workloads are available."""
        kind = loaded.clusters[cname][0]
        meta = loaded.serving_plan.metadata
        if any(o["kind"] == "LeaderWorkerSet" for o in objs) and not await client.serves(
            KINDS["LeaderWorkerSet"]
        ):
            return ClusterFailed(
                cname,
                f"{cname}: an instance spans several nodes, which needs the LeaderWorkerSet "
                "CRD (leaderworkerset.x-k8s.io/v1); install LWS there or use GPUs with more "
                "memory per node",
            )
        try:
            result = await apply_children(
                client,
                objs,
                selector=cluster_selector(meta.name, meta.namespace or "default", cname),
                mode=self.settings.reconcile.apply_mode,
                owner=owner,
            )
        except Unreachable as exc:
            await self._mark_reachable(kind, cname, False, str(exc), reason=exc.reason)
            return ClusterFailed(cname, str(exc), unreachable=True)
        except (ApiError, ApplyError) as exc:
            return ClusterFailed(cname, str(exc))
        await self._mark_reachable(kind, cname, True, "")
        workloads = 0
        not_available: list[str] = []
        for ref, live in result.live.items():
            if live.get("kind", ref.split("/")[0]) in ("Deployment", "LeaderWorkerSet"):
                live.setdefault("kind", ref.split("/")[0])
                available, wanted = availability(live)
                workloads += 1
                if available < wanted:
                    not_available.append(
                        f"{cname}/{ref.split('/', 1)[0]}/{ref.rsplit('/', 1)[1]}"
                        f" ({available}/{wanted})"
                    )
        return ClusterApplied(cname, workloads, tuple(not_available))

    async def _resolve_clusters(
        self, spec: api.ServingPlanSpec
    ) -> tuple[list[api.PrefillCluster], list[api.DecodeCluster], list[str]]:
        local = self.pool.local
        missing: list[str] = []
        prefill: list[api.PrefillCluster] = []
        decode: list[api.DecodeCluster] = []
        for cname in spec.clusters.prefill:
            obj = await local.get(KINDS["PrefillCluster"], None, cname)
            if obj is None:
                missing.append(f"PrefillCluster/{cname}")
            else:
                prefill.append(api.PrefillCluster.model_validate(_without_status(obj)))
        for cname in spec.clusters.decode:
            obj = await local.get(KINDS["DecodeCluster"], None, cname)
            if obj is None:
                missing.append(f"DecodeCluster/{cname}")
            else:
                decode.append(api.DecodeCluster.model_validate(_without_status(obj)))
        return prefill, decode, missing

    async def _links(self) -> list[api.InterDCLink]:
        out = []
        for obj in await self.pool.local.list_objects(KINDS["InterDCLink"]):
            body = {**_without_status(obj), "kind": "InterDCLink"}
            try:
                # With status when it parses: the planner prefers a measured bandwidth.
                out.append(api.InterDCLink.model_validate({**body, "status": obj.get("status")}))
                continue
            except ValidationError:
                pass
            try:
                out.append(api.InterDCLink.model_validate(body))
            except ValidationError as exc:
                log.warning(
                    "ignoring invalid InterDCLink %s: %s", obj.get("metadata", {}).get("name"), exc
                )
        return out

    async def _pod_monitor(self, client: ClusterClient) -> bool:
        if not self.settings.reconcile.detect_pod_monitor:
            return False
        if client.server not in self._serves_pod_monitor:
            self._serves_pod_monitor[client.server] = await client.serves(KINDS["PodMonitor"])
        return self._serves_pod_monitor[client.server]

    async def _prune_dropped_clusters(
        self,
        status: dict[str, Any],
        clusters: dict[str, Any],
        namespace: str,
        name: str,
    ) -> None:
        """Remove children from clusters the previous plan used and this one does not name."""
        before = {c.get("name") for c in (status.get("plan") or {}).get("clusters", [])}
        for cname in sorted(n for n in before - set(clusters) if n):
            for kind in ("PrefillCluster", "DecodeCluster"):
                obj = await self.pool.local.get(KINDS[kind], None, cname)
                if obj is None:
                    continue
                cspec = _cluster_spec(kind, obj)
                try:
                    client = await self.pool.client_for(cname, cspec.target)
                    await delete_children(client, cluster_selector(name, namespace, cname))
                except ApiError as exc:
                    log.warning(
                        "could not remove children of %s/%s from %s: %s",
                        namespace,
                        name,
                        cname,
                        exc,
                    )

    async def _report(
        self, body: dict[str, Any], outcome: Outcome, planned: Planned | None
    ) -> None:
        """Write the pass's status once (full condition list, the plan when there is a new one),
        post Events for what changed, count errors and publish the plan's metrics."""
        meta = body["metadata"]
        key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
        if outcome.unreachable:
            self.metrics.reconcile_errors.labels("ServingPlan", "Unreachable").inc()
        if outcome.errors:
            self.metrics.reconcile_errors.labels("ServingPlan", "ApiError").inc()
        old = body.get("status") or {}
        conditions, _ = merge_conditions(
            old.get("conditions") or [], summarize(outcome), self.clock()
        )
        new: dict[str, Any] = {
            "observedGeneration": outcome.generation,
            "conditions": conditions,
        }
        if planned is not None:
            plan = planned.plan
            new["plan"] = plan.to_dict()
            new["thresholdTokens"] = plan.threshold_tokens
            new["throughputRps"] = plan.throughput_rps
        wanted = outcome.children
        new["ready"] = f"{wanted - len(outcome.not_available)}/{wanted}"
        if planned is not None:
            new |= planned.scaling_status
        else:
            new |= self.scaler.status(key, _autoscaling(body))
        # A merge patch drops null fields, so compare with what the server keeps; otherwise a
        # plan with a null field (``predicted``) would be written again on every pass.
        if _without_nulls({k: old.get(k) for k in new}) != _without_nulls(new):
            await self.pool.local.patch(
                KINDS["ServingPlan"],
                meta.get("namespace"),
                meta["name"],
                {"status": new},
                subresource="status",
            )
            await self._post_events(body, old, new, outcome)
        if planned is not None:
            self.metrics.record_plan(key, planned.plan)

    async def _post_events(
        self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any], outcome: Outcome
    ) -> None:
        if "plan" in new and _plan_essence(old.get("plan")) != _plan_essence(new["plan"]):
            shape = ", ".join(
                f"{c['name']}/{c['role']}={c['instances']}×TP{c['tensorParallel']}"
                for c in new["plan"].get("clusters", [])
            )
            t = new["plan"].get("thresholdTokens")
            await self._event(
                body, "Normal", "Planned", f"t={'∞' if t is None else round(t)} tokens; {shape}"
            )
        old_types = {c["type"]: c for c in old.get("conditions") or []}
        for cond in new["conditions"]:
            was = old_types.get(cond["type"], {}).get("status")
            if cond["type"] in ("Stalled", "Degraded") and cond["status"] == "True" != was:
                await self._event(body, "Warning", cond["reason"], cond["message"])

    async def _mark_reachable(
        self, kind: ClusterKind, name: str, ok: bool, message: str, reason: str = "Unreachable"
    ) -> None:
        obj = await self.pool.local.get(KINDS[kind], None, name)
        if obj is None:
            return
        obj.setdefault("kind", kind)
        await self._write_cluster_status(
            obj,
            {"reachable": ok},
            [
                condition(
                    "Reachable",
                    "True" if ok else "False",
                    "Reachable" if ok else reason,
                    message,
                ),
            ],
        )

    async def _write_cluster_status(
        self, obj: dict[str, Any], fields: dict[str, Any], conds: list[dict[str, Any]]
    ) -> None:
        old = obj.get("status") or {}
        merged, _ = _merge_any(old.get("conditions") or [], conds, self.clock())
        new = {**fields, "conditions": merged}
        gen = obj.get("metadata", {}).get("generation")
        if gen is not None:
            new["observedGeneration"] = gen
        if {k: old.get(k) for k in new} == new:
            return
        kind = KINDS[obj.get("kind") or "DecodeCluster"]
        await self.pool.local.patch(
            kind, None, obj["metadata"]["name"], {"status": new}, subresource="status"
        )

    # ------------------------------------------------------------------------------------------
    # Autoscaling
    # ------------------------------------------------------------------------------------------

    async def autoscale_plan(self, namespace: str, name: str) -> bool:
        """One autoscaling step: when the plan's interval has passed, poll Prometheus, publish
        measured link bandwidth, and re-reconcile (which re-plans with what was observed).
        Returns whether Prometheus was polled. Prometheus down → a Warning Event and
        ``status.autoscaling.metricsAvailable: false``; the replicas in force stay."""
        body = await self.pool.local.get(KINDS["ServingPlan"], namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return False
        scaling = _autoscaling(body)
        key = f"{namespace}/{name}"
        if scaling is None or not scaling.enabled or not self.scaler.due(key, scaling):
            return False
        before = self.scaler.plans.get(key)
        had_error = before.error if before is not None else None
        obs = await self.scaler.poll(key, namespace, name, scaling)
        error = self.scaler.plans[key].error
        if error and error != had_error:
            log.warning("autoscaling %s: %s", key, error)
            await self._event(body, "Warning", "MetricsUnavailable", error)
        if obs is not None:
            for link, gbps in sorted(obs.link_gbps.items()):
                await self._publish_link(link, gbps)
            await self._calibrate(key, body)
        await self.reconcile_plan(namespace, name)
        return True

    async def _calibrate(self, key: str, body: dict[str, Any]) -> None:
        """Move the latency correction factors from the engines' own histograms; a Warning
        Event for every factor that moved by more than the settings' ``warn_change``."""
        try:
            spec = api.ServingPlanSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return
        plan = (body.get("status") or {}).get("plan")
        moves = self.scaler.calibrate(key, spec, plan)
        warn = self.scaler.plans[key].calibration.settings.warn_change
        for move in moves:
            if abs(move.change) > warn:
                log.warning("autoscaling %s: %s", key, move.message())
                await self._event(body, "Warning", "LatencyModelCorrected", move.message())

    async def _publish_link(self, name: str, gbps: float) -> None:
        obj = await self.pool.local.get(KINDS["InterDCLink"], None, name)
        if obj is None:
            return
        probing = ((obj.get("spec") or {}).get("probing") or {}).get("enabled", True)
        if not probing:
            return
        obj.setdefault("kind", "InterDCLink")
        fields = {"measuredGbps": round(gbps, 3), "lastProbe": format_time(self.clock())}
        old = obj.get("status") or {}
        await self._write_cluster_status(obj, fields, list(old.get("conditions") or []))
        await self.observe_link(name)

    # ------------------------------------------------------------------------------------------
    # Deletion
    # ------------------------------------------------------------------------------------------

    async def cleanup_plan(self, body: dict[str, Any]) -> list[str]:
        """Delete the plan's children in every cluster it can reach (the finalizer's work).

        Raises ``Unreachable`` while a cluster that still exists cannot be reached, so the
        finalizer stays and kopf retries; clusters whose objects are gone are skipped.
        """
        meta = body["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        # A pass that loaded the plan before its deletion may still be applying children: wait
        # for it under the plan's lock, or it re-creates what is deleted here. Passes that start
        # later see the deletionTimestamp and do nothing.
        async with self._locks.setdefault((namespace, name), asyncio.Lock()):
            deleted = await self._delete_plan_children(body, namespace, name)
        self.metrics.forget_plan(f"{namespace}/{name}")
        self.scaler.forget(f"{namespace}/{name}")
        self._locks.pop((namespace, name), None)
        return deleted

    async def _delete_plan_children(
        self, body: dict[str, Any], namespace: str, name: str
    ) -> list[str]:
        selector = plan_selector(name, namespace)
        spec = body.get("spec") or {}
        refs = spec.get("clusters") or {}
        clients: dict[str, ClusterClient] = {self.pool.local.server: self.pool.local}
        for kind, names in (
            ("PrefillCluster", refs.get("prefill") or []),
            ("DecodeCluster", refs.get("decode") or []),
        ):
            for cname in names:
                obj = await self.pool.local.get(KINDS[kind], None, cname)
                if obj is None:
                    continue
                cspec = _cluster_spec(kind, obj)
                client = await self.pool.client_for(cname, cspec.target)
                clients[client.server] = client
        deleted: list[str] = []
        for client in clients.values():
            deleted += await delete_children(client, selector)
        return deleted

    # ------------------------------------------------------------------------------------------
    # Clusters and links
    # ------------------------------------------------------------------------------------------

    async def plans_using(self, cluster: str | None) -> list[tuple[str, str]]:
        """ServingPlans naming ``cluster`` (all plans when ``None``, e.g. for a link change)."""
        out = []
        for obj in await self.pool.local.list_objects(KINDS["ServingPlan"]):
            refs = (obj.get("spec") or {}).get("clusters") or {}
            names = set(refs.get("prefill") or []) | set(refs.get("decode") or [])
            if cluster is None or cluster in names:
                meta = obj["metadata"]
                out.append((meta.get("namespace") or "default", meta["name"]))
        return out

    async def probe_cluster(self, kind: ClusterKind, name: str) -> bool | None:
        """Refresh a cluster's status: reachable, allocatable GPUs (nodes matching its
        nodeSelector). Returns reachability, or ``None`` if the object is gone or invalid."""
        with self.metrics.time_reconcile(kind):
            obj = await self.pool.local.get(KINDS[kind], None, name)
            if obj is None:
                return None
            obj.setdefault("kind", kind)
            try:
                cspec = _cluster_spec(kind, obj)
            except ValidationError as exc:
                await self._write_cluster_status(
                    obj,
                    {"reachable": None},
                    [condition("Reachable", "Unknown", "InvalidSpec", _first_error(exc))],
                )
                return None
            try:
                client = await self.pool.client_for(name, cspec.target)
                nodes = await client.list_objects(KINDS["Node"])
            except ApiError as exc:
                await self._write_cluster_status(
                    obj,
                    {"reachable": False},
                    [condition("Reachable", "False", exc.reason, str(exc))],
                )
                return False
            # Re-discover optional CRDs (PodMonitor) of this server on the next plan pass.
            self._serves_pod_monitor.pop(client.server, None)
            gpus = _allocatable(
                nodes, cspec.accelerator.resource_name, cspec.scheduling.node_selector
            )
            await self._write_cluster_status(
                obj,
                {"reachable": True, "allocatableGPUs": gpus},
                [
                    condition(
                        "Reachable",
                        "True",
                        "Reachable",
                        f"{len(nodes)} nodes, {gpus} allocatable GPUs",
                    )
                ],
            )
            return True

    async def observe_link(self, name: str) -> None:
        """Refresh a link's status: provisioned vs measured bandwidth in its condition."""
        with self.metrics.time_reconcile("InterDCLink"):
            obj = await self.pool.local.get(KINDS["InterDCLink"], None, name)
            if obj is None:
                return
            obj.setdefault("kind", "InterDCLink")
            try:
                link = api.InterDCLink.model_validate(_without_status(obj))
            except ValidationError as exc:
                await self._write_cluster_status(
                    obj, {}, [condition("Ready", "False", "InvalidSpec", _first_error(exc))]
                )
                return
            measured = (obj.get("status") or {}).get("measuredGbps")
            msg = f"provisioned {link.spec.bandwidth_gbps:g} Gbps"
            msg += f", measured {measured:g} Gbps" if measured is not None else ", not measured"
            await self._write_cluster_status(
                obj,
                {},
                [
                    condition(
                        "Ready",
                        "True" if link.spec.bandwidth_gbps > 0 else "False",
                        "Provisioned" if link.spec.bandwidth_gbps > 0 else "NoBandwidth",
                        msg,
                    )
                ],
            )


def _autoscaling(body: dict[str, Any]) -> api.Autoscaling | None:
    try:
        return api.Autoscaling.model_validate((body.get("spec") or {}).get("autoscaling") or {})
    except ValidationError:
        return None


def _cluster_spec(kind: str, obj: dict[str, Any]) -> api.PrefillClusterSpec | api.DecodeClusterSpec:
    body = {**_without_status(obj), "kind": kind}
    if kind == "PrefillCluster":
        return api.PrefillCluster.model_validate(body).spec
    return api.DecodeCluster.model_validate(body).spec


def _without_status(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    out.setdefault("apiVersion", api.API_VERSION)
    return out


def _without_nulls(value: Any) -> Any:
    """``value`` as stored after a JSON merge patch: dict entries that are ``None`` removed at
    every depth (lists are replaced whole, so their items stay as they are)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _plan_essence(plan: dict[str, Any] | None) -> Any:
    if not plan:
        return None
    return (
        plan.get("thresholdTokens"),
        [
            (
                c.get("name"),
                c.get("role"),
                c.get("instances"),
                c.get("tensorParallel"),
                c.get("pipelineParallel"),
            )
            for c in plan.get("clusters", [])
        ],
    )


def _merge_any(
    existing: list[dict[str, Any]], new: list[dict[str, Any]], now: _dt.datetime
) -> tuple[list[dict[str, Any]], bool]:
    current = copy.deepcopy(existing)
    changed = False
    for cond in new:
        changed |= set_condition(current, cond, now)
    return current, changed


def _allocatable(nodes: list[dict[str, Any]], resource: str, selector: dict[str, str]) -> int:
    total = 0
    for node in nodes:
        labels = node.get("metadata", {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        raw = ((node.get("status") or {}).get("allocatable") or {}).get(resource, "0")
        try:
            total += int(str(raw))
        except ValueError:
            continue
    return total
