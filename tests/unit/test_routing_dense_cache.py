"""``DensePrefixCache`` (the simulator's numpy LRU over dense block ids) is ``PrefixCache``
exactly: the same lookups, the same held set after every operation, with evictions deferred
until a lookup needs them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prfaas.planner.routing.prefix import Chains, DenseChain, DensePrefixCache, PrefixCache

N_IDS = 14
# A chain's ids are distinct (block i's id names the prefix 0..i).
_chain = st.lists(st.integers(0, N_IDS - 1), unique=True, max_size=10)
_ops = st.lists(st.tuples(st.sampled_from(["match", "insert", "peek", "len"]), _chain), max_size=60)


def _held(cache: DensePrefixCache) -> set[int]:
    cache._settle()
    return {int(i) for i in np.flatnonzero(cache._stamp)}


@settings(max_examples=300)
@given(st.integers(1, 9), _ops, st.booleans())
def test_dense_cache_is_prefix_cache(
    capacity: int, ops: list[tuple[str, list[int]]], as_chain: bool
) -> None:
    ref, dense = PrefixCache(capacity), DensePrefixCache(capacity, N_IDS)
    for op, ids in ops:
        arg = DenseChain(np.array(ids, dtype=np.int64)) if as_chain else ids
        if op == "insert":
            ref.insert(ids)
            dense.insert(arg)
        elif op == "match":
            assert dense.match(arg) == ref.match(ids)
        elif op == "peek":
            assert dense.peek(arg) == ref.peek(ids)
        else:
            assert len(dense) == len(ref)
    assert _held(dense) == set(ref._blocks)
    # Recency order too: the blocks ranked by stamp are PrefixCache's LRU order.
    order = sorted(_held(dense), key=lambda b: int(dense._stamp[b]))
    assert order == list(ref._blocks)


def test_chains_that_share_blocks_evict_at_the_next_lookup() -> None:
    """Inserts stamp at once and evictions wait for a lookup; chains that share their head
    apply in order, and a block listed by two of them counts once."""
    ref, dense = PrefixCache(6), DensePrefixCache(6, 20)
    for chain in ([1, 2, 3], [1, 2, 4], [1, 5], [6, 7, 8, 9]):
        ref.insert(chain)
        dense.insert(chain)
    assert dense._live == 9  # 1..9, none evicted yet
    assert dense.match([1, 2, 3]) == ref.match([1, 2, 3]) == 1  # 2 and 3 were evicted
    assert dense.match([1, 5]) == ref.match([1, 5]) == 2
    assert _held(dense) == set(ref._blocks)


def test_a_miss_on_the_first_block_evicts_nothing() -> None:
    dense = DensePrefixCache(2, 10)
    dense.insert([1, 2, 3])
    assert dense.match([4, 1]) == 0
    assert dense._live == 3  # still over capacity: no lookup needed the eviction
    assert dense.match([1, 2, 3]) == 2  # capacity 2 keeps the head (tail-first eviction)


def test_zero_capacity_holds_nothing() -> None:
    dense = DensePrefixCache(0, 10)
    dense.insert([1, 2])
    assert dense.match([1, 2]) == 0 and len(dense) == 0


def test_dense_numbering_keeps_equal_ids_equal() -> None:
    c = Chains.from_lists([[7 << 40, 3], [7 << 40], [], [3, 9 << 50]], 16)
    ids, n = c.dense()
    assert n == 3 and sorted(set(ids.tolist())) == [0, 1, 2]
    assert ids[0] == ids[2] and ids[1] == ids[3] and len({ids[0], ids[1], ids[4]}) == 3
    small = Chains.from_lists([[0, 5], [5]], 16)
    assert small.dense()[0] is small.ids  # already dense enough: kept as they are
    p = Chains.from_prefix_ids(np.array([5, -1, 5, 9]), np.array([40, 100, 20, 16]), 16)
    dense, n = p.dense()
    assert n == 3 and dense.tolist() == [0, 1, 0, 2]
    assert p.take(np.array([3, 0])).dense()[0].tolist() == [2, 0, 1]


@settings(max_examples=200)
@given(st.lists(st.lists(st.integers(0, 12), unique=True, max_size=6), max_size=8))
def test_heads_only_lead_is_no_first_block_following(chains: list[list[int]]) -> None:
    later = {b for c in chains for b in c[1:]}
    expected = not any(c and c[0] in later for c in chains)
    got = Chains.from_lists(chains, 16)
    assert got.heads_only_lead() == expected
    assert got.take(np.arange(len(chains))[::-1]).heads_only_lead() == expected


def test_prefix_id_chains_only_lead_without_a_pass() -> None:
    c = Chains.from_prefix_ids(np.array([3, 3, -1, 7]), np.array([64, 100, 40, 33]), 16)
    assert c._heads_lead is True  # known from the construction
    assert c.take(np.array([1, 3])).heads_only_lead()
