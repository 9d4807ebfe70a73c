"""Roles of a convertible pool (``kv_both`` engines): the router file assigns each engine a role,
and a role change drains the old role before the new one serves (``RoutingPolicy``)."""

from __future__ import annotations

from typing import Any

import pytest
from prfaas.engine.router.config import RouterConfig, RouterConfigError, parse_router_config
from prfaas.engine.router.discovery import apply_discovery, assign_roles
from prfaas.engine.router.policy import RoutingPolicy

A, B = "http://b0:8000", "http://b1:8000"


def _config(roles: dict[str, str], **overrides: Any) -> RouterConfig:
    data: dict[str, Any] = {
        "model": "m",
        "local_datacenter": "dc-b",
        "datacenters": {
            "dc-b": {"convertible": roles},
            "dc-a": {"prefill": ["http://a0:8000"]},
        },
        "links": {"dc-a": {"capacity_gbps": 1.0}},
        "threshold_tokens": 100,
        "block_size": 10,
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


def urls(p: RoutingPolicy, role: str) -> list[str]:
    return [i.url for i in p.pool("dc-b", role)]


def test_each_engine_serves_its_assigned_role() -> None:
    p = RoutingPolicy(_config({A: "prefill", B: "decode"}))
    assert urls(p, "prefill") == [A] and urls(p, "decode") == [B]
    d = p.decide(list(range(50)), 0.0)  # short: local prefill on A, decode on B
    assert d.route == "local" and d.prefill is not None
    assert (d.prefill.url, d.decode.url) == (A, B)
    assert p.assignment() == {"dc-b": {A: "prefill", B: "decode"}}


def test_an_idle_engine_changes_role_at_once() -> None:
    p = RoutingPolicy(_config({A: "prefill", B: "decode"}))
    p.reconfigure(_config({A: "decode", B: "decode"}))
    assert urls(p, "prefill") == [] and urls(p, "decode") == [A, B]
    d = p.decide(list(range(50)), 0.0)
    assert d.prefill is None  # no local prefill role left: decode prefills itself


def test_a_role_change_drains_the_old_role_first() -> None:
    p = RoutingPolicy(_config({A: "prefill", B: "decode"}))
    old = p.pool("dc-b", "decode")[0]
    old.started()  # B holds one decode
    p.reconfigure(_config({A: "decode", B: "prefill"}))
    # B left decode (no new decode there) but does not prefill yet: it still holds a request.
    assert urls(p, "decode") == [A] and urls(p, "prefill") == []
    assert p.assignment()["dc-b"][B] == "draining:decode->prefill"
    states = {(i.role, i.url): i.state for i in p.instances.values()}
    assert states[("decode", B)] == "leaving" and states[("prefill", B)] == "joining"
    for _ in range(5):
        d = p.decide(list(range(50)), 0.0)
        assert d.decode.url == A and d.prefill is None
    old.finished()  # its request ended: B takes its new role on the next decision
    d = p.decide(list(range(50)), 0.0)
    assert urls(p, "prefill") == [B] and d.prefill is not None and d.prefill.url == B
    assert p.assignment() == {"dc-b": {A: "decode", B: "prefill"}}
    assert ("decode", B) not in {(i.role, i.url) for i in p.instances.values()}


def test_the_engine_keeps_its_cache_and_circuit_across_roles() -> None:
    p = RoutingPolicy(_config({A: "prefill", B: "decode"}))
    before = p.pool("dc-b", "decode")[0]
    before.cache.insert([1, 2, 3])
    p.reconfigure(_config({A: "decode", B: "prefill"}))
    after = p.pool("dc-b", "prefill")[0]
    assert after is not before and after.url == B
    assert after.cache is before.cache and after.circuit is before.circuit


def test_changing_back_before_the_drain_ends_keeps_serving() -> None:
    p = RoutingPolicy(_config({A: "prefill", B: "decode"}))
    p.pool("dc-b", "decode")[0].started()
    p.reconfigure(_config({A: "decode", B: "prefill"}))
    p.reconfigure(_config({A: "decode", B: "decode"}))
    assert urls(p, "decode") == [A, B] and urls(p, "prefill") == []
    assert all(i.state == "serving" for i in p.instances.values())


def test_a_removed_engine_leaves_every_pool_at_once() -> None:
    p = RoutingPolicy(_config({A: "prefill", B: "decode"}))
    p.pool("dc-b", "decode")[0].started()
    p.reconfigure(_config({A: "decode"}))
    assert urls(p, "decode") == [A] and urls(p, "prefill") == []
    assert {i.url for i in p.instances.values()} == {A, "http://a0:8000"}


def test_an_engine_listed_twice_is_refused_naming_the_fix() -> None:
    text = (
        "model: m\nlocalDatacenter: dc-b\ndatacenters:\n"
        f"  dc-b: {{decode: ['{A}'], convertible: {{'{A}': prefill}}}}\n"
    )
    with pytest.raises(RouterConfigError, match="convertible entry only"):
        parse_router_config(text)


def test_a_role_must_be_prefill_or_decode() -> None:
    with pytest.raises(Exception, match="convertible"):
        _config({A: "both"})


def test_assign_roles_is_stable_and_moves_the_least_busy() -> None:
    urls = ["http://p0", "http://p1", "http://p2"]
    first = assign_roles(urls, 1, {})
    assert first == {"http://p0": "prefill", "http://p1": "decode", "http://p2": "decode"}
    # A new engine takes the role that is short; the others keep theirs.
    more = assign_roles([*urls, "http://p-new"], 2, first)
    assert sorted(u for u, r in more.items() if r == "prefill") == ["http://p-new", "http://p0"]
    # A smaller split moves the prefill engine holding fewest requests.
    fewer = assign_roles(urls, 0, {**first, "http://p1": "prefill"}, {"http://p0": 3})
    assert fewer == {u: "decode" for u in urls}
    moved = assign_roles(urls, 2, first, {"http://p1": 5, "http://p2": 1})
    assert moved["http://p2"] == "prefill" and moved["http://p1"] == "decode"
    # A pool always keeps one decode engine.
    assert list(assign_roles(urls, 9, {}).values()).count("decode") == 1


def test_a_discovered_convertible_pool_gets_per_engine_roles() -> None:
    cfg = _config(
        {},
        discovery={
            "namespace": "ns",
            "pools": [{"datacenter": "dc-b", "role": "convertible", "prefill": 1,
                       "service": "plan-pd-both"}],
        },
    )
    found = {("dc-b", "convertible"): [A, B]}
    live = apply_discovery(cfg, found, {B: "prefill"})
    assert live.datacenters["dc-b"].convertible == {A: "decode", B: "prefill"}
    p = RoutingPolicy(live)
    assert urls(p, "prefill") == [B] and urls(p, "decode") == [A]
    with pytest.raises(Exception, match="role convertible, and only for it"):
        _config({}, discovery={"namespace": "ns", "pools": [
            {"datacenter": "dc-b", "role": "convertible", "service": "s"}]})
