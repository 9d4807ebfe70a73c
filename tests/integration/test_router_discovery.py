"""The router follows its engines' pods on the emulated API: EndpointSlices of the pools'
Services appear (pods coming), lose an endpoint's readiness (turning unready) and disappear
(pods going); the router's instance list follows each change, and instances that stay keep
their state (prefix cache, load, circuit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import yaml
from prfaas.engine.router.config import RouterConfig, dump_router_config
from prfaas.engine.router.service import RouterService

from .conftest import ALL_VERBS, World

NS = "serving"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


def _declare(emulator: kmock.KubernetesEmulator) -> None:
    emulator.resources["discovery.k8s.io/v1/endpointslices"] = kmock.ResourceInfo(
        kind="EndpointSlice", singular="endpointslice", verbs=ALL_VERBS, namespaced=True
    )


def _slice(name: str, service: str, *ips: str, unready: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
            "resourceVersion": "1",
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ip not in unready}} for ip in ips
        ],
    }


def _config(url: str) -> RouterConfig:
    return RouterConfig.model_validate(
        {
            "model": "tiny",
            "localDatacenter": "dc-b",
            "datacenters": {
                "dc-b": {
                    "prefill": ["http://plan-pd-prefill.serving.svc.cluster.local:8000"],
                    "decode": ["http://plan-pd-decode.serving.svc.cluster.local:8000"],
                },
                "dc-a": {
                    "prefill": ["http://plan-remote-prefill.prefill.svc.clusterset.local:8000"]
                },
            },
            "links": {"dc-a": {"name": "a-to-b", "capacityGbps": 10}},
            "health": {"enabled": False},
            "discovery": {
                "namespace": NS,
                "apiServer": url,
                "retryS": 0.05,
                "pools": [
                    {"datacenter": "dc-b", "role": "decode", "service": "plan-pd-decode"},
                    {"datacenter": "dc-b", "role": "prefill", "service": "plan-pd-prefill"},
                ],
            },
        }
    )


def _pool(svc: RouterService, dc: str, role: str) -> list[str]:
    return list(getattr(svc.router.config.datacenters[dc], role))


async def test_the_router_follows_pods_coming_going_and_turning_unready(world: World) -> None:
    api = world.local
    _declare(api)
    await api.post(SLICES, json=_slice("decode-1", "plan-pd-decode", "10.0.0.1", "10.0.0.2"))
    await api.post(SLICES, json=_slice("other-1", "someone-else", "10.9.9.9"))
    async with RouterService(_config(str(api.url)), port=0) as svc:
        await world.until(
            lambda: (
                _pool(svc, "dc-b", "decode") == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
            ),
            what="both decode pods",
        )
        # Listed with no slice: the local prefill pool is empty (decode prefills short prompts);
        # the remote cluster's pool is not followed and keeps its Service URL.
        assert _pool(svc, "dc-b", "prefill") == []
        assert _pool(svc, "dc-a", "prefill") == [
            "http://plan-remote-prefill.prefill.svc.clusterset.local:8000"
        ]
        kept = svc.router.policy.instances[("dc-b", "decode", "http://10.0.0.1:8000")]

        # A pod turns unready: it leaves the pool.
        ips = ("10.0.0.1", "10.0.0.2")
        unready = _slice("decode-1", "plan-pd-decode", *ips, unready=("10.0.0.2",))
        resp = await api.patch(f"{SLICES}/decode-1", json=unready)
        assert resp.status < 300
        await world.until(
            lambda: _pool(svc, "dc-b", "decode") == ["http://10.0.0.1:8000"],
            what="the unready pod to leave",
        )

        # Pods come: a second slice of the decode Service, and the first prefill pod.
        await api.post(SLICES, json=_slice("decode-2", "plan-pd-decode", "10.0.0.3"))
        await api.post(SLICES, json=_slice("prefill-1", "plan-pd-prefill", "10.0.1.1"))
        await world.until(
            lambda: (
                _pool(svc, "dc-b", "decode") == ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]
                and _pool(svc, "dc-b", "prefill") == ["http://10.0.1.1:8000"]
            ),
            what="the new pods",
        )
        # The instance that stayed is the same object: its cache, load and circuit carry over.
        assert svc.router.policy.instances[("dc-b", "decode", "http://10.0.0.1:8000")] is kept

        # Pods go: the first slice is deleted.
        resp = await api.delete(f"{SLICES}/decode-1")
        assert resp.status < 300
        await world.until(
            lambda: _pool(svc, "dc-b", "decode") == ["http://10.0.0.3:8000"],
            what="the deleted slice's pods to go",
        )
        assert "10.9.9.9" not in str(svc.router.config.datacenters)


async def test_a_restarted_watch_relists_and_drops_what_went_meanwhile(world: World) -> None:
    api = world.local
    _declare(api)
    await api.post(SLICES, json=_slice("decode-1", "plan-pd-decode", "10.0.0.1"))
    async with RouterService(_config(str(api.url)), port=0) as svc:
        await world.until(
            lambda: _pool(svc, "dc-b", "decode") == ["http://10.0.0.1:8000"], what="the pod"
        )
        assert svc.watcher is not None
        # The slice vanishes without a DELETED event reaching the router (as while its watch
        # was down); the next list replaces what the router knew.
        del api.objects[("discovery.k8s.io/v1/endpointslices", NS, "decode-1")]
        await api.post(SLICES, json=_slice("decode-2", "plan-pd-decode", "10.0.0.2"))
        await world.until(
            lambda: "http://10.0.0.2:8000" in _pool(svc, "dc-b", "decode"), what="the new pod"
        )
        watcher = svc.watcher
        svc._follow(svc.file_config.model_copy(update={"discovery": None}))  # stop
        assert svc.watcher is None
        svc._follow(svc.file_config)  # start again: list
        await world.until(
            lambda: _pool(svc, "dc-b", "decode") == ["http://10.0.0.2:8000"],
            what="the relist to drop the vanished pod",
        )
        assert svc.watcher is not watcher


async def test_the_operator_gives_the_router_what_discovery_needs(
    world: World, tmp_path: Path
) -> None:
    """The operator's children on the emulated API: the router's ServiceAccount, a Role reading
    EndpointSlices in its namespace and the binding; its file names the decode cluster's pools
    (the remote prefill cluster stays at its Service URL). A router started from that file
    follows the engines' slices."""
    from prfaas.operator.controller.clients import ClientPool
    from prfaas.operator.controller.reconcile import Reconciler
    from prfaas.operator.controller.runtime import local_client
    from prfaas.operator.controller.settings import OperatorSettings

    from .conftest import OPERATOR_NS, case_study, find

    settings = OperatorSettings()
    settings.reconcile.apply_mode = "merge"
    settings.reconcile.namespace = OPERATOR_NS
    pool = ClientPool(local_client(settings, str(world.local.url)), namespace=OPERATOR_NS)
    docs = case_study()
    for kind in ("PrefillCluster", "DecodeCluster", "InterDCLink", "ServingPlan"):
        await world.create(docs[kind])
    try:
        outcome = await Reconciler(pool, settings).reconcile_plan("default", "hybrid-1t")
    finally:
        await pool.close()
    assert outcome is not None and not outcome.errors, outcome
    name = "hybrid-1t-pd-h20-router"
    role = find(world.local, "rbac.authorization.k8s.io/v1/roles", "default", name)
    assert role is not None and role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = find(world.local, "rbac.authorization.k8s.io/v1/rolebindings", "default", name)
    assert binding is not None and binding["subjects"][0]["name"] == name
    assert find(world.local, "v1/serviceaccounts", "default", name) is not None
    dep = find(world.local, "apps/v1/deployments", "default", name)
    assert dep is not None and dep["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert not world.children(world.remote, "rbac.authorization.k8s.io/v1/roles")

    cm = find(world.local, "v1/configmaps", "default", name)
    assert cm is not None
    cfg = RouterConfig.model_validate(yaml.safe_load(cm["data"]["router.yaml"]))
    assert cfg.discovery is not None and cfg.discovery.namespace == "default"
    # The case study's PD-P and PD-D share everything: one pool of kv_both pods, whose split
    # (PD-P count) the router applies to the pods it finds.
    (pool,) = cfg.discovery.pools
    assert (pool.datacenter, pool.role, pool.service) == ("dc-b", "convertible",
                                                          "hybrid-1t-pd-h20-both")
    assert pool.prefill is not None and pool.prefill >= 1
    assert cfg.datacenters["dc-a"].prefill[0].endswith(".svc.clusterset.local:8000")

    # The router the operator configured, pointed at the emulated API (in a pod: its token),
    # reading its file as it would the mounted ConfigMap.
    first = pool.model_copy(update={"prefill": 1})
    discovery = cfg.discovery.model_copy(
        update={"api_server": str(world.local.url), "pools": [first]}
    )
    cfg = cfg.model_copy(
        update={"discovery": discovery, "health": cfg.health.model_copy(update={"enabled": False})}
    )
    path = tmp_path / "router.yaml"
    path.write_text(dump_router_config(cfg))
    slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    piece = _slice("b-1", "hybrid-1t-pd-h20-both", "10.1.0.1", "10.1.0.2", "10.1.0.3")
    piece["metadata"]["namespace"] = "default"
    await world.local.post(slices, json=piece)
    pods = ["http://10.1.0.1:8000", "http://10.1.0.2:8000", "http://10.1.0.3:8000"]
    async with RouterService(path, port=0, reload_interval_s=0.05) as svc:
        roles = await world.until(
            lambda: (r := _convertible(svc)) and sorted(r) == pods and r,
            what="the router to follow the operator's kv_both pods",
        )
        assert sorted(roles.values()) == ["decode", "decode", "prefill"]
        assert _pool(svc, "dc-b", "prefill") == [] and _pool(svc, "dc-b", "decode") == []
        served = {i.url: i.role for i in svc.router.policy.pool("dc-b", "prefill")}
        assert served == {u: r for u, r in roles.items() if r == "prefill"}

        # The autoscaler's new split (2 of 3 prefill) reaches the running router by a reload:
        # the engine that prefilled keeps its role, one decode engine moves, nothing restarts.
        router_before = svc.router
        new_pool = pool.model_copy(update={"prefill": 2})
        path.write_text(dump_router_config(cfg.model_copy(update={"discovery": discovery.model_copy(
            update={"pools": [new_pool]})})))
        moved = await world.until(
            lambda: (r := _convertible(svc)) and list(r.values()).count("prefill") == 2 and r,
            what="the router to apply the new split",
        )
        assert all(moved[u] == "prefill" for u, r in roles.items() if r == "prefill")
        assert svc.router is router_before
        assert len(svc.router.policy.pool("dc-b", "prefill")) == 2
        assert len(svc.router.policy.pool("dc-b", "decode")) == 1

        # A pod leaves (terminating): the split is kept on the pods that remain.
        piece["endpoints"][0]["conditions"] = {"ready": False, "terminating": True}
        await world.local.patch(f"{slices}/b-1", json={"endpoints": piece["endpoints"]})
        left = await world.until(
            lambda: (r := _convertible(svc)) and len(r) == 2 and r,
            what="the router to drop the terminating pod",
        )
        assert sorted(left.values()) == ["decode", "prefill"]


def _convertible(svc: RouterService) -> dict[str, str]:
    return dict(svc.router.config.datacenters["dc-b"].convertible)


async def test_requests_follow_the_discovered_pods(world: World) -> None:
    """Traffic, not only the list: with two decode pods discovered, requests reach both; once
    one turns unready every request goes to the other; when that one's slice is gone and the
    first is ready again, every request goes back to the first."""
    import aiohttp
    from prfaas.engine.router.fakes import FakeEngine

    api = world.local
    _declare(api)

    def one_pod(name: str, engine: FakeEngine, *, ready: bool = True) -> dict[str, Any]:
        port = int(engine.url.rsplit(":", 1)[1])
        piece = _slice(name, "plan-pd-decode", "127.0.0.1", unready=() if ready else ("127.0.0.1",))
        piece["ports"] = [{"name": "http", "port": port, "protocol": "TCP"}]
        return piece

    async def served_by(svc: RouterService, engines: list[FakeEngine], n: int) -> list[int]:
        before = [len(e.received) for e in engines]
        async with aiohttp.ClientSession() as http:
            for i in range(n):
                body = {"model": "tiny", "prompt": f"request {i}", "max_tokens": 2}
                async with http.post(f"{svc.url}/v1/completions", json=body) as resp:
                    assert resp.status == 200, await resp.text()
        return [len(e.received) - b for e, b in zip(engines, before, strict=True)]

    async with FakeEngine("decode") as a, FakeEngine("decode") as b:
        await api.post(SLICES, json=one_pod("pod-a", a))
        await api.post(SLICES, json=one_pod("pod-b", b))
        async with RouterService(_config(str(api.url)), port=0) as svc:
            await world.until(
                lambda: sorted(_pool(svc, "dc-b", "decode")) == sorted([a.url, b.url]),
                what="both pods",
            )
            assert all(n > 0 for n in await served_by(svc, [a, b], 8))

            await api.patch(f"{SLICES}/pod-a", json=one_pod("pod-a", a, ready=False))
            await world.until(lambda: _pool(svc, "dc-b", "decode") == [b.url], what="a unready")
            assert await served_by(svc, [a, b], 6) == [0, 6]

            await api.delete(f"{SLICES}/pod-b")
            await api.patch(f"{SLICES}/pod-a", json=one_pod("pod-a", a))
            await world.until(lambda: _pool(svc, "dc-b", "decode") == [a.url], what="b gone")
            assert await served_by(svc, [a, b], 6) == [6, 0]


async def test_a_terminating_pod_gets_no_new_request_and_finishes_what_it_holds(
    world: World,
) -> None:
    """Drain, the router's half: requests are in flight on pod A (held by a gate, one streamed,
    one not) when A's endpoint turns terminating (as when its preStop starts; here with
    ``ready`` still true, as a Service publishing not-ready addresses reports it). A leaves the
    pool, every new request goes to B, and A's requests, released afterwards, complete in full."""
    import asyncio
    from dataclasses import dataclass, field

    import aiohttp
    from aiohttp import web
    from prfaas.engine.router.fakes import FakeEngine

    @dataclass(eq=False)
    class GatedEngine(FakeEngine):
        gate: asyncio.Event = field(default_factory=asyncio.Event)
        arrived: int = 0

        async def _handle(self, request: web.Request) -> web.StreamResponse:
            self.arrived += 1
            await self.gate.wait()
            return await super()._handle(request)

    api = world.local
    _declare(api)

    def one_pod(name: str, engine: FakeEngine, *, terminating: bool = False) -> dict[str, Any]:
        port = int(engine.url.rsplit(":", 1)[1])
        piece = _slice(name, "plan-pd-decode", "127.0.0.1")
        piece["ports"] = [{"name": "http", "port": port, "protocol": "TCP"}]
        if terminating:
            piece["endpoints"][0]["conditions"] = {
                "ready": True,
                "serving": True,
                "terminating": True,
            }
        return piece

    async def ask(http: aiohttp.ClientSession, url: str, stream: bool) -> tuple[int, str]:
        body = {"model": "tiny", "prompt": "hold me", "max_tokens": 6, "stream": stream}
        async with http.post(f"{url}/v1/completions", json=body) as resp:
            return resp.status, await resp.text()

    async with GatedEngine("decode", default_tokens=6) as a, FakeEngine("decode") as b:
        await api.post(SLICES, json=one_pod("pod-a", a))
        async with (
            RouterService(_config(str(api.url)), port=0) as svc,
            aiohttp.ClientSession() as http,
        ):
            await world.until(lambda: _pool(svc, "dc-b", "decode") == [a.url], what="pod a")
            held = [asyncio.create_task(ask(http, svc.url, stream)) for stream in (True, False)]
            await world.until(lambda: a.arrived == 2, what="both requests on a")

            await api.post(SLICES, json=one_pod("pod-b", b))
            await api.patch(f"{SLICES}/pod-a", json=one_pod("pod-a", a, terminating=True))
            await world.until(lambda: _pool(svc, "dc-b", "decode") == [b.url], what="a leaving")
            for i in range(4):
                status, _ = await ask(http, svc.url, stream=i % 2 == 0)
                assert status == 200
            assert a.arrived == 2 and len(b.received) == 4
            assert not any(task.done() for task in held)

            a.gate.set()
            (s_status, streamed), (n_status, whole) = await asyncio.gather(*held)
            assert s_status == 200 and n_status == 200
            assert streamed.rstrip().endswith("data: [DONE]") and '"error"' not in streamed
            assert streamed.count("data: ") - 1 == 6  # every token, then [DONE]
            assert '"error"' not in whole and len(a.received) == 2
