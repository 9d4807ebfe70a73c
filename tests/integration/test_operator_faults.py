"""Faults: an operator killed mid-reconcile, injected API errors, an unreachable cluster and a
rotated kubeconfig Secret. The state must converge, with no duplicates and nothing deleted."""

from __future__ import annotations

import asyncio
import base64

import kmock

from .conftest import OPERATOR_NS, SECRET, World, case_study, find, kubeconfig

EXPECTED_LOCAL = {"hybrid-1t-pd-h20-both", "hybrid-1t-pd-h20-router"}  # PD-P + PD-D: one pool
EXPECTED_REMOTE = {"hybrid-1t-prfaas-h200-prefill"}


async def _create_all(world: World) -> dict[str, dict]:
    docs = case_study()
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])
    return docs


def _posts(emulator: kmock.KubernetesEmulator, plural: str) -> int:
    return len([r for r in emulator["post"] if str(r.url.path).endswith(f"/{plural}")])


async def test_restart_mid_reconcile_creates_no_duplicates(world: World) -> None:
    # The remote API server stores the first Deployment but never answers: the pass hangs
    # there, after the local children and before the status write. Kill the operator then.
    hang: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
    world.remote["post /apis/apps/v1/namespaces/prefill/deployments"][:1] << hang
    await world.start_operator()
    await _create_all(world)
    await world.until(lambda: world.children(world.remote), what="the hanging remote create")
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    assert not (sp.get("status") or {}).get("plan")  # mid-reconcile: no status written yet
    await world.kill_operator()
    if not hang.done():  # the dropped connection usually cancelled it already
        hang.set_result({"message": "too late"})

    await world.start_operator()
    await world.until(
        lambda: (
            set(world.children(world.local)) == EXPECTED_LOCAL
            and set(world.children(world.remote)) == EXPECTED_REMOTE
        ),
        what="convergence after restart",
    )
    await world.until(
        lambda: world.condition("hybrid-1t", "Ready").get("reason") == "ReplicasUnavailable",
        what="status after restart",
    )
    # Every child exists once; the emulator refuses a second create (409), and the operator
    # never created one under another name.
    for emulator, want in ((world.local, EXPECTED_LOCAL), (world.remote, EXPECTED_REMOTE)):
        assert set(world.children(emulator)) == want
        for res in ("v1/services", "v1/configmaps"):
            names = list(world.children(emulator, res))
            assert len(names) == len(set(names))


async def test_injected_conflicts_and_server_errors_are_retried(world: World) -> None:
    deployments = "/apis/apps/v1/namespaces/default/deployments"
    remote_deps = "/apis/apps/v1/namespaces/prefill/deployments"
    # The first create answers 500 although the emulator stores the object (as a real API
    # server may after a timeout): the retry then meets 409 and must patch instead.
    world.local[f"post {deployments}"][:1] << 500 << {"message": "injected: etcd timeout"}
    world.remote[f"post {remote_deps}"][:2] << 503 << {"message": "injected: unavailable"}
    # The first status write of the plan conflicts.
    (
        world.local[
            "patch /apis/prfaas.io/v1alpha1/namespaces/default/servingplans/hybrid-1t/status"
        ][:1]
        << 409
        << {"message": "injected: the object has been modified"}
    )

    await world.start_operator()
    await _create_all(world)
    await world.until(
        lambda: (
            set(world.children(world.local)) == EXPECTED_LOCAL
            and set(world.children(world.remote)) == EXPECTED_REMOTE
        ),
        what="convergence despite injected errors",
    )
    await world.until(
        lambda: world.condition("hybrid-1t", "Ready").get("reason") == "ReplicasUnavailable",
        what="status despite the conflict",
    )
    for name in EXPECTED_LOCAL:
        await world.make_available(world.local, name, "default")
    for name in EXPECTED_REMOTE:
        await world.make_available(world.remote, name, "prefill")
    await world.until(
        lambda: world.condition("hybrid-1t", "Ready").get("status") == "True",
        what="Ready after the faults",
    )
    assert _posts(world.local, "deployments") >= 3  # 2 children + the retried one
    dep = find(world.local, "apps/v1/deployments", "default", "hybrid-1t-pd-h20-both")
    assert dep is not None and dep["spec"]["replicas"] == 8  # 3 PD-P + 5 PD-D, kv_both


async def test_unreachable_cluster_degrades_without_deleting_elsewhere(world: World) -> None:
    await world.start_operator()
    await _create_all(world)
    await world.until(
        lambda: (
            set(world.children(world.remote)) == EXPECTED_REMOTE
            and set(world.children(world.local)) == EXPECTED_LOCAL
        ),
        what="rollout",
    )

    # Point the Secret at a port nobody listens on: the remote cluster is now unreachable.
    secret = f"/api/v1/namespaces/{OPERATOR_NS}/secrets/{SECRET}"
    dead = base64.b64encode(kubeconfig("http://127.0.0.1:9").encode()).decode()
    resp = await world.local.patch(secret, json={"data": {"kubeconfig": dead}})
    assert resp.status < 300
    degraded = await world.until(
        lambda: (
            (c := world.condition("hybrid-1t", "Degraded")).get("status") == "True"
            and "prfaas-h200" in c.get("message", "")
            and c
        ),
        what="Degraded naming the cluster",
    )
    assert "unreachable" in degraded["message"]
    cluster = await world.until(
        lambda: (
            (world.get_cr("PrefillCluster", "prfaas-h200") or {}).get("status", {}).get("reachable")
            is False
            and world.get_cr("PrefillCluster", "prfaas-h200")
        ),
        what="the cluster's Reachable=False",
    )
    reach = next(c for c in cluster["status"]["conditions"] if c["type"] == "Reachable")
    assert reach["status"] == "False"
    assert set(world.children(world.local)) == EXPECTED_LOCAL
    assert set(world.children(world.remote)) == EXPECTED_REMOTE

    # Rotating the Secret back rebuilds the client, and the plan recovers.
    good = base64.b64encode(kubeconfig(str(world.remote.url)).encode()).decode()
    resp = await world.local.patch(secret, json={"data": {"kubeconfig": good}})
    assert resp.status < 300
    await world.until(
        lambda: world.condition("hybrid-1t", "Degraded").get("status") == "False",
        what="recovery after the Secret is fixed",
    )
