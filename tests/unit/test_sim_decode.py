"""Decode by continuous batching: the event-jumping engine equals a step-by-step reference."""

from __future__ import annotations

import numpy as np
import pytest
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.simulator import DecodePool, SimConfig, simulate

LAT = DistServeForm(0.0, 0.0, 0.0, 0.012, 2e-8, 3e-4)


def _reference(stream: RequestStream, max_batch: int) -> np.ndarray:
    """One decode instance, one loop iteration per token step (the slow, obvious way)."""
    arrivals = stream.arrival_s.tolist()
    ins = stream.input_tokens.tolist()
    outs = stream.output_tokens.tolist()
    finish = np.full(len(arrivals), np.nan)
    waiting: list[int] = []
    members: dict[int, list[int]] = {}  # request -> [context, steps left]
    now = 0.0
    nxt = 0
    while nxt < len(arrivals) or waiting or members:
        while nxt < len(arrivals) and arrivals[nxt] <= now:
            if outs[nxt] <= 1:
                finish[nxt] = arrivals[nxt]
            else:
                waiting.append(nxt)
            nxt += 1
        while waiting and len(members) < max_batch:
            r = waiting.pop(0)
            members[r] = [ins[r] + 1, outs[r] - 1]
        if not members:
            now = arrivals[nxt]
            continue
        now += LAT.decode_step_seconds(len(members), sum(m[0] for m in members.values()))
        for r in list(members):
            members[r][0] += 1
            members[r][1] -= 1
            if members[r][1] == 0:
                finish[r] = now
                del members[r]
    return finish


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
    ref = _reference(stream, max_batch)
    assert np.allclose(res.finish_s, ref, rtol=1e-9, atol=1e-9)
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


def test_tpot_of_a_lonely_request_is_its_step_time() -> None:
    stream = RequestStream(np.array([0.0]), np.array([1000]), np.array([11]), np.array([-1]))
    config = SimConfig("decode-only", (), DecodePool("d", "dc", 1, LAT, max_batch=4))
    res = simulate(config, stream)
    steps = [LAT.decode_step_seconds(1, 1001 + k) for k in range(10)]
    assert res.finish_s[0] == pytest.approx(sum(steps))
    assert res.tpot[0] == pytest.approx(sum(steps) / 10)
