"""The router and the simulator decide identically: one generated trace (lengths, shared
prefixes, link capacity changes) runs through the simulator, and every call the simulator makes
into its routing core (arrivals, prefill and decode completions, KV deliveries, capacity
changes) is replayed, in the same order, into the router's ``RoutingPolicy`` the way the
router's proxy makes them. Path, instances, ``t``, uncached length and KV bytes must agree for
every request."""

from __future__ import annotations

from typing import Any

import numpy as np
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.policy import Decision, RoutingPolicy
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.links import LinkSpec, parse_schedule
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, RoutingSpec, SimConfig, Simulation

BLOCK = 16
CACHE_BLOCKS = 96  # small: requests evict each other
KV_PER_TOKEN = 4_000.0
KV_FIXED = 1e5
PLANNED_T = 300
PREFILL = DistServeForm(0.02, 2e-5, 1e-10, 0.0, 0.0, 0.0)
DECODE = DistServeForm(0.0, 0.0, 0.0, 0.004, 1e-9, 1e-4)
# (name, datacenter, instances) of each prefill pool; the first is local (PD-P).
POOLS = (("pd-p", "local", 2), ("far-a", "dc-a", 2), ("far-b", "dc-b", 3))
LINKS = {"dc-a": ("a-local", "0:0.3,8:0.05,16:1.0"), "dc-b": ("b-local", "0:0.2,12:0.02,20:0.4")}
DECODERS = 3


def _stream(n: int = 700, seed: int = 5) -> RequestStream:
    """Poisson arrivals at 30 req/s; lengths log-normal around 500 tokens; 60% of prompts
    extend one of 6 shared prefixes (documents asked about many times), the rest are unique."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / 30.0, n))
    inputs = np.clip(rng.lognormal(6.2, 0.8, n), 8, 4000).astype(np.int64)
    outputs = rng.integers(1, 40, n)
    shared = rng.random(n) < 0.6
    prefix = np.where(shared, rng.integers(0, 6, n), 1000 + np.arange(n))
    return RequestStream(arrival, inputs, outputs, prefix.astype(np.int64))


def _sim_config() -> SimConfig:
    return SimConfig(
        "replay",
        tuple(
            PrefillPool(name, dc, k, PREFILL, cache_blocks=CACHE_BLOCKS) for name, dc, k in POOLS
        ),
        DecodePool("pd-d", "local", DECODERS, DECODE, max_batch=4, cache_blocks=CACHE_BLOCKS),
        links=tuple(
            LinkSpec(name, dc, "local", 0.3, rtt_s=0.002, schedule=parse_schedule(sched))
            for dc, (name, sched) in LINKS.items()
        ),
        routing=RoutingSpec(threshold_tokens=PLANNED_T),
        kv_bytes_per_token=KV_PER_TOKEN,
        kv_fixed_bytes=KV_FIXED,
        block_tokens=BLOCK,
    )


def _router_config(capacity: dict[str, float]) -> RouterConfig:
    datacenters: dict[str, dict[str, list[str]]] = {"local": {"decode": []}}
    for name, dc, k in POOLS:
        datacenters.setdefault(dc, {})["prefill"] = [f"http://{name}-{i}" for i in range(k)]
    datacenters["local"]["decode"] = [f"http://pd-d-{i}" for i in range(DECODERS)]
    return RouterConfig.model_validate(
        {
            "model": "m",
            "local_datacenter": "local",
            "datacenters": datacenters,
            "links": {
                dc: {"name": name, "capacity_gbps": capacity[dc]} for dc, (name, _) in LINKS.items()
            },
            "threshold_tokens": PLANNED_T,
            "kv_bytes_per_token": KV_PER_TOKEN,
            "kv_fixed_bytes": KV_FIXED,
            "block_size": BLOCK,
            "prefix_cache_blocks": CACHE_BLOCKS,
        }
    )


class _Recorded(Simulation):
    """A simulation that logs every call it makes into its routing core, in order."""

    def __init__(self, config: SimConfig, stream: RequestStream) -> None:
        super().__init__(config, stream)
        self.log: list[tuple[Any, ...]] = []
        core = self._core
        decide = core.decide

        def recording(hashes: Any, n: int, now: float) -> Any:
            d = decide(hashes, n, now)
            thresholds = [link.controller.threshold for link, _ in core.remote]
            self.log.append(("decide", now, n, d, thresholds))
            return d

        core.decide = recording  # type: ignore[method-assign]

    def _on_prefill_done(self, idx: int, batch: list[int]) -> None:
        self.log.append(("prefill_done", list(batch)))
        super()._on_prefill_done(idx, batch)

    def _deliver(self, r: int) -> None:
        if self._remote[r]:
            self.log.append(("delivered", r))
        super()._deliver(r)

    def _decode_done(self, r: int) -> None:
        self.log.append(("decode_done", r))
        super()._decode_done(r)

    def _on_link_capacity(self, li: int, gbps: float) -> None:
        self.log.append(("capacity", self._links[li].link.spec.from_dc, gbps))
        super()._on_link_capacity(li, gbps)


def _tokens(stream: RequestStream, r: int) -> list[int]:
    """Token ids whose blocks are shared exactly as the simulator's prefix ids share them."""
    pid = int(stream.prefix_id[r])
    return [pid * 1_000_000 + k for k in range(int(stream.input_tokens[r]))]


def test_router_and_simulator_decide_identically() -> None:
    stream = _stream()
    sim = _Recorded(_sim_config(), stream)
    result = sim.run()
    capacity = {dc: float(sched.split(",")[0].split(":")[1]) for dc, (_, sched) in LINKS.items()}
    policy = RoutingPolicy(_router_config(capacity))
    urls = {}  # simulator instance → router URL
    for pool_idx, (name, _, k) in enumerate(POOLS):
        insts = [i for i in sim._instances if i.pool == pool_idx]
        assert len(insts) == k
        urls.update({id(inst): f"http://{name}-{j}" for j, inst in enumerate(insts)})
    urls.update({id(d): f"http://pd-d-{j}" for j, d in enumerate(sim._decoders)})
    link_dc = {id(state): state.link.spec.from_dc for state in sim._links}

    decisions: list[Decision] = []
    paths = {"local": 0, "remote": 0}
    remote_dcs: set[str] = set()
    thresholds_seen: set[float] = set()
    for entry in sim.log:
        kind = entry[0]
        if kind == "decide":
            _, now, n, want, want_t = entry
            r = len(decisions)
            assert n == stream.input_tokens[r]
            got = policy.decide(_tokens(stream, r), now)
            decisions.append(got)
            assert got.route == want.route, r
            assert got.decode.url == urls[id(want.decode)], r
            assert got.prefill is not None and want.prefill is not None
            assert got.prefill.url == urls[id(want.prefill)], r
            assert got.uncached_tokens == want.uncached_tokens, r
            assert got.kv_bytes == want.kv_bytes, r
            if want.link is None:
                assert got.link is None
            else:
                assert got.link is not None and got.link.datacenter == link_dc[id(want.link)]
                remote_dcs.add(got.link.datacenter)
            got_t = [link.controller.threshold for link in policy.links.values()]
            assert got_t == want_t, r
            thresholds_seen.update(got_t)
            paths[got.route] += 1
            # The proxy's dispatch bookkeeping.
            if got.link is not None:
                got.link.send(now, got.kv_bytes, got.uncached_tokens)
            got.decode.started()
            got.prefill.started()
        elif kind == "prefill_done":
            for r in entry[1]:
                d = decisions[r]
                assert d.prefill is not None
                d.prefill.finished()
                d.prefill.cache.insert(d.hashes)
        elif kind == "delivered":
            d = decisions[entry[1]]
            assert d.link is not None
            d.link.delivered(d.kv_bytes)
        elif kind == "decode_done":
            d = decisions[entry[1]]
            d.decode.finished()
            d.decode.cache.insert(d.hashes)
        else:
            _, dc, gbps = entry
            capacity[dc] = gbps
            policy.reconfigure(_router_config(capacity))

    assert len(decisions) == len(stream)
    # The trace exercised what it is meant to: both paths, both links, t moving, KV bytes
    # that skip a prefix decode holds, and every remote request's bytes as the result's.
    assert min(paths.values()) > 50, paths
    assert remote_dcs == {"dc-a", "dc-b"}
    assert len(thresholds_seen) > 3, thresholds_seen
    full = [KV_PER_TOKEN * d.prompt_tokens + KV_FIXED for d in decisions if d.route == "remote"]
    moved = [d.kv_bytes for d in decisions if d.route == "remote"]
    assert any(m < f for m, f in zip(moved, full, strict=True))
    offered = sorted(b for _, (_, nbytes) in result.offered.items() for b in nbytes.tolist())
    assert offered == sorted(moved)
    assert all(i.in_flight == 0 for i in policy.instances.values())
