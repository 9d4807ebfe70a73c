"""Decode by continuous batching: the event-jumping engine equals a step-by-step reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, SimConfig, simulate

LAT = DistServeForm(0.0, 0.0, 0.0, 0.012, 2e-8, 3e-4)


def _reference(
    stream: RequestStream, max_batch: int, kv_cap: float = math.inf, lat: DistServeForm = LAT
) -> tuple[np.ndarray, np.ndarray, int]:
    """One decode instance, one loop iteration per token step (the slow, obvious way), with
    vLLM's admission (FCFS while ``max_batch`` and the KV capacity allow) and recompute
    preemption of the newest sequence. Returns (first token, finish, preemptions)."""
    arrivals = stream.arrival_s.tolist()
    ins = stream.input_tokens.tolist()
    outs = stream.output_tokens.tolist()
    first = np.full(len(arrivals), np.nan)
    finish = np.full(len(arrivals), np.nan)
    generated = [0] * len(arrivals)
    waiting: list[int] = []
    members: dict[int, int] = {}  # request -> context, in admission order
    preemptions = 0
    now = 0.0
    nxt = 0
    while nxt < len(arrivals) or waiting or members:
        while nxt < len(arrivals) and arrivals[nxt] <= now:
            waiting.append(nxt)
            nxt += 1
        while len(members) > 1 and sum(members.values()) + len(members) > kv_cap:
            newest = list(members)[-1]
            del members[newest]
            waiting.insert(0, newest)
            preemptions += 1
        extra = 0.0
        while waiting and len(members) < max_batch:
            r = waiting[0]
            ctx = ins[r] + generated[r]
            if members and sum(members.values()) + len(members) + ctx + 1 > kv_cap:
                break
            waiting.pop(0)
            members[r] = ctx
            if generated[r]:
                extra += lat.prefill_seconds([ctx])
        if not members:
            now = arrivals[nxt]
            continue
        now += extra + lat.decode_step_seconds(len(members), sum(members.values()))
        for r in list(members):
            members[r] += 1
            generated[r] += 1
            if generated[r] == 1:
                first[r] = now
            if generated[r] == outs[r]:
                finish[r] = now
                del members[r]
    return first, finish, preemptions


def _stream(n: int, rate: float, seed: int) -> RequestStream:
    rng = np.random.default_rng(seed)
    return RequestStream(
        np.cumsum(rng.exponential(1.0 / rate, n)),
        rng.integers(50, 3000, n),
        rng.integers(1, 120, n),
        np.full(n, -1),
    )


@pytest.mark.parametrize(("rate", "max_batch"), [(5.0, 4), (20.0, 8), (60.0, 32), (2.0, 1)])
def test_decode_matches_per_step_reference(rate: float, max_batch: int) -> None:
    stream = _stream(400, rate, seed=int(rate))
    config = SimConfig("decode-only", (), DecodePool("d", "dc", 1, LAT, max_batch=max_batch))
    res = simulate(config, stream)
    first, finish, _ = _reference(stream, max_batch)
    assert np.allclose(res.finish_s, finish, rtol=1e-9, atol=1e-9)
    assert np.allclose(res.first_token_s, first, rtol=1e-9, atol=1e-9)
    # The engine jumps between membership changes: far fewer events than token steps.
    assert res.events < 4 * len(stream)


def test_decode_events_grow_with_requests_not_tokens() -> None:
    short = _stream(300, 10.0, seed=1)
    long = RequestStream(
        short.arrival_s, short.input_tokens, short.output_tokens * 50, short.prefix_id
    )
    config = SimConfig("decode-only", (), DecodePool("d", "dc", 1, LAT, max_batch=16))
    a, b = simulate(config, short), simulate(config, long)
    assert b.events <= a.events * 1.1
    assert b.finish_s.max() > 10 * a.finish_s.max() / 2  # while simulating far more tokens


def test_decode_emits_every_output_token_and_the_first_ends_ttft() -> None:
    # vLLM's NIXL decode instance emits token 1 after its first step over the pulled KV, so
    # 11 output tokens take 11 steps; TPOT averages the 10 gaps after the first token.
    stream = RequestStream(np.array([0.0]), np.array([1000]), np.array([11]), np.array([-1]))
    config = SimConfig("decode-only", (), DecodePool("d", "dc", 1, LAT, max_batch=4))
    res = simulate(config, stream)
    steps = [LAT.decode_step_seconds(1, 1000 + k) for k in range(11)]
    assert res.ttft[0] == pytest.approx(steps[0])
    assert res.ttft_prefill_end[0] == 0.0
    assert res.finish_s[0] == pytest.approx(sum(steps))
    assert res.tpot[0] == pytest.approx(sum(steps[1:]) / 10)


@pytest.mark.parametrize(("rate", "max_batch", "kv_cap"), [(20.0, 16, 6000), (60.0, 64, 20000)])
def test_kv_capacity_limits_admission_and_preempts_like_the_reference(
    rate: float, max_batch: int, kv_cap: int
) -> None:
    lat = DistServeForm(0.0, 1e-5, 0.0, 0.012, 2e-8, 3e-4)  # recompute costs prefill time
    stream = _stream(400, rate, seed=7)
    pool = DecodePool("d", "dc", 1, lat, max_batch=max_batch, kv_capacity_tokens=kv_cap)
    res = simulate(SimConfig("kv", (), pool), stream)
    first, finish, preemptions = _reference(stream, max_batch, kv_cap, lat)
    assert preemptions > 0 and res.preemptions == preemptions
    assert np.allclose(res.finish_s, finish, rtol=1e-9, atol=1e-9)
    assert np.allclose(res.first_token_s, first, rtol=1e-9, atol=1e-9)
    # The same cap counted in sequences alone would admit more and wait less.
    seqs = simulate(SimConfig("seqs", (), DecodePool("d", "dc", 1, lat, max_batch)), stream)
    assert seqs.preemptions == 0
    assert np.percentile(seqs.ttft, 90) < np.percentile(res.ttft, 90)


def test_identical_arrivals_share_a_prefill_batch_and_start_decoding_together() -> None:
    prefill = DistServeForm(0.01, 1e-5, 0.0, 0.0, 0.0, 0.0)
    k = 4
    stream = RequestStream(
        np.zeros(k), np.full(k, 500), np.full(k, 8), np.full(k, -1)
    )
    config = SimConfig(
        "ties",
        (PrefillPool("p", "dc", 1, prefill, token_budget=4096),),
        DecodePool("d", "dc", 1, LAT, max_batch=8),
    )
    res = simulate(config, stream)
    # One prefill batch of all four (not the first alone and three after it) ...
    assert np.all(res.prefill_start_s == 0.0)
    assert np.allclose(res.prefill_end_s, prefill.prefill_seconds([500] * k))
    # ... that lands on the idle decoder and decodes all four from the same first step.
    step = LAT.decode_step_seconds(k, k * 500)
    assert np.allclose(res.decode_start_s, res.prefill_end_s)
    assert np.allclose(res.first_token_s, res.prefill_end_s + step)
    assert len(set(res.finish_s.tolist())) == 1
