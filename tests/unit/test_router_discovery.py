"""Per-engine discovery, the pure parts: which EndpointSlice endpoints are instances, and how
the discovered URLs replace a pool's in the router file."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from prfaas.engine.router.config import (
    DiscoveredPool,
    RouterConfig,
    RouterConfigError,
    parse_router_config,
)
from prfaas.engine.router.discovery import apply_discovery, ready_urls

DECODE = DiscoveredPool(datacenter="dc-b", role="decode", service="svc-d", port=8000)


def _slice(service: str, endpoints: list[dict[str, Any]], ports: list[dict] | None = None) -> dict:
    return {
        "metadata": {"name": "x", "labels": {"kubernetes.io/service-name": service}},
        "ports": [{"name": "http", "port": 8000}] if ports is None else ports,
        "endpoints": endpoints,
    }


def test_ready_unset_counts_as_ready_and_false_or_terminating_does_not() -> None:
    piece = _slice(
        "svc-d",
        [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "conditions": {}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "terminating": True}},
            {"addresses": ["fd00::4"]},
            # publishNotReadyAddresses: ready stays true while the pod terminates.
            {
                "addresses": ["10.0.0.5"],
                "conditions": {"ready": True, "serving": True, "terminating": True},
            },
        ],
    )
    assert ready_urls([piece, _slice("other", [{"addresses": ["10.9.9.9"]}])], DECODE) == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
        "http://[fd00::4]:8000",
    ]


def test_the_slice_port_wins_when_it_is_the_only_one() -> None:
    piece = _slice("svc-d", [{"addresses": ["10.0.0.1"]}], ports=[{"name": "api", "port": 9000}])
    assert ready_urls([piece], DECODE) == ["http://10.0.0.1:9000"]


def _config(**discovery: Any) -> RouterConfig:
    return RouterConfig.model_validate(
        {
            "model": "m",
            "localDatacenter": "dc-b",
            "datacenters": {
                "dc-b": {"prefill": ["http://svc-p:8000"], "decode": ["http://svc-d:8000"]}
            },
            "discovery": {
                "namespace": "ns",
                "pools": [
                    {"datacenter": "dc-b", "role": "decode", "service": "svc-d"},
                    {"datacenter": "dc-b", "role": "prefill", "service": "svc-p"},
                ],
                **discovery,
            },
        }
    )


def test_discovered_urls_replace_only_the_listed_pools() -> None:
    cfg = _config()
    assert apply_discovery(cfg, {}) is cfg  # nothing listed yet: the file's Service URLs
    out = apply_discovery(cfg, {("dc-b", "decode"): ["http://10.0.0.1:8000"]})
    assert out.datacenters["dc-b"].decode == ["http://10.0.0.1:8000"]
    assert out.datacenters["dc-b"].prefill == ["http://svc-p:8000"]
    assert out.discovery == cfg.discovery and out.model == cfg.model


def test_a_discovery_pool_must_name_a_datacenter_of_the_file() -> None:
    text = """
    model: m
    localDatacenter: dc-b
    datacenters: {dc-b: {decode: ["http://d:8000"]}}
    discovery: {namespace: ns, pools: [{datacenter: dc-x, role: decode, service: s}]}
    """
    with pytest.raises(RouterConfigError, match=r"discovery.pools name datacenters.*dc-x"):
        parse_router_config(text)


async def test_the_list_follows_continue_tokens_across_pages() -> None:
    """A namespace with more slices than one page: every page is read before the watch."""
    import asyncio

    from aiohttp import web
    from prfaas.engine.router.config import DiscoverySettings
    from prfaas.engine.router.discovery import EndpointWatcher
    from prfaas.engine.router.serving import serve_app

    pages = {
        "": ([_slice("svc-d", [{"addresses": ["10.0.0.1"]}])], "page-2"),
        "page-2": ([_slice("svc-d", [{"addresses": ["10.0.0.2"]}])], ""),
    }
    for n, (items, _) in enumerate(pages.values()):
        items[0]["metadata"]["name"] = f"s{n}"
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.query))
        if request.query.get("watch"):
            return web.Response(text="")  # a watch that ends at once (the watcher lists again)
        items, cont = pages[request.query.get("continue", "")]
        meta = {"continue": cont, "resourceVersion": "7"}
        return web.json_response({"items": items, "metadata": meta})

    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices", handle)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    found: list[dict] = []

    async def on_change(urls: dict) -> None:
        found.append(urls)

    settings = DiscoverySettings(
        namespace="ns", api_server=f"http://127.0.0.1:{port}", pools=[DECODE]
    )
    watcher = EndpointWatcher(settings, on_change)
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(watcher.listed.wait(), timeout=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()
    assert found == [{("dc-b", "decode"): ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}]
    assert [q.get("limit") for q in seen[:2]] == ["250", "250"]
    assert seen[1]["continue"] == "page-2"
