"""Emulated engines: prefill batches, continuous-batching decode steps and KV bytes follow the
latency model and the KV size (``prfaas.engine.router.emulation`` behind ``FakeEngine``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prfaas.engine.router.emulation import (
    DecodeBatcher,
    EmulatedTiming,
    EngineEmulation,
    PrefillQueue,
    Scale,
    prompt_length,
    prompt_tokens,
)
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.request import decode_body, prefill_body
from prfaas.planner.latency.model import DistServeForm
from prfaas.planner.routing import RoutingCore, block_hashes

LAT = DistServeForm(0.01, 1e-5, 1e-9, 0.02, 1e-6, 0.001)
SCALE = Scale(time_scale=20.0, byte_scale=1e-3)


def timing(**kw: Any) -> EmulatedTiming:
    base: dict[str, Any] = {
        "latency": LAT,
        "scale": SCALE,
        "kv_bytes_per_token": 1000.0,
        "kv_fixed_bytes": 2e6,
        "max_batch": 4,
        "cache_blocks": 1000,
        "emit_interval_s": 0.05,
    }
    base.update(kw)
    return EmulatedTiming(**base)


def test_scale_round_trips_and_shapes_links() -> None:
    s = Scale(time_scale=10.0, byte_scale=1e-3)
    assert s.wall_s(25.0) == pytest.approx(2.5)
    assert s.planned_s(2.5) == pytest.approx(25.0)
    assert s.wire_bytes(1e9) == 1_000_000
    assert s.planned_bytes(1_000_000) == pytest.approx(1e9)
    assert s.wire_bps(100e9) == pytest.approx(1e9)  # 100 Gbps planned → 1 Gbps on the wire
    assert s.planned_bps(1e9) == pytest.approx(100e9)
    with pytest.raises(ValueError, match="time_scale"):
        Scale(time_scale=0.0)


def test_kv_bytes_are_the_requests_whole_blocks_scaled() -> None:
    t = timing(block_tokens=16)
    # 3000 tokens are 187 full 16-token blocks and a partial one: NIXL moves 188 whole blocks.
    whole = 1000.0 * 188 * 16 + 2e6
    assert t.kv_planned_bytes(3000) == pytest.approx(whole)
    assert t.kv_planned_bytes(3008) == pytest.approx(whole)  # exactly 188 blocks
    assert t.kv_planned_bytes(3009) == pytest.approx(whole + 1000.0 * 16)
    assert t.kv_wire_bytes(3000) == round(whole * 1e-3)
    # The router's own count for the same prompt (its engines hash at their KV block).
    core: RoutingCore[Any, Any] = RoutingCore(
        kv_block_tokens=16, kv_bytes_per_token=1000.0, kv_fixed_bytes=2e6
    )
    for n in (1, 15, 16, 17, 3000, 4097):
        assert t.kv_planned_bytes(n) == core.kv_bytes(n)
    assert t.prefill_wall_s([3000]) == pytest.approx(LAT.prefill_seconds([3000]) / 20.0)


def test_prefill_batches_fcfs_within_the_token_budget() -> None:
    q = PrefillQueue(token_budget=1000)
    for n in (600, 300, 200, 5000, 10):
        q.push(n)
    same = lambda j: j  # noqa: E731
    assert q.next_batch(same) == [600, 300]  # 200 more would exceed the budget
    assert q.next_batch(same) == [200]  # FCFS: 5000 is next and does not fit
    assert q.next_batch(same) == [5000]  # a long prompt runs alone
    assert q.next_batch(same) == [10]
    assert q.next_batch(same) == []


def test_decode_batch_steps_follow_the_model_and_finish_in_order() -> None:
    from prfaas.engine.router.emulation import _Seq

    step = timing().step_wall_s
    b = DecodeBatcher(step, max_batch=2)
    a, c, late = _Seq(100, 4, 0.0), _Seq(50, 2, 0.0), _Seq(10, 2, 0.0)
    for s in (a, c, late):
        b.add(s)
    assert b.admit(0.0) == [a, c]  # max_batch 2: the third waits
    first = b.plan(0.0, horizon=10.0)
    assert first == [pytest.approx(step(2, 150))]  # new members: stop after their first step
    assert b.advance(1, first[0]) == []
    assert a.first_at == c.first_at == first[0]  # the first token ends the first step
    bounds = b.plan(first[0], horizon=10.0)
    assert len(bounds) == 1  # c finishes after its second step: the plan stops there
    assert bounds[0] - first[0] == pytest.approx(step(2, 152))
    assert b.advance(1, bounds[0]) == [c]
    assert c.finish_at == bounds[0] and a.pending == 2
    assert b.admit(bounds[0]) == [late]  # the freed slot is taken at that boundary
    nxt = b.plan(bounds[0], horizon=10.0)
    assert len(nxt) == 1 and nxt[0] - bounds[0] == pytest.approx(step(2, 102 + 10))
    b.advance(1, nxt[0])
    assert late.first_at == nxt[0]
    assert len(b.plan(nxt[0], horizon=10.0)) == 1  # both finish after one more step


def test_decode_plan_stops_at_the_horizon() -> None:
    from prfaas.engine.router.emulation import _Seq

    b = DecodeBatcher(lambda batch, ctx: 0.01, max_batch=8)
    b.add(_Seq(10, 1000, 0.0))
    b.admit(0.0)
    b.advance(len(b.plan(0.0, horizon=1.0)), 0.01)
    bounds = b.plan(0.01, horizon=0.05)
    assert len(bounds) == 5 and bounds[-1] == pytest.approx(0.06)


def test_prompt_tokens_counts_bytes_or_ids() -> None:
    assert prompt_tokens("héllo") == list("héllo".encode())
    assert prompt_tokens([5, 6, 7]) == [5, 6, 7]
    assert prompt_tokens(["ab"]) == [97, 98]
    for prompt in ("héllo", [5, 6, 7], ["ab"], [[1, 2]]):
        assert prompt_length(prompt) == len(prompt_tokens(prompt))


async def _call(
    s: aiohttp.ClientSession, url: str, body: dict[str, Any], rid: str
) -> tuple[dict[str, Any] | None, int]:
    async with s.post(url + "/v1/completions", json=body, headers={"X-Request-Id": rid}) as r:
        assert r.status == 200, await r.text()
        if body.get("stream"):
            events = [ln async for ln in r.content if ln.startswith(b"data: {")]
            return None, len(events)
        return await r.json(), 1


async def _records(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(url + "/emulation/records") as r:
        return {rec["request_id"]: rec for rec in (await r.json())["records"]}


async def test_remote_prefill_then_decode_moves_the_requests_kv_bytes() -> None:
    t = timing()
    body = {"model": "m", "prompt": "y" * 3000, "max_tokens": 40, "stream": True}
    async with (
        FakeEngine("prefill", emulation=EngineEmulation(t)) as p,
        FakeEngine("decode", emulation=EngineEmulation(t)) as d,
        aiohttp.ClientSession() as s,
    ):
        answer, _ = await _call(s, p.url, prefill_body(body), "r1")
        assert answer is not None
        kv = answer["kv_transfer_params"]
        assert kv["remote_port"] == p.emulation.kv_port  # type: ignore[union-attr]
        _, events = await _call(s, d.url, decode_body(body, kv), "r1")
        pre, dec = (await _records(s, p.url))["r1"], (await _records(s, d.url))["r1"]
    assert events >= 2  # the first token at once, the rest in chunks
    assert pre["engine"] == f"127.0.0.1:{kv['remote_port']}" != dec["engine"]  # who kept it
    assert dec["kv_bytes"] == t.kv_wire_bytes(3000)
    assert pre["prefill_end"] - pre["prefill_start"] >= t.prefill_wall_s([3000])
    # Decode waits for the last KV byte, then its first step emits the first token.
    assert dec["first_token"] - dec["kv_end"] >= t.step_wall_s(1, 3000) * (1 - 1e-9)
    # A lone sequence: 40 steps, the first one ending with the first token.
    steps = sum(t.step_wall_s(1, 3001 + k) for k in range(39))
    assert dec["finished"] - dec["first_token"] == pytest.approx(steps, rel=1e-9)


async def test_prefix_cache_skips_cached_blocks_and_decode_prefills_without_kv() -> None:
    t = timing(block_tokens=16)
    prompt = "z" * 1000
    async with (
        FakeEngine("prefill", emulation=EngineEmulation(t)) as p,
        FakeEngine("decode", emulation=EngineEmulation(t)) as d,
        aiohttp.ClientSession() as s,
    ):
        body = {"model": "m", "prompt": prompt, "max_tokens": 2}
        await _call(s, p.url, prefill_body(body), "a")
        await _call(s, p.url, prefill_body(body | {"prompt": prompt + "tail"}), "b")
        await _call(s, d.url, body, "c")  # no kv_transfer_params: decode prefills itself
        pre, dec = await _records(s, p.url), await _records(s, d.url)
    cached = len(block_hashes(prompt_tokens(prompt), 16)) * 16
    assert pre["a"]["uncached_tokens"] == 1000
    assert pre["b"]["uncached_tokens"] == 1004 - cached
    assert dec["c"]["uncached_tokens"] == 1000 and dec["c"]["kv_bytes"] == 0
    assert dec["c"]["prefill_end"] <= dec["c"]["first_token"]


async def test_concurrent_decodes_share_steps_up_to_max_batch() -> None:
    t = timing(max_batch=2)
    async with (
        FakeEngine("decode", emulation=EngineEmulation(t)) as d,
        aiohttp.ClientSession() as s,
    ):
        bodies = [{"model": "m", "prompt": "q" * 100 + str(i), "max_tokens": 30} for i in range(3)]
        await asyncio.gather(*(_call(s, d.url, b, f"r{i}") for i, b in enumerate(bodies)))
        recs = await _records(s, d.url)
    firsts = sorted(r["first_token"] for r in recs.values())
    finishes = sorted(r["finished"] for r in recs.values())
    # Two run together; the third joins only when one of them has finished.
    assert firsts[2] >= finishes[0]
    assert all(r["finished"] > r["first_token"] for r in recs.values())


async def test_unknown_kv_is_a_clear_error() -> None:
    t = timing()
    async with (
        FakeEngine("prefill", emulation=EngineEmulation(t)) as p,
        FakeEngine("decode", emulation=EngineEmulation(t)) as d,
        aiohttp.ClientSession() as s,
    ):
        kv = {"do_remote_prefill": True, "remote_host": "127.0.0.1",
              "remote_port": p.emulation.kv_port, "remote_request_id": "never"}  # type: ignore[union-attr]
        body = decode_body({"model": "m", "prompt": "x", "max_tokens": 2}, kv)
        async with s.post(d.url + "/v1/completions", json=body) as r:
            assert r.status == 500
            assert "holds no KV" in (await r.json())["error"]["message"]


async def test_prefill_batches_keep_a_virtual_timeline_through_host_lag() -> None:
    """A batch starts when the engine is free, not when the busy host wakes the loop: a lag
    between two back-to-back batches is not lost prefill capacity."""
    import time

    t = timing(token_budget=1000, cache_blocks=0)
    emu = EngineEmulation(t)
    await emu.start()
    try:
        first, second = emu.record("a", "prefill", 600), emu.record("b", "prefill", 600)
        wall = t.prefill_wall_s([600])
        lag = 3 * wall
        # The host stalls the loop across the end of the first batch (it cannot batch with
        # the second: 1200 tokens exceed the budget of 1000).
        asyncio.get_running_loop().call_later(wall * 0.5, time.sleep, lag)
        await asyncio.gather(emu.prefill("a" * 600, first), emu.prefill("b" * 600, second))
    finally:
        await emu.stop()
    assert first.prefill_start is not None and second.prefill_start is not None
    assert first.prefill_end is not None and first.prefill_end >= first.prefill_start + lag
    assert second.prefill_start == pytest.approx(first.prefill_start + wall, abs=1e-9)


def test_prefill_followers_must_be_queued_when_the_batch_starts() -> None:
    q = PrefillQueue(token_budget=1000)
    for n in (100, 200, 300):
        q.push(n)
    assert q.next_batch(lambda j: j, lambda j: j < 300) == [100, 200]
    assert q.next_batch(lambda j: j, lambda j: False) == [300]  # the head always runs


async def test_a_prompt_queued_behind_its_prefix_reuses_it_as_vllm_schedules() -> None:
    """The prefix cache is matched when a batch starts (vLLM matches at scheduling), so a
    prompt queued behind another with the same prefix reuses the blocks that one computed."""
    t = timing(token_budget=1000, block_tokens=16)
    emu = EngineEmulation(t)
    await emu.start()
    try:
        first, second = emu.record("a", "prefill", 800), emu.record("b", "prefill", 804)
        await asyncio.gather(emu.prefill("z" * 800, first), emu.prefill("z" * 800 + "tail", second))
    finally:
        await emu.stop()
    assert first.uncached_tokens == 800
    assert second.uncached_tokens == 804 - 800  # 50 whole blocks of 16 were cached by then
    assert second.prefill_start == pytest.approx(first.prefill_start + t.prefill_wall_s([800]))
