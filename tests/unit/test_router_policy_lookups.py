"""``RoutingPolicy.decide`` looks each instance's prefix cache up once per decision, with the
same answers (held blocks, LRU order) as looking it up again would give."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import pytest
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.policy import RoutingPolicy
from prfaas.planner.routing.prefix import PrefixCache


def _config(local: dict[str, list[str]], threshold: int) -> RouterConfig:
    return RouterConfig.model_validate(
        {
            "model": "m",
            "local_datacenter": "local",
            "datacenters": {"local": local, "far": {"prefill": ["http://rp0"]}},
            "links": {"far": {"name": "far-to-local", "capacity_gbps": 1.0}},
            "threshold_tokens": threshold,
            "kv_bytes_per_token": 10.0,
            "block_size": 10,
        }
    )


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``id`` of the cache behind every ``PrefixCache.match`` call."""
    calls: list[int] = []
    real = PrefixCache.match

    def counting(self: PrefixCache, hashes: Iterable[Hashable]) -> int:
        calls.append(id(self))
        return real(self, hashes)

    monkeypatch.setattr(PrefixCache, "match", counting)
    return calls


@pytest.mark.parametrize(
    ("local", "threshold", "route"),
    [
        ({"decode": ["http://d0"]}, 0, "remote"),  # decode pool doubles as local prefill pool
        ({"decode": ["http://d0"]}, 10_000, "local"),
        ({"prefill": ["http://lp0", "http://lp1"], "decode": ["http://d0"]}, 10_000, "local"),
        ({"prefill": ["http://lp0"], "decode": ["http://d0", "http://d1"]}, 0, "remote"),
    ],
)
def test_each_cache_is_looked_up_once(
    lookups: list[int], local: dict[str, list[str]], threshold: int, route: str
) -> None:
    p = RoutingPolicy(_config(local, threshold))
    prompt = list(range(200))
    first = p.decide(prompt, 0.0)
    for inst in p.instances.values():
        inst.cache.insert(first.hashes[:12])  # 120 of 200 tokens held everywhere
    lookups.clear()
    d = p.decide(prompt, 1.0)
    assert d.route == route
    assert len(lookups) == len(set(lookups))
    assert d.uncached_tokens == 80
    # Held blocks were marked most recently used, tail first (vLLM's order), once each.
    for inst in p.instances.values():
        assert list(inst.cache._blocks)[-12:] == first.hashes[:12][::-1]
