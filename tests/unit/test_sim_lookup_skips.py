"""Lookups the simulator and the routing core skip because they cannot hit: a cache of zero
capacity, and a prompt whose first block no cache holds (``DensePrefixCache`` ``holders``).
Skipping them must change nothing: the same decisions, the same per-request results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.routing import prefix
from prfaas.planner.routing.policy import RoutingCore, Target
from prfaas.planner.routing.prefix import Chains, DensePrefixCache, PrefixCache
from prfaas.planner.sharing import ConversationSharing, DocumentSharing
from prfaas.planner.sim.arrivals import synthetic_stream
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.scenarios import aggregated_scenarios, common_rate, scenarios
from prfaas.planner.sim.simulator import simulate
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "case-study.yaml"
COLUMNS = (
    "uncached_tokens",
    "remote",
    "prefill_queued_s",
    "prefill_start_s",
    "prefill_end_s",
    "kv_ready_s",
    "decode_start_s",
    "first_token_s",
    "finish_s",
)


def _same(a: SimResult, b: SimResult) -> None:
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.events == b.events


@pytest.mark.parametrize(
    "sharing",
    [ConversationSharing(concurrent=24, turns=5), "documents"],
    ids=["conversations", "documents"],
)
def test_skipped_lookups_change_no_result(sharing: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case study's PrfaaS-PD and aggregated+offload configurations (PD-D caches of zero
    capacity; aggregated decode caches that hold blocks), with and without ``holders``."""
    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    the_plan = plan(problem)
    found = scenarios(problem, the_plan)
    aggregated = aggregated_scenarios(problem, the_plan, every=True)
    assert [s.name for s in aggregated] == ["aggregated+offload"]
    configs = [found[0].config, aggregated[0].config]
    w = problem.workload
    if sharing == "documents":
        sharing = DocumentSharing(documents=40, length=w.input_length, zipf=1.0)
    stream = synthetic_stream(
        600,
        common_rate(problem, found),
        w.input_length,
        w.output_length,
        seed=3,
        sharing=sharing,
    )
    empty = 0
    real = RoutingCore.decide

    def counting(self: RoutingCore[Any, Any], hashes: Any, n: int, now: float) -> Any:
        nonlocal empty
        empty += not len(hashes)
        return real(self, hashes, n, now)

    monkeypatch.setattr(RoutingCore, "decide", counting)
    for config in configs:
        empty = 0
        fast = simulate(config, stream, seed=1)
        skipped = empty
        with monkeypatch.context() as m:
            m.setattr(Chains, "heads_only_lead", lambda self: False)  # no holders: look up all
            empty = 0
            slow = simulate(config, stream, seed=1)
            assert empty == 0  # every chain was looked up
        assert skipped > 0  # the first turns / first askers at least
        assert (fast.uncached_tokens < fast.input_tokens).any()  # and caches did hit
        _same(fast, slow)


def test_heads_only_lead() -> None:
    pid = Chains.from_prefix_ids(np.array([3, 3, -1, 7]), np.array([64, 100, 40, 33]), 16)
    assert pid.heads_only_lead()
    assert Chains.from_lists([[1, 2, 3], [1, 2], [], [4]], 16).heads_only_lead()
    assert not Chains.from_lists([[1, 2], [2, 5]], 16).heads_only_lead()  # 2 leads and follows
    assert Chains.from_lists([[], []], 16).heads_only_lead()


def test_holders_count_the_caches_holding_a_first_block() -> None:
    from array import array

    holders = array("i", bytes(4 * 10))
    a, b = DensePrefixCache(3, 10, holders), DensePrefixCache(3, 10, holders)
    a.insert([0, 1])
    a.insert([0, 1, 2])  # already flagged in a: counted once
    b.insert([0])
    assert holders[0] == 2
    a.insert([5, 6, 7])  # a holds 3 blocks: 0, 1 and 2 go at its next lookup
    assert a.match([5]) == 1 and a.match([0]) == 0
    assert holders[0] == 1 and holders[5] == 1


def test_zero_capacity_caches_are_never_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = PrefixCache.match

    def counting(self: PrefixCache, hashes: Any) -> int:
        calls.append(self.capacity_blocks)
        return real(self, hashes)

    monkeypatch.setattr(PrefixCache, "match", counting)
    none, some = Target(PrefixCache(0)), Target(PrefixCache(8))
    some.cache.insert([1, 2])
    core: RoutingCore[Target, Any] = RoutingCore(
        block_size=4, decode=[none, some], decode_prefills=True
    )
    d = core.decide([1, 2, 3], 12, 0.0)
    assert d.decode is some and d.uncached_tokens == 4 and d.prefill_cached_tokens == 8
    assert calls == [8]  # the decode pick's lookup, reused for the uncached length
    none.cache.insert([1, 2])  # a zero-capacity cache keeps nothing it is given
    assert core.pick([none], [1, 2], 0.0) == (none, 0)


_chain = st.lists(st.integers(0, 13), unique=True, max_size=10)


def _replay(capacity: int, ops: list[tuple[bool, list[int]]]) -> DensePrefixCache:
    """``ops`` (insert, or match) on a ``DensePrefixCache`` whose int32 stamps run out at log
    position 40, checked against ``PrefixCache`` at every lookup."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(prefix, "_STAMP32_MAX", 40)
        ref, dense = PrefixCache(capacity), DensePrefixCache(capacity, 14)
        dense._log = np.zeros(8, dtype=np.int64)  # compact (and grow) early
        dense._steps = np.arange(9, dtype=np.int32)
        for insert, ids in ops:
            if insert:
                ref.insert(ids)
                dense.insert(ids)
            else:
                assert dense.match(ids) == ref.match(ids)
        assert len(dense) == len(ref)
        return dense


@settings(max_examples=100)
@given(st.integers(1, 9), st.lists(st.tuples(st.booleans(), _chain), max_size=60))
def test_stamps_widen_past_int32_exactly(capacity: int, ops: list[tuple[bool, list[int]]]) -> None:
    """Stamps are int32 until the log would outgrow them, then int64, with the same LRU as
    ``PrefixCache`` throughout."""
    dense = _replay(capacity, ops)
    assert dense._stamp.dtype == (np.int64 if len(dense._log) >= 40 else np.int32)


def test_long_chains_widen_the_stamps() -> None:
    dense = _replay(9, [(True, list(range(10)))] * 3 + [(False, [0, 1])])
    assert dense._stamp.dtype == np.int64 and dense.match([0, 1, 2]) == 3
