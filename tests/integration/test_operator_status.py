"""Status of the cluster and link objects, PodMonitors where served, and the server-side-apply
request shape the operator sends to real API servers."""

from __future__ import annotations

import kmock
from prfaas.operator.controller.clients import ClusterClient
from prfaas.operator.controller.reconcile import PlanRequest, default_planner
from prfaas.planner.plan import Plan

from .conftest import ALL_VERBS, World, case_study, find


def _node(name: str, gpus: int, pool: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"pool": pool}, "resourceVersion": "1"},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "96"}},
    }


async def test_cluster_and_link_status(world: World) -> None:
    for i in range(4):
        world.remote.objects[("v1/nodes", None, f"h200-{i}")] = _node(f"h200-{i}", 8, "h200")
    world.remote.objects[("v1/nodes", None, "cpu-0")] = _node("cpu-0", 0, "cpu")
    world.remote.objects[("v1/nodes", None, "other-0")] = _node("other-0", 8, "other")
    docs = case_study()
    docs["PrefillCluster"]["spec"]["scheduling"] = {"nodeSelector": {"pool": "h200"}}
    await world.start_operator()
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink"):
        await world.create(docs[kind])

    pfc = await world.until(
        lambda: (
            (o := world.get_cr("PrefillCluster", "prfaas-h200"))
            and (o.get("status") or {}).get("allocatableGPUs") is not None
            and o
        ),
        what="PrefillCluster status",
    )
    assert pfc["status"]["reachable"] is True
    assert pfc["status"]["allocatableGPUs"] == 32  # nodes matching the nodeSelector only
    assert pfc["status"]["observedGeneration"] == 1
    dcc = await world.until(
        lambda: (o := world.get_cr("DecodeCluster", "pd-h20")) and o.get("status") and o,
        what="DecodeCluster status",
    )
    assert dcc["status"]["allocatableGPUs"] == 0  # the local emulator has no nodes
    link = await world.until(
        lambda: (o := world.get_cr("InterDCLink", "dc-a-to-dc-b")) and o.get("status") and o,
        what="InterDCLink status",
    )
    ready = link["status"]["conditions"][0]
    assert ready["type"] == "Ready" and ready["status"] == "True"
    assert "provisioned 100 Gbps" in ready["message"]


async def test_pod_monitor_created_where_the_crd_is_served(world: World) -> None:
    world.local.resources["monitoring.coreos.com/v1/podmonitors"] = kmock.ResourceInfo(
        kind="PodMonitor", singular="podmonitor", verbs=ALL_VERBS, namespaced=True
    )
    await world.start_operator()
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(case_study()[kind])
    await world.until(
        lambda: world.children(world.local, "monitoring.coreos.com/v1/podmonitors"),
        what="a PodMonitor in the local cluster",
    )
    await world.until(lambda: world.children(world.remote), what="remote rollout")
    assert (
        find(
            world.remote,
            "monitoring.coreos.com/v1/podmonitors",
            "prefill",
            "hybrid-1t-prfaas-h200-metrics",
        )
        is None
    )


async def test_server_side_apply_request(kmock: kmock.KubernetesEmulator) -> None:
    kmock.resources["v1/configmaps"] = kmock.ResourceInfo(
        kind="ConfigMap", singular="configmap", verbs=ALL_VERBS, namespaced=True
    )
    kmock.objects[("v1/configmaps", "ns", "c")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "ns"},
    }
    client = ClusterClient(name="t", server=str(kmock.url).rstrip("/"), ssl_context=False)
    try:
        await client.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ns"},
                "data": {"k": "v"},
            },
            "prfaas",
        )
    finally:
        await client.close()
    req = next(iter(kmock["patch /api/v1/namespaces/ns/configmaps/c"]))
    assert req.headers["Content-Type"] == "application/apply-patch+yaml"
    assert req.params == {"fieldManager": "prfaas", "force": "true"}


async def test_multi_node_instances_need_leader_worker_sets(world: World) -> None:
    def wide_decode(request: PlanRequest) -> Plan:
        plan = default_planner(request)
        for cp in plan.clusters:
            if cp.role == "decode":
                cp.tensor_parallel, cp.instances = 16, 2  # 16 GPUs > 8 per node
        return plan

    await world.start_operator(planner=wide_decode)
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(case_study()[kind])
    degraded = await world.until(
        lambda: (c := world.condition("hybrid-1t", "Degraded")).get("status") == "True" and c,
        what="Degraded: no LeaderWorkerSet CRD",
    )
    assert "LeaderWorkerSet" in degraded["message"] and "pd-h20" in degraded["message"]

    world.local.resources["leaderworkerset.x-k8s.io/v1/leaderworkersets"] = kmock.ResourceInfo(
        kind="LeaderWorkerSet", singular="leaderworkerset", verbs=ALL_VERBS, namespaced=True
    )
    lws = await world.until(
        lambda: world.children(world.local, "leaderworkerset.x-k8s.io/v1/leaderworkersets"),
        what="the LeaderWorkerSet once the CRD is served",
    )
    spec = lws["hybrid-1t-pd-h20-decode"]["spec"]
    assert spec["replicas"] == 2 and spec["leaderWorkerTemplate"]["size"] == 2
    assert "hybrid-1t-pd-h20-decode" not in world.children(world.local)  # no Deployment too
