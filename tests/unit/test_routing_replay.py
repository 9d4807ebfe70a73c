"""The router and the simulator decide identically: a generated trace (lengths, shared prefixes,
link capacity changes) runs through the simulator, and every call the simulator makes into its
routing core (arrivals, prefill and decode completions, KV deliveries, capacity changes) is
replayed, in the same order, into the router's ``RoutingPolicy`` the way the router's proxy makes
them, with token ids whose block hashes share exactly what the trace's chains share. Path,
instances, ``t``, uncached (cached) length and KV bytes must agree for every request (KV bytes in
whole KV blocks: the router's engines hash at their KV block, so the simulated engines' block is
the chains' block). Two traces: ``prefix_id`` rows (16-token chains) and a Mooncake-format JSONL
(512-token ``hash_ids``: conversations that extend, documents asked about many times)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.policy import Decision, RoutingPolicy
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.links import LinkSpec, parse_schedule
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, RoutingSpec, SimConfig, Simulation
from prfaas.planner.sim.traces import load_trace

KV_PER_TOKEN = 4_000.0
KV_FIXED = 1e5
PREFILL = DistServeForm(0.02, 2e-5, 1e-10, 0.0, 0.0, 0.0)
DECODE = DistServeForm(0.0, 0.0, 0.0, 0.004, 1e-9, 1e-4)
AGGREGATED = DistServeForm(0.02, 2e-5, 1e-10, 0.004, 1e-9, 1e-4)  # prefills and decodes
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


def _mooncake_stream(tmp_path: Path, n: int = 600, seed: int = 8) -> RequestStream:
    """A Mooncake-format trace: every prompt starts with block 0 (a shared system prompt); 70%
    are turns of 10 conversations that extend their previous turn by 1-3 blocks, 30% ask one of
    3 documents; the partial last block of each prompt is its own."""
    rng = np.random.default_rng(seed)
    next_id = 1

    def fresh(k: int) -> list[int]:
        nonlocal next_id
        next_id += k
        return list(range(next_id - k, next_id))

    convs = [[0] for _ in range(10)]
    docs = [[0, *fresh(6)] for _ in range(3)]
    ms = np.cumsum(rng.exponential(1000 / 30.0, n)).astype(np.int64)
    lines = []
    for r in range(n):
        if rng.random() < 0.7:
            c = int(rng.integers(0, len(convs)))
            if len(convs[c]) > 10:
                convs[c] = [0]  # a new conversation in that slot
            convs[c] = [*convs[c], *fresh(int(rng.integers(1, 4)))]
            ids = convs[c]
        else:
            ids = docs[int(rng.integers(0, len(docs)))]
        tail = int(rng.integers(0, 512))
        rec = {
            "timestamp": int(ms[r]),
            "input_length": 512 * len(ids) + tail,
            "output_length": int(rng.integers(1, 40)),
            "hash_ids": [*ids, *fresh(1)] if tail else list(ids),
        }
        lines.append(json.dumps(rec))
    path = tmp_path / "mooncake.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return load_trace(path)


@dataclass(frozen=True)
class Case:
    stream: RequestStream
    planned_t: int
    cache_blocks: int
    """Per instance, in the chains' blocks (the router's unit)."""
    aggregated: bool = False
    """The local pool is aggregated (chunked prefill): no PD-P; the decode instances prefill
    local requests themselves and decode the remote ones."""

    @property
    def pools(self) -> tuple[tuple[str, str, int], ...]:
        return POOLS[1:] if self.aggregated else POOLS

    @property
    def block(self) -> int:
        return self.stream.block_chains.block_tokens


def _sim_config(case: Case) -> SimConfig:
    return SimConfig(
        "replay",
        tuple(
            PrefillPool(name, dc, k, PREFILL, cache_blocks=case.cache_blocks)
            for name, dc, k in case.pools
        ),
        DecodePool(
            "pd-d",
            "local",
            DECODERS,
            AGGREGATED if case.aggregated else DECODE,
            max_batch=4,
            cache_blocks=case.cache_blocks,
            aggregated=case.aggregated,
            token_budget=512,
        ),
        links=tuple(
            LinkSpec(name, dc, "local", 0.3, rtt_s=0.002, schedule=parse_schedule(sched))
            for dc, (name, sched) in LINKS.items()
        ),
        routing=RoutingSpec(threshold_tokens=case.planned_t),
        kv_bytes_per_token=KV_PER_TOKEN,
        kv_fixed_bytes=KV_FIXED,
        block_tokens=case.block,
    )


def _router_config(case: Case, capacity: dict[str, float]) -> RouterConfig:
    datacenters: dict[str, dict[str, list[str]]] = {"local": {"decode": []}}
    for name, dc, k in case.pools:
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
            "threshold_tokens": case.planned_t,
            "kv_bytes_per_token": KV_PER_TOKEN,
            "kv_fixed_bytes": KV_FIXED,
            "block_size": case.block,
            "prefix_cache_blocks": case.cache_blocks,
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
    """Token ids whose full blocks are shared exactly as the request's chain shares them: block
    id ``b`` is the tokens ``b·B … b·B + B − 1``; tokens past the chain are the request's own."""
    chains = stream.block_chains
    bs = chains.block_tokens
    n = int(stream.input_tokens[r])
    toks = [b * bs + k for b in chains.chain(r) for k in range(bs)][:n]
    return toks + [-(r + 1) * 1_000_000 - k for k in range(n - len(toks))]


@pytest.fixture(params=["prefix_id", "mooncake", "aggregated"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    if request.param == "prefix_id":
        return Case(_stream(), planned_t=300, cache_blocks=96)
    if request.param == "aggregated":
        return Case(_stream(), planned_t=300, cache_blocks=96, aggregated=True)
    return Case(_mooncake_stream(tmp_path), planned_t=1500, cache_blocks=12)


def test_router_and_simulator_decide_identically(case: Case) -> None:
    stream = case.stream
    sim = _Recorded(_sim_config(case), stream)
    result = sim.run()
    capacity = {dc: float(sched.split(",")[0].split(":")[1]) for dc, (_, sched) in LINKS.items()}
    policy = RoutingPolicy(_router_config(case, capacity))
    urls = {}  # simulator instance → router URL
    for pool_idx, (name, _, k) in enumerate(case.pools):
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
            if case.aggregated and want.route == "local":
                # The aggregated instance prefills it itself (the router's decode-prefills path).
                assert got.prefill is None and want.prefill is None, r
            else:
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
            if got.prefill is not None:
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
            policy.reconfigure(_router_config(case, capacity))

    assert len(decisions) == len(stream)
    # The trace exercised what it is meant to: both paths, both links, t moving, KV bytes
    # that skip a prefix decode holds, and every remote request's bytes as the result's.
    assert min(paths.values()) > 50, paths
    assert remote_dcs == {"dc-a", "dc-b"}
    assert len(thresholds_seen) > 3, thresholds_seen
    block_bytes = KV_PER_TOKEN * case.block
    full = [
        block_bytes * -(-d.prompt_tokens // case.block) + KV_FIXED
        for d in decisions
        if d.route == "remote"
    ]
    moved = [d.kv_bytes for d in decisions if d.route == "remote"]
    assert all((m - KV_FIXED) % block_bytes == 0 for m in moved)  # whole KV blocks
    assert all(m <= f for m, f in zip(moved, full, strict=True))
    assert any(m < f for m, f in zip(moved, full, strict=True))
    # Prefix hits happened on both sides of the comparison (the chains were exercised).
    assert sum(d.uncached_tokens < d.prompt_tokens for d in decisions) > len(decisions) // 5
    offered = sorted(b for _, (_, nbytes) in result.offered.items() for b in nbytes.tolist())
    assert offered == sorted(moved)
    assert all(i.in_flight == 0 for i in policy.instances.values())
