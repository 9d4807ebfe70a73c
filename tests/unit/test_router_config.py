"""The router file format and ``router_config_from_plan``."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from prfaas.engine.router.config import (
    RouterConfigError,
    Timeouts,
    dump_router_config,
    load_router_config,
    parse_router_config,
    router_config_from_plan,
)
from prfaas.planner.plan import ClusterPlan, LinkPlan, Plan, RemotePrefill, RouterPlan


def _plan(*, local_prefill: bool = False, t: float | None = 256.0) -> Plan:
    clusters = [
        ClusterPlan("local-prefill", "dc-a", "prefill", "CPU", 1),
        ClusterPlan("local-decode", "dc-b", "decode", "CPU", 1),
    ]
    if local_prefill:
        clusters.append(ClusterPlan("local-decode", "dc-b", "prefill", "CPU", 2))
    return Plan(
        model="tiny-llama",
        threshold_tokens=t,
        kv_bytes_per_token=4096.0,
        kv_fixed_bytes=100.0,
        clusters=clusters,
        links=[LinkPlan("dc-a-to-dc-b", "dc-a", "dc-b", capacity_gbps=1.0, headroom=0.7)],
        routers=[
            RouterPlan(
                "local-decode", t, 4096.0, 100.0, [RemotePrefill("local-prefill", "dc-a-to-dc-b")]
            )
        ],
    )


ENDPOINTS = {
    "local-prefill": {"prefill": ["http://127.0.0.1:8100"]},
    "local-decode": {"decode": ["http://127.0.0.1:8200"], "prefill": ["http://127.0.0.1:8300"]},
}


def test_from_plan_places_endpoints_by_datacenter_and_role() -> None:
    cfg = router_config_from_plan(_plan(local_prefill=True), ENDPOINTS, block_size=128)
    assert cfg.local_datacenter == "dc-b"
    assert cfg.datacenters["dc-b"].decode == ["http://127.0.0.1:8200"]
    assert cfg.datacenters["dc-b"].prefill == ["http://127.0.0.1:8300"]
    assert cfg.datacenters["dc-a"].prefill == ["http://127.0.0.1:8100"]
    assert cfg.links["dc-a"].capacity_gbps == 1.0
    assert cfg.links["dc-a"].headroom == 0.7
    assert cfg.link("dc-a").name == "dc-a-to-dc-b"
    assert cfg.threshold_tokens == 256.0
    assert (cfg.kv_bytes_per_token, cfg.kv_fixed_bytes, cfg.block_size) == (4096.0, 100.0, 128)
    assert cfg.remote_datacenters == ["dc-a"]


def test_from_plan_without_local_prefill_pool_and_without_offload() -> None:
    cfg = router_config_from_plan(
        _plan(t=None), {"local-decode": {"decode": ["http://d"]}}, timeouts=Timeouts(prefill_s=3)
    )
    assert cfg.datacenters["dc-b"].prefill == []
    assert cfg.threshold_tokens is None
    assert cfg.timeouts.prefill_s == 3
    # The remote datacenter got no URLs, so it is not a usable remote.
    assert cfg.remote_datacenters == []


def test_from_plan_infinite_threshold_means_no_offload() -> None:
    cfg = router_config_from_plan(_plan(t=math.inf), ENDPOINTS)
    assert cfg.threshold_tokens is None


def test_from_plan_errors_are_actionable() -> None:
    with pytest.raises(RouterConfigError, match="no decode endpoints"):
        router_config_from_plan(_plan(), {"local-prefill": {"prefill": ["http://p"]}})
    with pytest.raises(RouterConfigError, match="no router for 'nope'"):
        router_config_from_plan(_plan(), ENDPOINTS, decode_cluster="nope")
    with pytest.raises(RouterConfigError, match="no routers"):
        router_config_from_plan(Plan(model="m"), ENDPOINTS)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip_through_text(fmt: str, tmp_path: Path) -> None:
    cfg = router_config_from_plan(
        _plan(local_prefill=True), ENDPOINTS, tokenizer="/m", max_model_len=2048
    )
    path = tmp_path / f"router.{fmt}"
    text = dump_router_config(cfg, fmt=fmt)
    assert "localDatacenter" in text and "kvBytesPerToken" in text
    path.write_text(text)
    assert load_router_config(path) == cfg


def test_invalid_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(RouterConfigError, match="cannot read"):
        load_router_config(tmp_path / "missing.yaml")
    with pytest.raises(RouterConfigError, match="localDatacenter 'x'"):
        parse_router_config("model: m\nlocalDatacenter: x\ndatacenters: {y: {decode: [u]}}\n")
    with pytest.raises(RouterConfigError, match="thresholdTokenz"):
        parse_router_config(
            "model: m\nlocalDatacenter: y\ndatacenters: {y: {decode: [u]}}\nthresholdTokenz: 3\n"
        )
    with pytest.raises(RouterConfigError, match="remote"):
        parse_router_config(
            "model: m\nlocalDatacenter: y\ndatacenters: {y: {decode: [u]}}\n"
            "links: {y: {capacityGbps: 1}}\n"
        )


def test_same_datacenter_prefill_cluster_gets_its_own_pool_with_an_unbounded_link() -> None:
    plan = Plan(
        model="m",
        threshold_tokens=1000.0,
        kv_bytes_per_token=1.0,
        clusters=[
            ClusterPlan("prfaas-x", "dc-b", "prefill", "H200", 2),
            ClusterPlan("pd", "dc-b", "prefill", "H20", 1),
            ClusterPlan("pd", "dc-b", "decode", "H20", 3),
        ],
        routers=[RouterPlan("pd", 1000.0, 1.0, remotes=[RemotePrefill("prfaas-x", "")])],
    )
    cfg = router_config_from_plan(
        plan,
        {
            "prfaas-x": {"prefill": ["http://x0", "http://x1"]},
            "pd": {"prefill": ["http://p0"], "decode": ["http://d0"]},
        },
    )
    assert cfg.datacenters["dc-b"].prefill == ["http://p0"]
    assert cfg.datacenters["prfaas-x"].prefill == ["http://x0", "http://x1"]
    assert cfg.links["prfaas-x"].capacity_gbps is None
    assert cfg.remote_datacenters == ["prfaas-x"]
    assert parse_router_config(dump_router_config(cfg)) == cfg


def test_from_plan_sizes_each_pools_prefix_cache_model_by_its_engines_kv_memory() -> None:
    """An engine keeps prefixes in all its KV memory (the plan's ``kv_cache_tokens``); the
    router's model of it must not be smaller, or it forgets what the engine still holds."""
    plan = _plan(local_prefill=True)
    sized = {("local-prefill", "prefill"): 1_600_000, ("local-decode", "prefill"): 48_000,
             ("local-decode", "decode"): 32_000}
    plan.clusters = [
        replace(c, kv_cache_tokens=sized[(c.name, c.role)]) for c in plan.clusters
    ]
    cfg = router_config_from_plan(plan, ENDPOINTS, block_size=16)
    assert cfg.datacenters["dc-a"].cache_blocks == {"prefill": 100_000}
    assert cfg.datacenters["dc-b"].cache_blocks == {"prefill": 3_000, "decode": 2_000}
    assert cfg.cache_blocks("dc-a", "prefill") == 100_000
    text = dump_router_config(cfg)
    assert parse_router_config(text) == cfg
    assert "cacheBlocks" in text
    # A plan without KV sizes (and so every file written before) keeps prefixCacheBlocks.
    bare = router_config_from_plan(_plan(local_prefill=True), ENDPOINTS, prefix_cache_blocks=77)
    assert bare.datacenters["dc-a"].cache_blocks == {}
    assert bare.cache_blocks("dc-a", "prefill") == bare.cache_blocks("dc-b", "decode") == 77
    assert "cacheBlocks" not in dump_router_config(bare)


def test_a_negative_cache_size_is_refused_naming_the_field() -> None:
    text = dump_router_config(router_config_from_plan(_plan(), ENDPOINTS)).replace(
        "decode: []", "decode: []\n    cacheBlocks: {prefill: -1}", 1
    )
    with pytest.raises(RouterConfigError, match="cacheBlocks"):
        parse_router_config(text)
