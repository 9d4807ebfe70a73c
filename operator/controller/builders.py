"""Pure builders: a ``Plan`` plus the specs it was made from → the child manifests, as dicts.

Nothing here talks to an API server or reads a clock, so every manifest can be checked against
golden files and Kubernetes' own schemas. Per plan, for each cluster the plan uses:

- per role with instances > 0, a ``Deployment`` of vLLM engines (a ``LeaderWorkerSet`` when one
  instance needs more GPUs than a node has) whose command line and environment come from
  ``prfaas.engine.vllm.launch`` (the one place engine flags are spelled), and a headless
  ``Service``; an aggregated decode row is ONE Deployment ``<plan>-<cluster>-aggregated`` of
  chunked-prefill ``kv_both`` engines whose ``--max-num-batched-tokens`` is the plan's token
  budget, the router's local decode pool (``pool_role``);
- per decode cluster, the router: ``ServiceAccount``, ``Role`` and ``RoleBinding`` (read
  EndpointSlices in its namespace), ``ConfigMap`` (``prfaas.engine.router.config``'s file, so
  the router reads exactly what is written), ``Deployment`` and ``Service``;
- optionally a ``PodMonitor`` (when the cluster serves ``monitoring.coreos.com/v1``).

Engines leave by draining (scale-down, role change, roll, node drain): each engine pod's preStop
runs ``prfaas.engine.vllm.drain``, which waits ``DRAIN_SETTLE_S`` and then until vLLM's own
metrics show no running or waiting request, at most ``engine_drain(spec).max_wait_s`` (the TTFT
SLO plus the P99 output length at the TPOT SLO, plus 25 %, plus the settle time);
``terminationGracePeriodSeconds`` is that bound plus ``DRAIN_EXIT_S``. When the bound is
exceeded the hook gives up (exit 1: the kubelet records a ``FailedPreStopHook`` event), vLLM gets
SIGTERM and aborts what it still holds, so those requests are cut off (a stream broken mid-way
gets the router's in-band error event), and the kubelet kills the container ``DRAIN_EXIT_S``
later if it has not exited.

Every child carries ``prfaas.io/plan``, ``prfaas.io/plan-namespace``, ``prfaas.io/cluster`` and
``prfaas.io/role``; the apply layer owns only objects with these labels.

Cross-cluster addressing: engines in the same Kubernetes cluster as the router are reached at
``<svc>.<ns>.svc.cluster.local``; engines in another cluster at ``<svc>.<ns>.svc.clusterset.local``
(the Multi-Cluster Services API domain), which a multi-cluster DNS (Submariner, Cilium
ClusterMesh, GKE MCS…) must serve. KV itself moves pod to pod (NIXL over UCX TCP, handshake on
the pod IP), so pod IPs must be routable between the datacenters (VPC peering, a flat network).
The router follows the pods of the pools in its own namespace of its own cluster through their
Services' EndpointSlices (``prfaas.engine.router.discovery``: its own ServiceAccount and a Role
reading EndpointSlices there, built here), so its prefix-cache affinity, load choice and circuit
breaking act per pod; pools in other clusters stay at their Service URL (one instance each to
the router), since following them would need the remote kubeconfig in the router.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prfaas.engine.router.config import (
    CONFIGMAP_KEY,
    DiscoveredPool,
    DiscoverySettings,
    RouterConfig,
    dump_router_config,
    router_config_from_plan,
)
from prfaas.engine.vllm.drain import drain_bound_seconds, prestop_command
from prfaas.engine.vllm.launch import EngineLaunch, vllm_argv, vllm_env
from prfaas.operator.api import models as api
from prfaas.operator.api.labels import (
    LABEL_CLUSTER,
    LABEL_PLAN,
    LABEL_PLAN_NAMESPACE,
    LABEL_ROLE,
    MANAGED_BY,
    child_name,
    label_value,
)
from prfaas.operator.api.translate import TranslateError, distribution, model_from_spec
from prfaas.planner.plan import ClusterPlan, ConvertiblePool, Plan

__all__ = [
    "DRAIN_EXIT_S",
    "DRAIN_SETTLE_S",
    "ENGINE_PORT",
    "ROUTER_CACHE_DIR",
    "SIDE_CHANNEL_PORT",
    "BuildError",
    "ClusterTarget",
    "EngineDrain",
    "PlanInputs",
    "build_children",
    "check_engine_policy",
    "child_labels",
    "convertible_pools",
    "engine_drain",
    "engine_launch",
    "max_model_len",
    "pool_role",
    "router_config_map",
    "router_config_text",
    "router_deployment",
    "router_resources",
    "router_role",
    "router_role_binding",
    "router_service",
    "router_service_account",
]

ENGINE_PORT = 8000
SIDE_CHANNEL_PORT = 5600
_ROUTER_CONFIG_DIR = "/etc/prfaas"

DRAIN_SETTLE_S = 10
"""Seconds the preStop waits before polling, so routers and kube-proxy see the pod leave."""
DRAIN_EXIT_S = 30
"""Seconds the grace period leaves vLLM after the preStop, between SIGTERM and SIGKILL."""

ChildRole = Literal["prefill", "decode", "both", "aggregated", "router"]
"""``both``: the one Deployment of a convertible pool (``convertible_pools``); ``aggregated``:
the one Deployment of an aggregated pool (``pool_role``)."""


class BuildError(ValueError):
    """The plan and the specs do not fit together (e.g. a planned cluster has no spec)."""


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """One PrefillCluster/DecodeCluster as the builders need it."""

    name: str
    kind: Literal["PrefillCluster", "DecodeCluster"]
    spec: api.PrefillClusterSpec | api.DecodeClusterSpec
    api_server: str = "local"
    """Which API server the cluster lives in: ``local`` or the kubeconfig Secret's key. Used only
    to tell same-server from cross-server addresses."""
    pod_monitor: bool = False
    """Whether that API server serves ``monitoring.coreos.com/v1`` PodMonitors."""


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """Everything the builders read: the ServingPlan's identity and spec, the clusters, the plan."""

    name: str
    namespace: str
    spec: api.ServingPlanSpec
    plan: Plan
    clusters: Mapping[str, ClusterTarget]
    router_image: str = "ghcr.io/prfaas/prfaas-router:0.1.0"
    extra_labels: Mapping[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Names and labels
# ----------------------------------------------------------------------------------------------


def child_labels(inputs: PlanInputs, cluster: str, role: ChildRole) -> dict[str, str]:
    """The labels every child of ``inputs`` in ``cluster`` with ``role`` carries."""
    return {
        **inputs.extra_labels,
        "app.kubernetes.io/name": "prfaas-router" if role == "router" else "prfaas-engine",
        "app.kubernetes.io/instance": label_value(inputs.name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_PLAN: label_value(inputs.name),
        LABEL_PLAN_NAMESPACE: label_value(inputs.namespace),
        LABEL_CLUSTER: label_value(cluster),
        LABEL_ROLE: role,
    }


def _selector(inputs: PlanInputs, cluster: str, role: ChildRole) -> dict[str, str]:
    labels = child_labels(inputs, cluster, role)
    return {k: labels[k] for k in (LABEL_PLAN, LABEL_PLAN_NAMESPACE, LABEL_CLUSTER, LABEL_ROLE)}


def _meta(inputs: PlanInputs, name: str, namespace: str, cluster: str, role: ChildRole) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "labels": child_labels(inputs, cluster, role),
        "annotations": {"prfaas.io/owner": f"{inputs.namespace}/{inputs.name}"},
    }


def _service_url(inputs: PlanInputs, target: ClusterTarget, role: str, seen_from: str) -> str:
    svc = child_name(inputs.name, target.name, role)
    domain = "cluster.local" if target.api_server == seen_from else "clusterset.local"
    return f"http://{svc}.{target.spec.target.namespace}.svc.{domain}:{ENGINE_PORT}"


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------


def pool_role(cp: ClusterPlan) -> ChildRole:
    """The role label and name suffix of ``cp``'s engines: ``aggregated`` for an aggregated
    decode row (``ClusterPlan.aggregated``), else the row's role."""
    return "aggregated" if cp.aggregated else cp.role


def convertible_pools(inputs: PlanInputs) -> dict[str, ConvertiblePool]:
    """The decode clusters run as ONE Deployment of ``kv_both`` engines, by cluster name: the
    plan's convertible pools (``Plan.convertible``: same accelerator, TP×PP and flags), where
    the connector is NIXL (vLLM's Mooncake connector has no ``kv_both``) and one instance fits
    a node (a multi-node LeaderWorkerSet keeps its separate roles). The split between the roles
    is then the router's assignment (its ConfigMap), so a re-plan that only moves the split
    changes no Deployment."""
    if inputs.spec.engine.connector != "NixlConnector":
        return {}
    out = {}
    for pool in inputs.plan.convertible():
        target = inputs.clusters.get(pool.decode_cluster)
        cp = next(
            (c for c in inputs.plan.clusters
             if c.name == pool.decode_cluster and c.role == "decode"),
            None,
        )
        if target is None or cp is None or cp.gpus_per_instance > target.spec.accelerator.per_node:
            continue
        out[pool.decode_cluster] = pool
    return out


def engine_launch(
    spec: api.ServingPlanSpec,
    cp: ClusterPlan,
    dtype_bytes: int | None = None,
    *,
    convertible: bool = False,
) -> EngineLaunch:
    """The engine description of one planned role (the shared vLLM flag source).

    ``dtype_bytes``: the plan's ``dtypeBytes``, pinned with ``--dtype`` so the engines keep the
    KV element size the plan's KV bytes per token (and the router's byte meter) assume.
    ``convertible``: ``cp`` is the decode row of a convertible pool, run as ``kv_both``. An
    aggregated row runs role ``aggregated``: chunked prefill within its token budget
    (``cp.max_num_batched_tokens``), KV from PrfaaS received as ``kv_both``.
    """
    return EngineLaunch(
        role="both" if convertible else ("aggregated" if cp.aggregated else cp.role),
        model=spec.model.source or spec.model.served_name,
        served_name=spec.model.served_name,
        port=ENGINE_PORT,
        tensor_parallel=cp.tensor_parallel,
        pipeline_parallel=cp.pipeline_parallel,
        connector=spec.engine.connector,
        device="cuda",
        side_channel_host=None,
        side_channel_port=SIDE_CHANNEL_PORT,
        block_size=spec.engine.block_size,
        # The plan's numbers, which the simulator used too (older plans: the spec's).
        max_num_seqs=cp.max_num_seqs
        or (spec.engine.max_batch_size if cp.role == "decode" or convertible else None),
        max_num_batched_tokens=cp.max_num_batched_tokens or spec.engine.max_num_batched_tokens,
        gpu_memory_utilization=cp.gpu_memory_utilization,
        dtype_bytes=dtype_bytes,
        extra_args=tuple(spec.engine.extra_args),
        extra_env=dict(spec.engine.env),
    )


def _engine_env(launch: EngineLaunch) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in sorted(vllm_env(launch).items())
    ]
    if launch.side_channel_host is None and launch.role != "monolithic":
        # The NIXL handshake address peers dial: this pod's own IP.
        env.append(
            {
                "name": "VLLM_NIXL_SIDE_CHANNEL_HOST",
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            }
        )
    return env


def _scheduling(target: ClusterTarget) -> dict[str, Any]:
    sched = target.spec.scheduling
    out: dict[str, Any] = {}
    if sched.node_selector:
        out["nodeSelector"] = dict(sorted(sched.node_selector.items()))
    if sched.tolerations:
        out["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in sched.tolerations
        ]
    return out


def check_engine_policy(spec: api.ServingPlanSpec, target: ClusterTarget) -> None:
    """``BuildError`` naming the field when the plan's engine image, flags or env are outside
    the cluster's ``enginePolicy`` (the admin's allow-lists for tenants' plans)."""
    policy = target.spec.engine_policy
    where = f"{target.kind} {target.name!r} spec.enginePolicy"
    eng = spec.engine
    images = policy.allowed_images
    if images is not None and not any(
        eng.image.startswith(a[:-1]) if a.endswith("*") else eng.image == a for a in images
    ):
        raise BuildError(
            f"spec.engine.image {eng.image!r} is not allowed in {where}.allowedImages "
            f"({', '.join(images) or 'none'}); use one of those or ask the cluster's admin"
        )
    if policy.allowed_args is not None:
        flags = [a.split("=", 1)[0] for a in eng.extra_args if a.startswith("-")]
        bad = [f for f in flags if f not in policy.allowed_args]
        if bad:
            raise BuildError(
                f"spec.engine.extraArgs {bad} are not allowed in {where}.allowedArgs "
                f"({', '.join(policy.allowed_args) or 'none'})"
            )
    if policy.allowed_env is not None:
        bad = sorted(k for k in eng.env if k not in policy.allowed_env)
        if bad:
            raise BuildError(
                f"spec.engine.env {bad} are not allowed in {where}.allowedEnv "
                f"({', '.join(policy.allowed_env) or 'none'})"
            )


@dataclass(frozen=True, slots=True)
class EngineDrain:
    """How long an engine pod may take to leave (``engine_drain``)."""

    max_wait_s: int
    """The preStop's bound, from its start: ``DRAIN_SETTLE_S`` plus the drain bound."""
    grace_s: int
    """``terminationGracePeriodSeconds``: ``max_wait_s + DRAIN_EXIT_S``."""


def engine_drain(spec: api.ServingPlanSpec) -> EngineDrain:
    """The drain bound of ``spec``'s engines: TTFT SLO + P99 output length × TPOT SLO, plus 25 %
    (``prfaas.engine.vllm.drain.drain_bound_seconds``), after the settle time.

    When an engine still holds requests at the bound, the preStop gives up (a
    ``FailedPreStopHook`` event), vLLM gets SIGTERM and aborts them; past ``grace_s`` the kubelet
    kills the container."""
    bound = drain_bound_seconds(
        api.duration_seconds(spec.slo.ttft),
        api.duration_seconds(spec.slo.tpot),
        distribution(spec.workload.output_length).quantile(0.99),
    )
    max_wait = DRAIN_SETTLE_S + bound
    return EngineDrain(max_wait_s=max_wait, grace_s=max_wait + DRAIN_EXIT_S)


def _engine_container(
    launch: EngineLaunch,
    image: str,
    gpus: int,
    resource_name: str,
    *,
    argv: list[str],
    drain: EngineDrain,
) -> dict[str, Any]:
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "name": "engine",
        "image": image,
        "command": argv[:3],
        "args": argv[3:],
        "env": _engine_env(launch),
        "ports": [
            {"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"},
            {"name": "nixl", "containerPort": SIDE_CHANNEL_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": {resource_name: str(gpus)},
            "limits": {resource_name: str(gpus)},
        },
        # Loading weights takes minutes: the startup probe allows 30 min before liveness starts.
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4},
        # The endpoint turns terminating as the preStop starts: routers stop choosing the pod,
        # and the hook waits until vLLM holds no request (at most drain.max_wait_s).
        "lifecycle": {
            "preStop": {
                "exec": {
                    "command": prestop_command(
                        drain.max_wait_s, settle_s=DRAIN_SETTLE_S, port=ENGINE_PORT
                    )
                }
            }
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        # The restricted profile minus runAsNonRoot: stock vLLM images run as root (their
        # caches live under /root); no privilege escalation, no capabilities beyond the
        # cluster's enginePolicy.addCapabilities (IPC_LOCK for RDMA, say).
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_spec(
    target: ClusterTarget, container: dict[str, Any], drain: EngineDrain
) -> dict[str, Any]:
    caps = target.spec.engine_policy.add_capabilities
    if caps:
        container["securityContext"]["capabilities"]["add"] = sorted(caps)
    return {
        **_scheduling(target),
        # Engines never talk to the API server: no token in their pods.
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": drain.grace_s,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}],
    }


def _engine_workload(
    inputs: PlanInputs,
    target: ClusterTarget,
    cp: ClusterPlan,
    pool: ConvertiblePool | None = None,
) -> dict[str, Any]:
    """One role's engines; with ``pool`` (``cp`` is its decode row), the whole convertible pool
    as ``kv_both`` engines: ``pool.instances`` replicas whose template does not depend on the
    split, so moving the split rolls nothing."""
    spec = inputs.spec
    check_engine_policy(spec, target)
    ns = target.spec.target.namespace
    role: ChildRole = "both" if pool is not None else pool_role(cp)
    name = child_name(inputs.name, target.name, role)
    meta = _meta(inputs, name, ns, target.name, role)
    meta["annotations"]["prfaas.io/tensor-parallel"] = str(cp.tensor_parallel)
    meta["annotations"]["prfaas.io/pipeline-parallel"] = str(cp.pipeline_parallel)
    acc = target.spec.accelerator
    launch = engine_launch(spec, cp, inputs.plan.dtype_bytes, convertible=pool is not None)
    drain = engine_drain(spec)
    gpus = cp.gpus_per_instance
    pod_labels = child_labels(inputs, target.name, role)
    if gpus <= acc.per_node:
        container = _engine_container(
            launch, spec.engine.image, gpus, acc.resource_name, argv=vllm_argv(launch), drain=drain
        )
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": pool.instances if pool is not None else cp.instances,
                "selector": {"matchLabels": _selector(inputs, target.name, role)},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
                },
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": _pod_spec(target, container, drain),
                },
            },
        }
    return _leader_worker_set(inputs, target, cp, launch, meta, pod_labels, drain)


def _leader_worker_set(
    inputs: PlanInputs,
    target: ClusterTarget,
    cp: ClusterPlan,
    launch: EngineLaunch,
    meta: dict[str, Any],
    pod_labels: dict[str, str],
    drain: EngineDrain,
) -> dict[str, Any]:
    """One instance spans ``ceil(gpus / perNode)`` nodes: a Ray head (leader) plus workers."""
    acc = target.spec.accelerator
    size = math.ceil(cp.gpus_per_instance / acc.per_node)
    argv = [*vllm_argv(launch), "--distributed-executor-backend", "ray"]
    leader_cmd = "ray start --head --port=6379 && exec " + " ".join(_sh_quote(a) for a in argv)
    leader = _engine_container(
        launch,
        inputs.spec.engine.image,
        acc.per_node,
        acc.resource_name,
        argv=["sh", "-c", leader_cmd],
        drain=drain,
    )
    leader["command"], leader["args"] = ["sh", "-c"], [leader_cmd]
    worker = {
        **_engine_container(
            launch,
            inputs.spec.engine.image,
            acc.per_node,
            acc.resource_name,
            argv=["sh", "-c", ""],
            drain=drain,
        ),
        "command": ["sh", "-c"],
        "args": ["ray start --address=$(LWS_LEADER_ADDRESS):6379 --block"],
    }
    for key in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
        worker.pop(key, None)
    worker["ports"] = [p for p in worker["ports"] if p["name"] == "nixl"]
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": cp.instances,
            "leaderWorkerTemplate": {
                "size": size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": pod_labels},
                    "spec": _pod_spec(target, leader, drain),
                },
                "workerTemplate": {
                    "metadata": {"labels": pod_labels},
                    "spec": _pod_spec(target, worker, drain),
                },
            },
        },
    }


def _sh_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _engine_service(inputs: PlanInputs, target: ClusterTarget, role: ChildRole) -> dict[str, Any]:
    name = child_name(inputs.name, target.name, role)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(inputs, name, target.spec.target.namespace, target.name, role),
        "spec": {
            # A ClusterIP Service: the router keeps a pool of connections to it, which kube-proxy
            # spreads over the ready engines. (NIXL's handshake does not use the Service: peers
            # dial the pod IP the engine publishes in ``kv_transfer_params``.)
            "selector": _selector(inputs, target.name, role),
            "ports": [
                {"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }


def _pod_monitor(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    name = child_name(inputs.name, target.name, "metrics")
    labels = child_labels(inputs, target.name, "decode")
    del labels[LABEL_ROLE]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {
            **_meta(inputs, name, target.spec.target.namespace, target.name, "decode"),
            "labels": {**labels, LABEL_ROLE: "metrics"},
        },
        "spec": {
            "selector": {
                "matchLabels": {
                    LABEL_PLAN: label_value(inputs.name),
                    LABEL_PLAN_NAMESPACE: label_value(inputs.namespace),
                    LABEL_CLUSTER: label_value(target.name),
                }
            },
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            # prfaas_io_plan / prfaas_io_plan_namespace on every series: the autoscaler's
            # queries select one plan's routers by them; cluster and role group the
            # dashboards' per-pool panels and the engine-down alert.
            "podTargetLabels": [LABEL_PLAN, LABEL_PLAN_NAMESPACE, LABEL_CLUSTER, LABEL_ROLE],
        },
    }


# ----------------------------------------------------------------------------------------------
# Router
# ----------------------------------------------------------------------------------------------


def max_model_len(spec: api.ServingPlanSpec) -> int:
    """The context the engines serve: ``--max-model-len`` from ``engine.extraArgs`` when set
    there, else the model's ``maxContext``. The router refuses longer requests up front, and
    bounds request bodies by it, so it must always know it."""
    arg = spec.engine.max_model_len_arg()
    return arg if arg is not None else model_from_spec(spec.model).max_context


def _router_name(inputs: PlanInputs, target: ClusterTarget) -> str:
    return child_name(inputs.name, target.name, "router")


def _router_meta(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    name = _router_name(inputs, target)
    return _meta(inputs, name, target.spec.target.namespace, target.name, "router")


def _router_exposure(target: ClusterTarget) -> api.RouterExposure:
    assert isinstance(target.spec, api.DecodeClusterSpec)
    return target.spec.router


def router_config_text(
    inputs: PlanInputs, target: ClusterTarget, *, split: bool = True
) -> str:
    """The router's config file for decode cluster ``target``: every pool the plan runs, at the
    Service URL the router reaches it by (see the module docstring on addressing). A
    convertible pool is one discovered pool of role ``convertible`` whose ``prefill`` count is
    the plan's split (``split=False``: 0, the text the router's pods are hashed by, so that a
    new split reaches the running routers by a reload, not a roll)."""
    endpoints: dict[str, dict[Literal["prefill", "decode"], list[str]]] = {}
    pools = convertible_pools(inputs)
    own = pools.get(target.name)
    assignment: dict[str, Literal["prefill", "decode"]] | None = None
    if own is not None:
        # Until the first EndpointSlice list: the pool's Service, in role decode.
        assignment = {_service_url(inputs, target, "both", seen_from=target.api_server): "decode"}
    for cp in inputs.plan.clusters:
        if cp.instances <= 0 or cp.name in pools:
            continue
        other = inputs.clusters[cp.name]
        endpoints.setdefault(cp.name, {})[cp.role] = [
            _service_url(inputs, other, pool_role(cp), seen_from=target.api_server)
        ]
    try:
        cfg = router_config_from_plan(
            inputs.plan,
            endpoints,
            decode_cluster=target.name,
            model=inputs.spec.model.served_name,
            tokenizer=inputs.spec.model.source or None,
            block_size=inputs.spec.engine.block_size,
            max_model_len=max_model_len(inputs.spec),
            decode_batch=inputs.spec.engine.max_batch_size,
            assignment=assignment,
        )
    except (ValueError, TranslateError) as exc:
        raise BuildError(f"router for {target.name!r}: {exc}") from exc
    discovered = _discovered_pools(inputs, target, cfg)
    if own is not None:
        discovered.append(
            DiscoveredPool(
                datacenter=cfg.local_datacenter,
                role="convertible",
                prefill=own.prefill if split else 0,
                service=child_name(inputs.name, target.name, "both"),
                port=ENGINE_PORT,
            )
        )
    if discovered:
        settings = DiscoverySettings(namespace=target.spec.target.namespace, pools=discovered)
        cfg = cfg.model_copy(update={"discovery": settings})
    return dump_router_config(cfg)


def _discovered_pools(
    inputs: PlanInputs, target: ClusterTarget, cfg: RouterConfig
) -> list[DiscoveredPool]:
    """The pools the router follows per pod: those in its own namespace of its own cluster
    (its Role reads EndpointSlices there only; other clusters stay at their Service URL, so
    no remote credentials reach the router)."""
    pools = []
    convertible = convertible_pools(inputs)
    for cp in inputs.plan.clusters:
        other = inputs.clusters[cp.name]
        if (
            cp.name in convertible
            or cp.instances <= 0
            or other.api_server != target.api_server
            or other.spec.target.namespace != target.spec.target.namespace
        ):
            continue
        url = _service_url(inputs, other, pool_role(cp), seen_from=target.api_server)
        for dc, eps in cfg.datacenters.items():
            if url in getattr(eps, cp.role):
                service = child_name(inputs.name, cp.name, pool_role(cp))
                pools.append(
                    DiscoveredPool(datacenter=dc, role=cp.role, service=service, port=ENGINE_PORT)
                )
    return pools


def router_service_account(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    """The router's identity (its pods mount its token to watch EndpointSlices)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _router_meta(inputs, target)}


def router_role(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    """Least privilege for discovery: read EndpointSlices in the router's namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _router_meta(inputs, target),
        "rules": [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def router_role_binding(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    """Binds ``router_role`` to ``router_service_account``."""
    name = _router_name(inputs, target)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _router_meta(inputs, target),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": name, "namespace": target.spec.target.namespace}
        ],
    }


def router_config_map(inputs: PlanInputs, target: ClusterTarget, text: str) -> dict[str, Any]:
    """The ``ConfigMap`` holding ``text`` (from ``router_config_text``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _router_meta(inputs, target),
        "data": {CONFIGMAP_KEY: text},
    }


ROUTER_CACHE_DIR = "/var/cache/prfaas"
"""The router pod's writable cache (an emptyDir): the tokenizer named by ``spec.model.source``
is downloaded here at start (``HF_HOME``); the root filesystem stays read-only."""
_ROUTER_PASSED_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN")
"""``engine.env`` entries the router needs too, to fetch the same (gated) tokenizer."""


def _router_env(inputs: PlanInputs) -> list[dict[str, str]]:
    env = {
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "XDG_CACHE_HOME": ROUTER_CACHE_DIR,
        "HF_HOME": f"{ROUTER_CACHE_DIR}/huggingface",
    }
    env |= {k: v for k, v in inputs.spec.engine.env.items() if k in _ROUTER_PASSED_ENV}
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


ROUTER_BYTES_PER_MODELLED_BLOCK = 192
"""What the router's model of an engine's prefix cache costs per block it holds: an LRU entry
and its 64-bit hash, 163 bytes measured (CPython 3.11), with a margin."""
_ROUTER_BASE_MIB = (1024, 2048)
"""The router's memory (request, limit) before its prefix-cache models: tokenizer, buffers."""


def _router_modelled_blocks(inputs: PlanInputs, target: ClusterTarget) -> int:
    """Blocks the router for ``target`` models once every engine's cache is full: per engine it
    routes to (its decode cluster's, its remote prefill clusters'), the engine's KV memory in
    blocks, as ``router_config_from_plan`` gives it (``cacheBlocks``)."""
    rplan = next((r for r in inputs.plan.routers if r.decode_cluster == target.name), None)
    if rplan is None:
        return 0
    routed = {target.name} | {r.prefill_cluster for r in rplan.remotes}
    block = inputs.spec.engine.block_size
    return sum(
        cp.instances * (cp.kv_cache_tokens // block)
        for cp in inputs.plan.clusters
        if cp.name in routed and cp.instances > 0 and cp.kv_cache_tokens
    )


def router_resources(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    """The router container's resources: a base, plus its prefix-cache models at full size
    (``ROUTER_BYTES_PER_MODELLED_BLOCK`` per block), so that a router whose model of each engine
    is as large as that engine's KV memory is scheduled with, and never killed for, it."""
    extra = -(-_router_modelled_blocks(inputs, target) * ROUTER_BYTES_PER_MODELLED_BLOCK
              // (1 << 20))
    request, limit = (base + extra for base in _ROUTER_BASE_MIB)
    return {"requests": {"cpu": "1", "memory": f"{request}Mi"},
            "limits": {"memory": f"{limit}Mi"}}


def _router_container(inputs: PlanInputs, target: ClusterTarget, port: int) -> dict[str, Any]:
    return {
        "name": "router",
        "image": inputs.router_image,
        "command": [
            "prfaas",
            "router",
            "--config",
            f"{_ROUTER_CONFIG_DIR}/{CONFIGMAP_KEY}",
            "--port",
            str(port),
        ],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 15},
        # The tokenizer is loaded (maybe downloaded) before the port opens: up to 10 min.
        "startupProbe": {
            "httpGet": {"path": "/livez", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "env": _router_env(inputs),
        "resources": router_resources(inputs, target),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": _ROUTER_CONFIG_DIR, "readOnly": True},
            {"name": "cache", "mountPath": ROUTER_CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def router_deployment(inputs: PlanInputs, target: ClusterTarget, text: str) -> dict[str, Any]:
    """The router ``Deployment``; its pods carry the hash of ``text``, so a new config rolls
    them (they also reload the mounted file in place). Pass the text without the convertible
    split (``router_config_text(split=False)``): a new role split is reloaded, never rolled."""
    exposure = _router_exposure(target)
    name = _router_name(inputs, target)
    config_hash = hashlib.sha256(text.encode()).hexdigest()[:8]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _router_meta(inputs, target),
        "spec": {
            "replicas": exposure.replicas,
            "selector": {"matchLabels": _selector(inputs, target.name, "router")},
            "template": {
                "metadata": {
                    "labels": child_labels(inputs, target.name, "router"),
                    "annotations": {"prfaas.io/config-hash": config_hash},
                },
                "spec": {
                    **_scheduling_router(target),
                    "serviceAccountName": name,
                    "automountServiceAccountToken": True,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_router_container(inputs, target, exposure.port)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": name}},
                        {"name": "cache", "emptyDir": {"sizeLimit": "4Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }


def router_service(inputs: PlanInputs, target: ClusterTarget) -> dict[str, Any]:
    """The router ``Service`` (its type and port from the DecodeCluster's ``router``)."""
    exposure = _router_exposure(target)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _router_meta(inputs, target),
        "spec": {
            "type": exposure.service_type,
            "selector": _selector(inputs, target.name, "router"),
            "ports": [
                {"name": "http", "port": exposure.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def _scheduling_router(target: ClusterTarget) -> dict[str, Any]:
    # The router needs no GPU; it only tolerates the pool's taints so it may sit beside engines.
    out = _scheduling(target)
    out.pop("nodeSelector", None)
    return out


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def build_children(inputs: PlanInputs) -> dict[str, list[dict[str, Any]]]:
    """All children of one ServingPlan, grouped by cluster name (every used cluster present).

    Raises ``BuildError`` when the plan names a cluster that ``inputs.clusters`` lacks.
    """
    plan = inputs.plan
    if not plan.feasible:
        raise BuildError(f"the plan is not feasible: {plan.reason}")
    out: dict[str, list[dict[str, Any]]] = {}
    convertible = convertible_pools(inputs)
    for cp in plan.clusters:
        target = inputs.clusters.get(cp.name)
        if target is None:
            raise BuildError(f"the plan uses cluster {cp.name!r}, which has no spec")
        children = out.setdefault(cp.name, [])
        if cp.instances <= 0:
            continue
        pool = convertible.get(cp.name)
        if pool is not None:  # the pool's one Deployment, built at its decode row
            if cp.role == "decode":
                children.append(_engine_workload(inputs, target, cp, pool))
                children.append(_engine_service(inputs, target, "both"))
            continue
        children.append(_engine_workload(inputs, target, cp))
        children.append(_engine_service(inputs, target, pool_role(cp)))
    for rp in plan.routers:
        target = inputs.clusters.get(rp.decode_cluster)
        if target is None or target.kind != "DecodeCluster":
            raise BuildError(f"the plan routes for {rp.decode_cluster!r}, not a DecodeCluster")
        text = router_config_text(inputs, target)
        out.setdefault(target.name, []).extend(
            [
                router_service_account(inputs, target),
                router_role(inputs, target),
                router_role_binding(inputs, target),
                router_config_map(inputs, target, text),
                router_deployment(
                    inputs, target, router_config_text(inputs, target, split=False)
                ),
                router_service(inputs, target),
            ]
        )
    for name, children in out.items():
        target = inputs.clusters[name]
        if target.pod_monitor and any(c["kind"] != "ConfigMap" for c in children):
            children.append(_pod_monitor(inputs, target))
    return out
