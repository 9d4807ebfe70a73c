"""``RoutingPolicy``: routing decisions without any HTTP (explicit ``now``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.errors import NoBackendError
from prfaas.engine.router.policy import Circuit, RoutingPolicy
from prfaas.planner.routing.policy import Link, RoutingCore, Target


def _config(**overrides: Any) -> RouterConfig:
    data: dict[str, Any] = {
        "model": "m",
        "local_datacenter": "local",
        "datacenters": {
            "local": {"prefill": ["http://lp0", "http://lp1"], "decode": ["http://d0"]},
            "far": {"prefill": ["http://rp0", "http://rp1"]},
        },
        "links": {"far": {"name": "far-to-local", "capacity_gbps": 1.0, "headroom": 0.5}},
        "threshold_tokens": 100,
        "kv_bytes_per_token": 10.0,
        "kv_fixed_bytes": 7.0,
        "block_size": 10,
        "affinity_max_imbalance": 2,
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


def toks(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def test_uncached_length_decides_local_or_remote() -> None:
    p = RoutingPolicy(_config())
    short = p.decide(toks(100), 0.0)
    assert (short.route, short.uncached_tokens) == ("local", 100)
    assert short.prefill is not None and short.prefill.datacenter == "local"
    long = p.decide(toks(101), 0.0)
    assert long.route == "remote"
    assert long.prefill is not None and long.prefill.datacenter == "far"
    assert long.link is not None and long.link.name == "far-to-local"
    assert long.kv_bytes == 10.0 * 10 * 11 + 7.0  # 101 tokens fill 11 KV blocks of 10


def test_a_locally_cached_prefix_keeps_a_long_prompt_local() -> None:
    p = RoutingPolicy(_config())
    prompt = toks(250)
    lp = p.pool("local", "prefill")[1]
    lp.cache.insert(p.decide(prompt, 0.0).hashes[:20])  # 200 tokens held locally
    d = p.decide([*prompt, 999], 0.0)
    assert d.uncached_tokens == 51
    assert d.route == "local" and d.prefill is lp


def test_kv_bytes_are_the_whole_blocks_decode_does_not_hold() -> None:
    """NIXL moves whole KV blocks: 305 tokens are 31 blocks of 10 (the last one 5 tokens);
    decode holds 10 of them, so 21 blocks (210 tokens' worth) cross the link, not 205."""
    p = RoutingPolicy(_config())
    prompt = toks(305)
    hashes = p.decide(prompt, 0.0).hashes
    p.pool("local", "decode")[0].cache.insert(hashes[:10])
    d = p.decide(prompt, 0.0)
    assert d.route == "remote"
    assert d.kv_bytes == 10.0 * 10 * 21 + 7.0


def test_kv_bytes_use_the_engines_kv_block_not_the_hash_block() -> None:
    """The simulator hashes in a trace's blocks (here 512 tokens) while its engines move
    128-token KV blocks: the issue's 1665-token prompt moves 14 blocks; a held 1024-token
    prefix is 8 whole blocks, a held 300-token one only 2."""
    core: RoutingCore[Target, Link] = RoutingCore(
        block_size=512, kv_block_tokens=128, kv_bytes_per_token=1024.0, kv_fixed_bytes=3.0
    )
    assert core.kv_bytes(1665) == 1024.0 * 128 * 14 + 3.0  # 1,835,008 B, not 1665 × 1024
    assert core.kv_bytes(1665, 1024) == 1024.0 * 128 * 6 + 3.0
    assert core.kv_bytes(1665, 300) == 1024.0 * 128 * 12 + 3.0
    assert core.kv_bytes(1664, 1664) == 3.0  # all held: only the fixed state
    assert core.kv_bytes(1663) == core.kv_bytes(1536 + 1) == 1024.0 * 128 * 13 + 3.0
    core.kv_block_tokens = 0
    with pytest.raises(ValueError, match="kv_block_tokens"):
        core.kv_bytes(10)


def test_affinity_first_then_least_loaded_then_round_robin() -> None:
    p = RoutingPolicy(_config())
    a, b = p.pool("far", "prefill")
    prompt = toks(200)
    hashes = p.decide(prompt, 0.0).hashes
    b.cache.insert(hashes)
    assert p.pick([a, b], hashes, 0.0)[0] is b
    b.in_flight = 2  # within the allowed imbalance of 2: affinity still wins
    assert p.pick([a, b], hashes, 0.0) == (b, 20)
    b.in_flight = 3  # too loaded: the idle one takes it
    assert p.pick([a, b], hashes, 0.0)[0] is a
    b.in_flight = 0
    other = p.decide(toks(50, start=10_000), 0.0).hashes
    picks = [p.pick([a, b], other, 0.0)[0] for _ in range(4)]
    assert picks == [picks[0], picks[1]] * 2 and picks[0] is not picks[1]


def test_circuit_opens_after_failures_and_retries_after() -> None:
    c = Circuit(failures_to_open=2, retry_after_s=10.0)
    c.record_failure(0.0)
    assert c.allows(0.0)
    c.record_failure(1.0)
    assert not c.allows(5.0)
    assert c.allows(11.0)  # trial allowed
    c.record_failure(11.0)
    assert not c.allows(12.0)
    c.record_success()
    assert c.allows(12.0)


def test_open_link_circuit_and_down_link_keep_everything_local() -> None:
    p = RoutingPolicy(_config(circuit={"failures": 1, "retry_after_s": 5.0}))
    p.links["far"].circuit.record_failure(0.0)
    assert p.decide(toks(500), 1.0).route == "local"
    assert p.decide(toks(500, 1), 6.0).route == "remote"
    p.reconfigure(_config(links={"far": {"capacity_gbps": 1.0, "down": True}}))
    assert p.decide(toks(500, 2), 7.0).route == "local"
    p.reconfigure(_config(links={"far": {"capacity_gbps": 0.0}}))
    assert p.decide(toks(500, 3), 8.0).route == "local"


def test_no_offload_when_threshold_is_null() -> None:
    p = RoutingPolicy(_config(threshold_tokens=None))
    assert p.decide(toks(10_000), 0.0).route == "local"
    assert math.isinf(p.links["far"].controller.threshold)


def test_no_local_prefill_pool_means_decode_prefills() -> None:
    p = RoutingPolicy(
        _config(datacenters={"local": {"decode": ["http://d0"]}, "far": {"prefill": ["http://r"]}})
    )
    d = p.decide(toks(50), 0.0)
    assert d.route == "local" and d.prefill is None


def test_no_healthy_decode_raises_no_backend() -> None:
    p = RoutingPolicy(_config(circuit={"failures": 1, "retry_after_s": 5.0}))
    p.pool("local", "decode")[0].circuit.record_failure(0.0)
    with pytest.raises(NoBackendError, match="no healthy decode instance"):
        p.decide(toks(5), 1.0)


def test_in_flight_bytes_raise_threshold_then_it_decays() -> None:
    # 1 Gbit/s, headroom 0.5, window 2 s: budget 500 Mbit/s = 125 MB in flight over a window.
    p = RoutingPolicy(_config(kv_bytes_per_token=1e6))
    link = p.links["far"]
    d = p.decide(toks(200), 0.0)
    assert d.route == "remote"
    link.send(0.0, d.kv_bytes)  # 200 MB
    assert link.estimated_bps(0.0) > link.controller.budget_bps
    assert p.tick(1.0)["far-to-local"] == 150.0
    assert p.tick(1.6)["far-to-local"] == 225.0
    assert p.decide(toks(201, 7), 1.7).route == "local"  # 201 < t = 225
    link.delivered(d.kv_bytes)
    for k in range(30):
        p.tick(4.0 + k)
    assert link.controller.threshold == 100.0


def test_reconfigure_keeps_caches_and_loops_and_drops_removed_instances() -> None:
    p = RoutingPolicy(_config())
    lp0 = p.pool("local", "prefill")[0]
    lp0.cache.insert([b"x"])
    link = p.links["far"]
    link.controller.threshold = 400.0
    p.reconfigure(
        _config(
            datacenters={
                "local": {"prefill": ["http://lp0"], "decode": ["http://d0", "http://d1"]},
                "far": {"prefill": ["http://rp0"]},
            },
            threshold_tokens=300,
        )
    )
    assert p.pool("local", "prefill") == [lp0] and len(lp0.cache) == 1
    assert len(p.pool("local", "decode")) == 2
    assert p.links["far"] is link and link.controller.threshold == 400.0
    p.reconfigure(_config(threshold_tokens=500))
    assert link.controller.threshold == 500.0


def test_unbounded_link_never_raises_t() -> None:
    p = RoutingPolicy(_config(links={"far": {"capacity_gbps": None}}, kv_bytes_per_token=1e12))
    link = p.links["far"]
    link.send(0.0, 1e15)
    assert p.tick(1.0)["far-to-local"] == 100.0
    assert p.decide(toks(101), 1.1).route == "remote"


@given(
    n=st.integers(min_value=1, max_value=400),
    held_blocks=st.integers(min_value=0, max_value=40),
    t=st.integers(min_value=0, max_value=400),
)
@settings(max_examples=200, deadline=None)
def test_remote_exactly_when_uncached_exceeds_t(n: int, held_blocks: int, t: int) -> None:
    p = RoutingPolicy(_config(threshold_tokens=t))
    prompt = toks(n)
    hashes = p.decide(prompt, 0.0).hashes
    p.pool("local", "prefill")[0].cache.insert(hashes[:held_blocks])
    d = p.decide(prompt, 0.0)
    cached = min(n, min(held_blocks, len(hashes)) * 10)
    assert d.uncached_tokens == n - cached
    assert (d.route == "remote") == (n - cached > t)
    if d.route == "remote":
        assert d.prefill is not None and d.prefill.datacenter == "far"
        assert d.kv_bytes == 10.0 * 10 * math.ceil(n / 10) + 7.0  # decode holds none of it


def _conversation_after_others(p: RoutingPolicy) -> tuple[Any, Any]:
    """A 200-token first turn goes remote; 8 other 200-token prompts follow (each prefilled,
    its blocks recorded as the proxy does when the prefill answers); then the second turn,
    the first plus 50 tokens. Returns (first decision, second decision)."""

    def prefilled(tokens: list[int]) -> Any:
        d = p.decide(tokens, 0.0)
        assert d.route == "remote" and d.prefill is not None
        d.prefill.cache.insert(d.hashes)
        return d

    first_turn = toks(200)
    first = prefilled(first_turn)
    for k in range(1, 9):
        prefilled(toks(200, start=1000 * k))
    return first, p.decide([*first_turn, *toks(50, start=99_000)], 0.0)


def test_a_cache_model_as_large_as_the_engine_keeps_a_conversation_on_its_instance() -> None:
    """Each far engine holds 100 blocks (cacheBlocks): after 8 other prompts (160 blocks,
    half on each engine) the first turn's 20 blocks are still there, and the router knows it.
    A model of the default prefixCacheBlocks (40 here) forgot them, and sent the second turn
    to the engine the rotation gave, which recomputes all 200 tokens."""
    far = {"prefill": ["http://rp0", "http://rp1"], "cache_blocks": {"prefill": 100}}
    local = {"prefill": ["http://lp0"], "decode": ["http://d0"]}
    sized = RoutingPolicy(
        _config(datacenters={"local": local, "far": far}, prefix_cache_blocks=40)
    )
    assert [i.cache.capacity_blocks for i in sized.pool("far", "prefill")] == [100, 100]
    assert sized.pool("local", "prefill")[0].cache.capacity_blocks == 40
    first, second = _conversation_after_others(sized)
    assert second.prefill is first.prefill
    assert second.uncached_tokens == 250  # nothing held locally
    assert second.prefill is not None and second.prefill.cache.peek(second.hashes) == 20

    far_default = {"prefill": ["http://rp0", "http://rp1"]}
    small = RoutingPolicy(
        _config(datacenters={"local": local, "far": far_default}, prefix_cache_blocks=40)
    )
    first, second = _conversation_after_others(small)
    assert all(i.cache.peek(first.hashes) == 0 for i in small.pool("far", "prefill"))
    assert second.prefill is not first.prefill


def test_an_engine_without_prefix_cache_is_never_looked_up() -> None:
    """cacheBlocks 0 (an engine that keeps no prefix cache): its model holds nothing, so
    affinity never picks it for a prefix; reconfigure resizes models in place."""
    far = {"prefill": ["http://rp0", "http://rp1"], "cache_blocks": {"prefill": 0}}
    local = {"prefill": ["http://lp0"], "decode": ["http://d0"]}
    p = RoutingPolicy(_config(datacenters={"local": local, "far": far}))
    rp0 = p.pool("far", "prefill")[0]
    assert rp0.cache.capacity_blocks == 0
    far["cache_blocks"] = {"prefill": 30}
    p.reconfigure(_config(datacenters={"local": local, "far": far}))
    assert p.pool("far", "prefill")[0] is rp0 and rp0.cache.capacity_blocks == 30
