"""The mixed-step latency model: limits against today's prefill and decode, monotonicity,
chunked TTFT and TPOT."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.latency.mixed import (
    Chunk,
    chunk_plan,
    chunked_ttft_seconds,
    mixed_step_seconds,
    tpot_seconds,
)
from prfaas.planner.latency.model import InstanceLatency

# One instance per evidence kind: published (hybrid-1t on H200/H20), per-layer fit (llama on
# H200), roofline transfer (llama on H20), pure roofline (deepseek-v3 on B200).
LATS: dict[str, InstanceLatency] = {
    "hybrid-1t/H200": latency_model(MODELS["hybrid-1t"], GPUS["H200"], 8, 1),
    "hybrid-1t/H20": latency_model(MODELS["hybrid-1t"], GPUS["H20"], 8, 1),
    "llama-3-8b/H200": latency_model(MODELS["llama-3-8b"], GPUS["H200"], 1, 1),
    "llama-3-8b/H20": latency_model(MODELS["llama-3-8b"], GPUS["H20"], 1, 1),
    "deepseek-v3/B200": latency_model(MODELS["deepseek-v3"], GPUS["B200"], 8, 1),
}


@pytest.mark.parametrize("name", sorted(LATS))
def test_no_chunks_is_todays_decode_step(name: str) -> None:
    lat = LATS[name]
    for batch, ctx in [(1, 1000), (16, 16 * 4000), (64, 64 * 20000)]:
        assert mixed_step_seconds(lat, batch, ctx) == lat.decode_step_seconds(batch, ctx)
        assert mixed_step_seconds(lat, batch, ctx, (Chunk(0, 500),)) == lat.decode_step_seconds(
            batch, ctx
        )
    assert mixed_step_seconds(lat, 0, 0.0) == 0.0


@pytest.mark.parametrize("name", sorted(LATS))
def test_one_whole_prompt_without_decodes_is_todays_prefill(name: str) -> None:
    lat = LATS[name]
    for length in (128, 4096, 32768):
        assert mixed_step_seconds(lat, 0, 0.0, (Chunk(length),)) == pytest.approx(
            lat.prefill_seconds([length]), rel=1e-12
        )
        # The same prompt in chunks: its chunks' own work adds up to its prefill time.
        chunks = chunk_plan(length, 1024)
        total = sum(mixed_step_seconds(lat, 0, 0.0, (c,)) for c in chunks)
        assert total == pytest.approx(lat.prefill_seconds([length]), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(LATS)),
    d=st.integers(0, 256),
    dd=st.integers(0, 64),
    ctx_per_seq=st.floats(0, 100_000),
    c=st.floats(0, 16_384),
    dc=st.floats(0, 4096),
    prefix=st.floats(0, 100_000),
)
def test_step_time_never_decreases_with_more_work(
    name: str, d: int, dd: int, ctx_per_seq: float, c: float, dc: float, prefix: float
) -> None:
    lat = LATS[name]
    base = mixed_step_seconds(lat, d, d * ctx_per_seq, (Chunk(c, prefix),))
    slack = 1e-12 * max(base, 1.0)
    more_c = mixed_step_seconds(lat, d, d * ctx_per_seq, (Chunk(c + dc, prefix),))
    more_d = mixed_step_seconds(lat, d + dd, (d + dd) * ctx_per_seq, (Chunk(c, prefix),))
    more_chunks = mixed_step_seconds(lat, d, d * ctx_per_seq, (Chunk(c, prefix), Chunk(dc, prefix)))
    assert more_c >= base - slack
    assert more_d >= base - slack
    assert more_chunks >= base - slack
    assert base >= mixed_step_seconds(lat, d, d * ctx_per_seq) - slack


def test_chunk_attends_to_its_prefix() -> None:
    """A late chunk of a long prompt costs more than the first chunk (attention over the
    prefix), and a step with decodes and a chunk costs more than either alone."""
    lat = LATS["llama-3-8b/H200"]
    first = mixed_step_seconds(lat, 0, 0.0, (Chunk(2048, 0),))
    late = mixed_step_seconds(lat, 0, 0.0, (Chunk(2048, 60_000),))
    assert late > first
    both = mixed_step_seconds(lat, 32, 32 * 2000, (Chunk(2048),))
    assert both > mixed_step_seconds(lat, 32, 32 * 2000)
    assert both > first


def test_chunked_ttft_is_queueing_plus_the_steps_of_its_chunks() -> None:
    lat = LATS["llama-3-8b/H200"]
    budget, d, ctx = 2048, 48, 48 * 3000.0
    steps = [mixed_step_seconds(lat, d, ctx, (c,)) for c in chunk_plan(10_000, budget - d)]
    assert len(steps) == 5  # 10000 / 2000 → five chunks
    ttft = chunked_ttft_seconds(lat, 10_000, budget, d, ctx, queueing_s=0.25)
    assert ttft == pytest.approx(0.25 + sum(steps))
    # A bigger budget: fewer steps, shorter TTFT.
    assert chunked_ttft_seconds(lat, 10_000, 8192, d, ctx) < ttft - 0.25
    with pytest.raises(ValueError, match="no room"):
        chunked_ttft_seconds(lat, 10_000, 32, 48, ctx)


def test_tpot_is_the_mean_step_time() -> None:
    assert tpot_seconds([0.02, 0.04, 0.03]) == pytest.approx(0.03)
    with pytest.raises(ValueError):
        tpot_seconds([])


def test_bad_chunks_are_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Chunk(-1.0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk_plan(100, 0)
    assert chunk_plan(0, 100) == []
    assert [c.tokens for c in chunk_plan(250, 100)] == [100, 100, 50]
    assert [c.prefix for c in chunk_plan(250, 100)] == [0, 100, 200]


@pytest.mark.parametrize("name", sorted(LATS))
def test_a_step_of_later_chunks_alone_still_runs_one_forward_pass(name: str) -> None:
    """No decodes and no first chunk: the step still reads the weights once, so it takes at
    least a one-sequence decode step, even where the chunk's own work is ~0 (memory-bound)."""
    lat = LATS[name]
    floor = lat.decode_step_seconds(1, 0.0)
    assert mixed_step_seconds(lat, 0, 0.0, (Chunk(16, 16),)) >= floor
    big = Chunk(4096, 8192)
    assert mixed_step_seconds(lat, 0, 0.0, (big,)) == max(
        mixed_step_seconds(lat, 1, 0.0, (big,)) - floor, floor
    )
    # A first chunk carries the fixed part itself: no floor.
    assert mixed_step_seconds(lat, 0, 0.0, (Chunk(16),)) == lat.prefill_seconds([16])
