"""``bench/goodput.py``: its router file describes the emulated engines it runs in front of, and
its reordering of same-instant arrivals keeps every request whole."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

import numpy as np
from prfaas.engine.router.policy import RoutingPolicy
from prfaas.planner.routing.prefix import Chains
from prfaas.planner.sim.arrivals import RequestStream


def test_the_routers_cache_models_are_the_emulated_engines_caches(
    bench_script: Callable[[str], ModuleType],
) -> None:
    """Each prefill engine's model in the router is as large as that engine's emulated cache
    (``timing_of``: the scenario's ``cache_blocks``); the emulated decode engines keep none.
    With the router's default (65536 blocks of 16 tokens, 1/25 of a PrfaaS H200's) the router
    forgot a conversation 70 planned seconds on, and placed its next turn elsewhere."""
    bench = bench_script("goodput")
    args = argparse.Namespace(
        manifest=bench.ROOT / "crds/samples/case-study.yaml", time_scale=10.0, byte_scale=1e-3,
        emit_interval=0.2,
    )
    case = bench.load_case(args.manifest)
    cfg = case.scenarios["prfaas-pd"].config
    layout = bench.Layout(
        prefill={p.name: [f"http://{p.name}-{i}" for i in range(p.instances)]
                 for p in cfg.prefill},
        decode=[f"http://decode-{i}" for i in range(cfg.decode.instances)],
    )
    policy = RoutingPolicy(bench.prfaas_router_config(case, "prfaas-pd", layout, args))
    for p in cfg.prefill:
        engine = bench.timing_of(case, "prfaas-pd", p.name, args)
        assert engine.cache_blocks == p.cache_blocks > 65536
        pool = policy.pool(p.datacenter, "prefill")
        assert [i.url for i in pool] == layout.prefill[p.name]
        assert {i.cache.capacity_blocks for i in pool} == {engine.cache_blocks}
    assert bench.timing_of(case, "prfaas-pd", cfg.decode.name, args).cache_blocks == 0
    assert {i.cache.capacity_blocks for i in policy.pool(cfg.decode.datacenter, "decode")} == {0}


def test_reordering_shuffles_only_requests_that_arrive_at_one_instant(
    bench_script: Callable[[str], ModuleType],
) -> None:
    bench = bench_script("goodput")
    arrival = np.array([0.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 6.0])
    n = len(arrival)
    chains = Chains.from_lists([[0, 10 + i] for i in range(n)], 512)
    stream = RequestStream(
        arrival, np.arange(1, n + 1) * 100, np.arange(1, n + 1), np.arange(n), chains
    )
    orders = set()
    for seed in range(20):
        got = bench.reordered(stream, seed)
        assert np.array_equal(got.arrival_s, arrival)
        who = got.input_tokens // 100 - 1  # which original request sits at each place
        orders.add(tuple(who))
        assert sorted(who[:4]) == [0, 1, 2, 3] and sorted(who[4:7]) == [4, 5, 6] and who[7] == 7
        for k, i in enumerate(who):  # each request keeps its own columns and chain
            assert got.output_tokens[k] == i + 1 and got.prefix_id[k] == i
            assert got.block_chains.chain(k) == [0, 10 + i]
    assert len(orders) > 10


def test_measure_reads_each_requests_computed_prefill_tokens_from_its_prefill_record(
    bench_script: Callable[[str], ModuleType],
) -> None:
    """The tokens the prefill engine computed (misses + new text) are what the simulator's
    ``uncached_tokens`` predicts: a run's sums are compared beside the P90 TTFT."""
    bench = bench_script("goodput")
    stream = RequestStream(
        np.array([0.0, 1.0, 2.0]), np.array([900, 800, 700]), np.array([2, 2, 2]),
        np.arange(3),
    )
    samples = [bench.Sample(t, t + 0.5, t + 0.6, True) for t in (0.0, 0.1, 0.2)]
    base = {"prompt_tokens": 0, "arrived": 0.0, "prefill_start": None, "prefill_end": None,
            "first_token": None, "kv_end": None}
    records = [
        {**base, "role": "prefill", "request_id": "prfaas-1-0", "uncached_tokens": 388},
        {**base, "role": "decode", "request_id": "prfaas-1-0", "uncached_tokens": 0},
        {**base, "role": "prefill", "request_id": "prfaas-1-2", "uncached_tokens": 700},
        # another run's request 1:
        {**base, "role": "prefill", "request_id": "prfaas-0-1", "uncached_tokens": 5},
    ]
    args = argparse.Namespace(time_scale=10.0, byte_scale=1e-3)
    m = bench.measure("prfaas", 1.0, stream, samples, records, None, args, 100.0, "prfaas-1")
    assert m.computed[0] == 388 and m.computed[2] == 700
    assert np.isnan(m.computed[1])
