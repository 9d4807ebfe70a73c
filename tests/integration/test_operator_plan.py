"""The operator on two emulated clusters: the case study rolls out, follows edits, degrades and
stalls without deleting anything, and cleans up both clusters on deletion."""

from __future__ import annotations

import json

from prfaas.engine.router.config import parse_router_config

from .conftest import World, case_study

LOCAL_NS = "default"  # DecodeCluster pd-h20: target namespace default, this cluster
REMOTE_NS = "prefill"  # PrefillCluster prfaas-h200: namespace prefill, via the Secret


def _args(dep: dict) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def _flag(dep: dict, name: str) -> str:
    args = _args(dep)
    return args[args.index(name) + 1]


async def _apply_case_study(world: World, *, wait: bool = False) -> dict[str, dict]:
    docs = case_study()
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])
    if wait:
        await world.until(
            lambda: (
                len(world.children(world.local)) == 2  # the kv_both pool + the router
                and world.children(world.remote)
                and (world.get_cr("ServingPlan", "hybrid-1t", "default") or {})
                .get("status", {})
                .get("plan")
            ),
            what="the first rollout and its status",
        )
    return docs


def status_plan_rows(world: World) -> dict[str, int]:
    """pd-h20's planned instances by role, from ``status.plan``."""
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    clusters = (sp.get("status") or {}).get("plan", {}).get("clusters", [])
    return {c["role"]: c["instances"] for c in clusters if c["name"] == "pd-h20"}


def router_split(world: World) -> list[int | None]:
    """The prefill count of pd-h20's convertible pool in its router's ConfigMap."""
    cm = world.children(world.local, "v1/configmaps").get("hybrid-1t-pd-h20-router")
    if cm is None:
        return []
    cfg = parse_router_config(cm["data"]["router.yaml"])
    pools = cfg.discovery.pools if cfg.discovery else []
    return [p.prefill for p in pools if p.role == "convertible"]


async def test_case_study_rolls_out_to_both_clusters_and_becomes_ready(world: World) -> None:
    await world.start_operator()
    docs = await _apply_case_study(world)
    expected = world.planner(world.request_for(docs))

    remote = await world.until(lambda: world.children(world.remote), what="remote Deployments")
    local = await world.until(
        lambda: (d := world.children(world.local)) and len(d) == 2 and d, what="local Deployments"
    )
    assert set(remote) == {"hybrid-1t-prfaas-h200-prefill"}
    # PD-P and PD-D of pd-h20 share GPU, TP×PP and flags: ONE Deployment of kv_both engines.
    assert set(local) == {"hybrid-1t-pd-h20-both", "hybrid-1t-pd-h20-router"}
    (pool,) = expected.convertible()
    for cp in expected.clusters:
        emulator = world.remote if cp.name == "prfaas-h200" else world.local
        role = "both" if cp.name == pool.decode_cluster else cp.role
        dep = world.children(emulator)[f"hybrid-1t-{cp.name}-{role}"]
        assert dep["metadata"]["namespace"] == (REMOTE_NS if cp.name == "prfaas-h200" else LOCAL_NS)
        replicas = pool.instances if role == "both" else cp.instances
        assert dep["spec"]["replicas"] == replicas
        assert _flag(dep, "--tensor-parallel-size") == str(cp.tensor_parallel)
        kv = json.loads(_flag(dep, "--kv-transfer-config"))
        assert kv["kv_connector"] == "NixlConnector"
        kv_roles = {"prefill": "kv_producer", "decode": "kv_consumer", "both": "kv_both"}
        assert kv["kv_role"] == kv_roles[role]
        assert kv["kv_load_failure_policy"] == "recompute"
        gpu = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu == {"nvidia.com/gpu": "8"}
        labels = dep["metadata"]["labels"]
        assert labels["prfaas.io/cluster"] == cp.name and labels["prfaas.io/role"] == role
    # Same-cluster children are owned by the ServingPlan; remote ones cannot be.
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default")
    assert sp is not None
    owner = local["hybrid-1t-pd-h20-both"]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == sp["metadata"]["uid"] and owner["kind"] == "ServingPlan"
    assert "ownerReferences" not in remote["hybrid-1t-prfaas-h200-prefill"]["metadata"]

    # The router's ConfigMap is exactly what the router parses: t and both datacenters.
    cms = world.children(world.local, "v1/configmaps")
    cfg = parse_router_config(cms["hybrid-1t-pd-h20-router"]["data"]["router.yaml"])
    assert cfg.threshold_tokens == expected.threshold_tokens
    assert cfg.local_datacenter == "dc-b" and cfg.remote_datacenters == ["dc-a"]
    assert cfg.links["dc-a"].capacity_gbps == 100
    # The pool's roles: the router follows its pods and gives the plan's PD-P count prefill.
    assert cfg.discovery is not None
    assert [(p.service, p.prefill) for p in cfg.discovery.pools if p.role == "convertible"] == [
        ("hybrid-1t-pd-h20-both", pool.prefill)
    ]

    # Not Ready while replicas are unavailable; Ready once every Deployment reports them.
    ready = await world.until(lambda: world.condition("hybrid-1t", "Ready"), what="Ready")
    assert ready["status"] == "False" and ready["reason"] == "ReplicasUnavailable"
    for name in local:
        await world.make_available(world.local, name, LOCAL_NS)
    for name in remote:
        await world.make_available(world.remote, name, REMOTE_NS)
    await world.until(
        lambda: world.condition("hybrid-1t", "Ready").get("status") == "True", what="Ready=True"
    )
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default")
    assert sp is not None
    status = sp["status"]
    assert status["observedGeneration"] == 1
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "Progressing",
        "Degraded",
        "Reconciling",
        "Stalled",
    ]
    assert all(c["lastTransitionTime"] for c in status["conditions"])
    assert status["plan"]["thresholdTokens"] == expected.threshold_tokens
    # The status shows the pool and its split (the router's initial assignment).
    assert status["plan"]["convertible"] == [
        {"decodeCluster": "pd-h20", "datacenter": "dc-b", "prefill": pool.prefill,
         "decode": pool.decode}
    ]
    # The remote cluster's status says it is reachable.
    pfc = world.get_cr("PrefillCluster", "prfaas-h200")
    assert pfc is not None and pfc["status"]["reachable"] is True
    # Kubernetes Events were posted about the plan.
    events = [r.data for r in world.local["post /api/v1/namespaces/default/events"]]
    assert any(e.get("reason") == "Planned" for e in events)


async def test_editing_the_slo_replans_and_observed_generation_follows(world: World) -> None:
    await world.start_operator()
    docs = await _apply_case_study(world, wait=True)
    before = status_plan_rows(world)

    await world.edit_spec(docs["ServingPlan"], {"slo": {"tpot": "12ms"}})
    docs["ServingPlan"]["spec"]["slo"]["tpot"] = "12ms"
    expected = world.planner(world.request_for(docs))
    want = expected.instances("pd-h20", "decode")
    want_prefill = expected.instances("pd-h20", "prefill")
    assert want != before.get("decode")  # the edit matters to the planner

    def pool_follows() -> bool:
        # With both roles planned: one kv_both Deployment of PD-P + PD-D, and the split in the
        # router's ConfigMap. Without local prefill (every prompt offloaded): PD-D alone.
        children = world.children(world.local)
        name = "hybrid-1t-pd-h20-both" if want_prefill else "hybrid-1t-pd-h20-decode"
        child = children.get(name)
        if child is None or child["spec"]["replicas"] != want + want_prefill:
            return False
        return not want_prefill or router_split(world) == [want_prefill]

    await world.until(pool_follows, what="the pool to follow the SLO")
    await world.until(
        lambda: (
            (world.get_cr("ServingPlan", "hybrid-1t", "default") or {})
            .get("status", {})
            .get("observedGeneration")
            == 2
        ),
        what="observedGeneration 2",
    )


async def test_pinned_instances_roll_out_and_the_status_says_so(world: World) -> None:
    await world.start_operator()
    docs = await _apply_case_study(world, wait=True)
    pins = [{"cluster": "pd-h20", "role": "decode", "instances": 6}]
    await world.edit_spec(docs["ServingPlan"], {"pins": pins})
    await world.until(
        lambda: (r := status_plan_rows(world)).get("decode") == 6
        and world.children(world.local)["hybrid-1t-pd-h20-both"]["spec"]["replicas"]
        == 6 + r.get("prefill", 0)
        and router_split(world) == [r.get("prefill", 0)],
        what="the pool to follow the pin (PD-D 6, PD-P in the router's split)",
    )

    def plan_rows() -> dict[tuple[str, str], dict]:
        sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
        clusters = sp.get("status", {}).get("plan", {}).get("clusters", [])
        return {(c["name"], c["role"]): c for c in clusters}

    rows = await world.until(
        lambda: (r := plan_rows()).get(("pd-h20", "decode"), {}).get("pinned") and r,
        what="status.plan to mark the pinned row",
    )
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    assert rows[("pd-h20", "decode")]["instances"] == 6
    assert rows[("pd-h20", "prefill")]["pinned"] is False  # the planner's choice
    assert any("pinned by spec.pins" in n for n in sp["status"]["plan"]["notes"])


async def test_missing_cluster_degrades_and_keeps_children(world: World) -> None:
    await world.start_operator()
    docs = await _apply_case_study(world, wait=True)
    before_local = world.children(world.local)
    before_remote = world.children(world.remote)

    await world.delete(docs["PrefillCluster"])
    degraded = await world.until(
        lambda: (c := world.condition("hybrid-1t", "Degraded")).get("status") == "True" and c,
        what="Degraded",
    )
    assert "PrefillCluster/prfaas-h200" in degraded["message"]
    assert world.condition("hybrid-1t", "Ready")["reason"] == "ClusterMissing"
    assert world.children(world.local).keys() == before_local.keys()
    assert world.children(world.remote).keys() == before_remote.keys()

    # It comes back: the plan recovers without anyone touching the ServingPlan.
    await world.create(docs["PrefillCluster"])
    await world.until(
        lambda: world.condition("hybrid-1t", "Degraded").get("status") == "False",
        what="Degraded=False after the cluster returns",
    )


async def test_infeasible_spec_stalls_and_leaves_children_untouched(world: World) -> None:
    await world.start_operator()
    docs = await _apply_case_study(world, wait=True)
    before = {n: d["spec"] for n, d in world.children(world.local).items()}
    plan_before = (world.get_cr("ServingPlan", "hybrid-1t", "default") or {})["status"]["plan"]

    await world.edit_spec(docs["ServingPlan"], {"slo": {"tpot": "1ms"}})
    stalled = await world.until(
        lambda: (c := world.condition("hybrid-1t", "Stalled")).get("status") == "True" and c,
        what="Stalled",
    )
    assert "tpot" in stalled["message"]
    assert world.condition("hybrid-1t", "Degraded")["status"] == "True"
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    assert sp["status"]["observedGeneration"] == 2
    assert sp["status"]["plan"] == plan_before  # the last good plan stays
    assert {n: d["spec"] for n, d in world.children(world.local).items()} == before


async def test_deleting_the_plan_removes_children_in_both_clusters(world: World) -> None:
    await world.start_operator()
    docs = await _apply_case_study(world, wait=True)
    assert world.children(world.local, "v1/services")
    sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
    assert sp["metadata"].get("finalizers")  # deletion waits for the cleanup

    await world.delete(docs["ServingPlan"])
    await world.until(
        lambda: world.get_cr("ServingPlan", "hybrid-1t", "default") is None,
        what="the ServingPlan to be gone",
    )
    for emulator in (world.local, world.remote):
        for res in ("apps/v1/deployments", "v1/services", "v1/configmaps"):
            assert world.children(emulator, res) == {}, res


async def test_shape_aggregated_rolls_out_one_chunked_prefill_deployment(world: World) -> None:
    """``spec.shape: aggregated`` on the case study: the kv_both split pool gives way to ONE
    Deployment of chunked-prefill engines with the plan's token budget, which the router lists
    as its local decode pool (no local prefill pool); PrfaaS keeps prefilling long prompts."""
    await world.start_operator()
    docs = await _apply_case_study(world, wait=True)
    await world.edit_spec(docs["ServingPlan"], {"shape": "aggregated"})

    def pd_rows() -> list[dict]:
        sp = world.get_cr("ServingPlan", "hybrid-1t", "default") or {}
        clusters = (sp.get("status") or {}).get("plan", {}).get("clusters", [])
        return [c for c in clusters if c["name"] == "pd-h20"]

    def rolled() -> dict | None:
        kids = world.children(world.local)
        dep = kids.get("hybrid-1t-pd-h20-aggregated")
        done = dep is not None and "hybrid-1t-pd-h20-both" not in kids
        return dep if done and len(pd_rows()) == 1 else None

    dep = await world.until(rolled, what="the aggregated Deployment and status.plan")
    rows = pd_rows()
    assert [(r["role"], r["aggregated"]) for r in rows] == [("decode", True)]
    assert dep["spec"]["replicas"] == rows[0]["instances"]
    assert "--enable-chunked-prefill" in _args(dep)
    assert _flag(dep, "--max-num-batched-tokens") == str(rows[0]["maxNumBatchedTokens"])
    assert json.loads(_flag(dep, "--kv-transfer-config"))["kv_role"] == "kv_both"
    cm = world.children(world.local, "v1/configmaps")["hybrid-1t-pd-h20-router"]
    cfg = parse_router_config(cm["data"]["router.yaml"])
    assert cfg.datacenters["dc-b"].prefill == [] and cfg.threshold_tokens is not None
    assert cfg.discovery is not None
    assert [(p.role, p.service) for p in cfg.discovery.pools] == [
        ("decode", "hybrid-1t-pd-h20-aggregated")
    ]
    assert world.children(world.remote)  # PrfaaS still runs
