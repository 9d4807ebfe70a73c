"""Aggregated (chunked-prefill) pools in the simulator: decodes first, then prompt chunks up to
the token budget, each step timed by the mixed-step model (``latency.mixed``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.distributions import LogNormal
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.latency.mixed import Chunk, mixed_step_seconds
from prfaas.planner.latency.model import DistServeForm, LatencyModel
from prfaas.planner.plan import Plan
from prfaas.planner.problem import LinkInput, Problem
from prfaas.planner.shapes import aggregated_instance, best_option, mean_prefill_seconds
from prfaas.planner.sim.arrivals import FixedLengths, RequestStream, synthetic_stream
from prfaas.planner.sim.links import LinkSpec
from prfaas.planner.sim.scenarios import aggregated_scenarios, run_scenarios, scenarios
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, RoutingSpec, SimConfig, simulate
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
# Prefill a + b·l + c·l², decode d + e·context + f·batch (DistServe's form).
LAT = DistServeForm(0.01, 4e-5, 2e-9, 0.008, 3e-8, 2e-4)


def _lengths(median: float, sigma: float) -> LogNormal:
    return LogNormal(math.log(median), sigma, 1.0, 64.0 * median)


def _aggregated(
    budget: int,
    *,
    lat: LatencyModel = LAT,
    instances: int = 1,
    max_batch: int = 256,
    kv: int = 0,
    datacenter: str = "dc",
) -> DecodePool:
    return DecodePool(
        "agg",
        datacenter,
        instances,
        lat,
        max_batch=max_batch,
        kv_capacity_tokens=kv,
        aggregated=True,
        token_budget=budget,
    )


def _only(pool: DecodePool) -> SimConfig:
    return SimConfig("aggregated", (), pool)


def _reference(
    stream: RequestStream, budget: float, max_batch: int, lat: DistServeForm = LAT
) -> tuple[np.ndarray, np.ndarray]:
    """One aggregated instance, one loop iteration per engine step (the slow, obvious way):
    decodes first, then the queued prompts in arrival order as chunks while the budget and
    ``max_num_seqs`` allow; a prompt's last chunk emits its first token and it decodes on.
    Returns (first token, finish)."""
    arrivals = stream.arrival_s.tolist()
    ins = stream.input_tokens.tolist()
    outs = stream.output_tokens.tolist()
    n = len(arrivals)
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    done, generated = [0] * n, [0] * n
    prompts: list[int] = []
    members: dict[int, int] = {}  # request -> context
    now, nxt = 0.0, 0
    while nxt < n or prompts or members:
        while nxt < n and arrivals[nxt] <= now:
            prompts.append(nxt)
            nxt += 1
        if not prompts and not members:
            now = arrivals[nxt]
            continue
        b = len(members)
        left = budget - b
        slots = max_batch - b - (1 if prompts and done[prompts[0]] else 0)
        chunks: list[tuple[int, int]] = []
        for r in prompts:
            if left <= 0 or (done[r] == 0 and slots <= 0):
                break
            c = int(min(ins[r] - done[r], left))
            chunks.append((r, c))
            left -= c
            slots -= 1 if done[r] == 0 else 0
        now += mixed_step_seconds(
            lat, b, sum(members.values()), [Chunk(c, done[r]) for r, c in chunks]
        )
        for r in list(members):
            members[r] += 1
            generated[r] += 1
            if generated[r] == outs[r]:
                finish[r] = now
                del members[r]
        for r, c in chunks:
            done[r] += c
            if done[r] == ins[r]:
                prompts.remove(r)
                first[r] = now
                generated[r] = 1
                if outs[r] == 1:
                    finish[r] = now
                else:
                    members[r] = ins[r] + 1
    return first, finish


@pytest.mark.parametrize(("budget", "max_batch"), [(512, 256), (2048, 12), (0, 256)])
def test_event_engine_equals_a_step_by_step_reference(budget: int, max_batch: int) -> None:
    """Closed-form decode epochs, cut where a prompt arrives, and one-by-one mixed steps give
    exactly the times of a plain per-step loop (budget 0: unlimited)."""
    stream = synthetic_stream(400, 6.0, _lengths(900, 0.8), _lengths(60, 0.7), seed=3)
    res = simulate(_only(_aggregated(budget, max_batch=max_batch)), stream)
    first, finish = _reference(stream, budget or math.inf, max_batch)
    np.testing.assert_allclose(res.first_token_s, first, rtol=1e-9)
    np.testing.assert_allclose(res.finish_s, finish, rtol=1e-9)
    # Local requests: the first token is the end of the step that finishes the last chunk.
    np.testing.assert_array_equal(res.first_token_s, res.prefill_end_s)
    assert not res.remote.any()


def test_unlimited_budget_without_decodes_is_todays_prefill() -> None:
    """One-token outputs (nothing decodes), no budget and no sequence cap: every step takes all
    queued prompts, as today's prefill instance batches its queue; with no per-batch intercept
    a batch's time is the sum of its prompts' times, so the two runs agree request by request."""
    lat = DistServeForm(0.0, 5e-5, 3e-9, 0.01, 0.0, 0.0)
    stream = synthetic_stream(3000, 9.0, _lengths(1500, 0.9), FixedLengths(1), seed=7)
    today = SimConfig("prefill", (PrefillPool("p", "dc", 1, lat, token_budget=10**9),), None)
    agg = simulate(_only(_aggregated(0, lat=lat, max_batch=10**6)), stream)
    ref = simulate(today, stream)
    assert ref.ttft.mean() > 1.5 * lat.prefill_seconds([1500])  # queueing happened
    np.testing.assert_allclose(agg.ttft, ref.ttft, rtol=1e-9)


@pytest.mark.parametrize("rate", [2.0, 5.0])
def test_chunked_prompts_queue_as_md1(rate: float) -> None:
    """Uniform prompts, one-token outputs, a prefill linear in the tokens: a prompt's chunks
    add up to its whole prefill time D, whatever the budget, so the instance is an M/D/1
    queue: mean TTFT = D + λD²/(2(1 − λD)) (Pollaczek-Khinchine)."""
    d = 0.1
    lat = DistServeForm(0.0, d / 512, 0.0, 0.01, 0.0, 0.0)
    means = []
    for seed in (1, 2):
        stream = synthetic_stream(20_000, rate, FixedLengths(512), FixedLengths(1), seed=seed)
        means.append(simulate(_only(_aggregated(128, lat=lat)), stream).ttft.mean())
    expected = d + rate * d * d / (2 * (1 - rate * d))
    assert float(np.mean(means)) == pytest.approx(expected, rel=0.02)


def test_a_lone_prompt_takes_its_whole_prefill_in_chunks() -> None:
    """At low load a prompt meets no one: its TTFT is the sum of its chunk steps, which the
    mixed-step model makes exactly today's prefill time P([L]) for any budget."""
    arrivals = np.arange(5) * 10.0
    stream = RequestStream(arrivals, np.full(5, 3000), np.full(5, 1), np.full(5, -1))
    for budget in (256, 1000, 3000, 0):
        res = simulate(_only(_aggregated(budget)), stream)
        np.testing.assert_allclose(res.ttft, LAT.prefill_seconds([3000]), rtol=1e-12)


def test_every_request_finishes_once_and_in_order() -> None:
    """Conservation with offload, KV pressure and several instances: every request finishes,
    after its first token, after its arrival; local ones prefilled here, remote ones arriving
    with their KV; each remote request's KV crossed the link."""
    stream = synthetic_stream(1500, 9.0, _lengths(2500, 1.0), _lengths(120, 0.8), seed=11)
    config = SimConfig(
        "agg+offload",
        (PrefillPool("far", "dc-a", 2, LAT),),
        _aggregated(1024, instances=2, max_batch=48, kv=60_000, datacenter="dc-b"),
        links=(LinkSpec("a-b", "dc-a", "dc-b", 100.0, 0.01),),
        routing=RoutingSpec(threshold_tokens=4000.0, adaptive=False),
        kv_bytes_per_token=1e4,
    )
    res = simulate(config, stream)
    assert np.isfinite(res.finish_s).all()
    assert (res.first_token_s >= res.arrival_s).all()
    assert (res.finish_s >= res.first_token_s).all()
    remote = res.remote
    assert 0 < remote.sum() < len(stream)
    assert (stream.input_tokens[remote] > 4000).all()
    assert (stream.input_tokens[~remote] <= 4000).all()
    # Local: prefilled here, in chunks (first token = last chunk's step end).
    local = ~remote
    np.testing.assert_array_equal(res.first_token_s[local], res.prefill_end_s[local])
    assert (res.prefill_start_s[local] >= res.prefill_queued_s[local]).all()
    # Remote: first token from a decode step after the KV arrived.
    assert (res.first_token_s[remote] > res.kv_ready_s[remote]).all()
    assert res.preemptions > 0  # the KV capacity bound
    sent = res.offered["a-b"][1].sum()
    blocks = -(-stream.input_tokens[remote] // config.block_tokens)  # whole KV blocks
    assert sent == pytest.approx(1e4 * config.block_tokens * blocks.sum(), rel=1e-9)


def test_prefill_chunks_slow_the_decodes() -> None:
    """TPOT is the mean step a decode lives through: more prefill work per step (longer prompts
    at the same rate) makes the steps, and TPOT, longer; the same requests prefilled remotely
    (arriving with their KV) leave the steps to the decodes."""
    tpot = {}
    for prompt in (250, 1000, 4000):
        stream = synthetic_stream(1500, 4.0, FixedLengths(prompt), FixedLengths(200), seed=5)
        res = simulate(_only(_aggregated(2048)), stream)
        tpot[prompt] = float(np.median(res.tpot))
    assert tpot[250] < tpot[1000] < tpot[4000]
    one_decode = LAT.decode_step_seconds(1, 4000)
    assert tpot[4000] > 1.5 * one_decode
    stream = synthetic_stream(1500, 4.0, FixedLengths(4000), FixedLengths(200), seed=5)
    offload = SimConfig(
        "all-remote",
        (PrefillPool("far", "dc-a", 4, LAT),),
        _aggregated(2048, datacenter="dc-b"),
        links=(LinkSpec("a-b", "dc-a", "dc-b", 400.0, 0.0),),
        routing=RoutingSpec(threshold_tokens=0.0, adaptive=False),
        kv_bytes_per_token=100.0,
    )
    res = simulate(offload, stream)
    assert res.remote.all()
    assert float(np.median(res.tpot)) < 0.8 * tpot[4000]


@pytest.mark.parametrize(("prompt", "tpot_slo"), [(4000, 0.03), (2000, 0.015), (1000, 0.02)])
def test_the_planned_budget_keeps_tpot_p90_within_the_slo_at_the_planned_rate(
    prompt: int, tpot_slo: float
) -> None:
    """``planner.shapes`` sizes one llama-3-8b H200 instance (log-normal prompts, 300 output
    tokens); simulated at its planned rate with its token budget, TPOT P90 stays within the
    SLO. Twice that budget at the same rate does not: the budget is what holds TPOT."""
    lat = latency_model(MODELS["llama-3-8b"], GPUS["H200"], 1, 1)
    lengths = LogNormal(math.log(prompt) - 0.18, 0.6, 1.0, 64.0 * prompt)
    pt = aggregated_instance(
        lat,
        lengths.mean,
        300,
        lengths.mean + 150,
        tpot_slo,
        30.0,
        4e5,
        256,
        prefill_s=mean_prefill_seconds(lat, lengths),
    )
    assert pt.limit == "tpot"
    stream = synthetic_stream(3000, pt.rate_rps, lengths, FixedLengths(300), seed=1)
    p90 = {}
    for budget in (pt.token_budget, 2 * pt.token_budget):
        pool = _aggregated(budget, lat=lat, kv=400_000)
        p90[budget] = float(np.percentile(simulate(_only(pool), stream).tpot, 90))
    assert p90[pt.token_budget] <= tpot_slo
    assert p90[2 * pt.token_budget] > tpot_slo


def test_bad_aggregated_configurations_are_refused() -> None:
    from prfaas.planner.sim.errors import SimulatorError

    stream = synthetic_stream(10, 1.0, FixedLengths(100), FixedLengths(2), seed=1)
    with pytest.raises(SimulatorError, match="token_budget"):
        simulate(_only(_aggregated(-1)), stream)
    both = SimConfig("both", (PrefillPool("p", "dc", 1, LAT),), _aggregated(512))
    with pytest.raises(SimulatorError, match="aggregated"):
        simulate(both, stream)


@pytest.fixture(scope="module")
def case_study() -> tuple[Problem, Plan]:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    return problem, plan(problem)


def test_scenarios_add_the_aggregated_shape_where_it_ranks_best(
    case_study: tuple[Problem, Plan],
) -> None:
    """``prfaas simulate`` / ``plan --simulate`` simulate an aggregated pool where the plan's
    shape comparison ranks it best (goodput per cost), beside the deployed split."""
    problem, case = case_study
    assert [s.name for s in scenarios(problem, case)] == [
        "prfaas-pd",
        "homogeneous-pd",
        "naive-heterogeneous",
    ]  # the split with offload ranks best here
    w = problem.workload
    assert isinstance(w.input_length, LogNormal)
    long = replace(
        problem,
        workload=replace(
            w,
            input_length=replace(w.input_length, mu=math.log(64_000) - 0.5),
            uncached_length=None,
        ),
        slo=replace(problem.slo, tpot_s=0.07),
    )
    long_plan = plan(long)
    assert best_option(long_plan.shapes).shape == "aggregated+offload"
    found = {s.name: s for s in scenarios(long, long_plan)}
    row = next(o for o in long_plan.shapes if o.shape == "aggregated+offload")
    agg = found["aggregated+offload"]
    assert agg.planned_rps == row.goodput_rps
    assert agg.config.decode is not None and agg.config.decode.aggregated
    assert agg.config.decode.token_budget == row.token_budget


def test_the_aggregated_offload_scenario_runs_as_planned(case_study: tuple[Problem, Plan]) -> None:
    """The case study's aggregated+offload row as a configuration: 8 H20 aggregated instances
    with the row's budget, PrfaaS above its ``t``. At 0.8 × its planned rate, long prompts go
    remote, short ones are chunk-prefilled locally, and TPOT P90 stays within the SLO."""
    problem, case = case_study
    (sc,) = aggregated_scenarios(problem, case, every=True)  # "aggregated" serves no rate
    row = next(o for o in case.shapes if o.shape == "aggregated+offload")
    dec = sc.config.decode
    assert sc.name == "aggregated+offload" and dec is not None
    assert (dec.instances, dec.token_budget) == (row.instances, row.token_budget)
    assert [p.datacenter for p in sc.config.prefill] == ["dc-a"]
    (run,) = run_scenarios(problem, [sc], requests=300, rate=0.8 * sc.planned_rps, seed=1)
    res = run.result
    assert 0.2 < res.remote.mean() < 0.8
    local = ~res.remote
    np.testing.assert_array_equal(res.first_token_s[local], res.prefill_end_s[local])
    assert float(np.percentile(res.tpot, 90)) <= problem.slo.tpot_s


def test_several_decode_clusters_switch_to_aggregated_where_it_ranks_best(
    case_study: tuple[Problem, Plan],
) -> None:
    """Two decode clusters (the case study's and a 32-GPU one in dc-c) with 64k-token prompts
    at a 70 ms TPOT SLO: aggregated+offload ranks best for both, so the multi-cluster scenario
    serves each by its aggregated pool (its budget, its row's ``t`` over the remotes the plan
    gives its router, no PD-P) and its local prompts are chunk-prefilled there."""
    problem, _ = case_study
    w = problem.workload
    assert isinstance(w.input_length, LogNormal)
    base = next(c for c in problem.clusters if c.kind == "decode")
    two = replace(
        problem,
        clusters=(*problem.clusters, replace(base, name="pd-h20-c", datacenter="dc-c", count=32)),
        links=(*problem.links, LinkInput("a-to-c", "dc-a", "dc-c", 100.0, 1.0)),
        workload=replace(
            w,
            input_length=replace(w.input_length, mu=math.log(64_000) - 0.5),
            uncached_length=None,
        ),
        slo=replace(problem.slo, tpot_s=0.07),
    )
    planned = plan(two)
    (sc,) = aggregated_scenarios(two, planned)
    assert sc.name == "aggregated-where-best"
    assert [s.name for s in scenarios(two, planned)][-1] == "aggregated-where-best"
    rows = {(o.decode_cluster, o.shape): o for o in planned.shapes}
    for c in sc.config.clusters:
        row = rows[(c.name, "aggregated+offload")]
        assert c.decode.aggregated and c.decode.token_budget == row.token_budget
        assert c.local == () and c.remotes and c.routing.threshold_tokens == row.threshold_tokens
    assert all(p.datacenter == "dc-a" for p in sc.config.prefill)  # no PD-P left
    (run,) = run_scenarios(two, [sc], requests=300, rate=0.5 * sc.planned_rps, seed=1)
    res = run.result
    assert 0 < res.remote.mean() < 1
    local = ~res.remote
    np.testing.assert_array_equal(res.first_token_s[local], res.prefill_end_s[local])
    assert float(np.percentile(res.tpot, 90)) <= two.slo.tpot_s


def test_a_cluster_too_small_to_split_is_simulated_as_the_aggregated_engine_it_runs() -> None:
    """``crds/samples/local.yaml``: dc-b has one decode engine and no PD-P; vLLM runs it with
    chunked prefill, so the simulator's pool there is aggregated at the engine's token budget
    (no separate prefill instances on the same GPU), and its local prompts share its steps."""
    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"
    (problem,) = problems_from_manifests(load_manifests(sample).resources)
    p = plan(problem)
    (d,) = [c for c in p.clusters if c.role == "decode"]
    assert not [c for c in p.clusters if c.role == "prefill" and c.datacenter == d.datacenter]
    cfg = next(s.config for s in scenarios(problem, p) if s.name == "prfaas-pd")
    assert cfg.decode.aggregated
    assert cfg.decode.token_budget == (d.max_num_batched_tokens or problem.max_num_batched_tokens)
    assert cfg.decode.token_budget == 2048  # the sample's spec.engine.maxNumBatchedTokens
    assert [pool.datacenter for pool in cfg.prefill] == ["dc-a"]
    w = problem.workload
    r = simulate(cfg, synthetic_stream(400, 1.0, w.input_length, w.output_length, seed=3), seed=3)
    local = ~r.remote
    assert local.any() and r.remote.any()
    # The aggregated engine prefilled its local prompts itself, in its own steps.
    assert np.isfinite(r.first_token_s[local]).all()
    assert (r.prefill_end_s[local] <= r.first_token_s[local]).all()
