"""``block_hashes`` and ``PrefixCache``: prefixes by chained block hashes, an exact LRU order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prfaas.planner.routing.prefix import PrefixCache, block_hashes


def test_hashes_cover_only_full_blocks() -> None:
    assert block_hashes(list(range(31)), 16) == block_hashes(list(range(16)), 16)
    assert len(block_hashes(list(range(32)), 16)) == 2
    assert block_hashes(list(range(15)), 16) == []


def test_equal_hash_means_equal_prefix() -> None:
    a = block_hashes([1] * 16 + [2] * 16 + [3] * 16, 16)
    b = block_hashes([1] * 16 + [2] * 16 + [4] * 16, 16)
    c = block_hashes([9] * 16 + [2] * 16 + [3] * 16, 16)
    assert a[:2] == b[:2] and a[2] != b[2]
    # Same later blocks behind a different first block: chained, so nothing is shared.
    assert not set(a) & set(c)


def test_token_position_and_width_matter() -> None:
    # Packed as 64-bit ints: 256 is not (1, 0) bytes, and swapping tokens changes the hash.
    assert block_hashes([256, 0], 2) != block_hashes([1, 0], 2)
    assert block_hashes([1, 2], 2) != block_hashes([2, 1], 2)
    assert block_hashes([-1, 0], 2) != block_hashes([-2, 0], 2)


def test_salt_separates_chains() -> None:
    toks = list(range(64))
    assert block_hashes(toks, 16, salt=b"a") != block_hashes(toks, 16)
    assert block_hashes(toks, 16, salt=b"a") == block_hashes(toks, 16, salt=b"a")


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        block_hashes([1, 2], 0)
    with pytest.raises(ValueError, match="64 bits"):
        block_hashes([1 << 70, 2], 2)


@given(st.lists(st.lists(st.integers(0, 3), max_size=24), min_size=16, max_size=16))
def test_distinct_prefixes_get_distinct_hashes(prompts: list[list[int]]) -> None:
    seen: dict[int, tuple[int, ...]] = {}
    for p in prompts:
        for i, h in enumerate(block_hashes(p, 4)):
            prefix = tuple(p[: 4 * (i + 1)])
            assert seen.setdefault(h, prefix) == prefix


class _ReferenceLRU:
    """The obvious list-based LRU the OrderedDict version must agree with exactly."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.order = capacity, list[int]()

    def _touch_tail_first(self, hashes: list[int]) -> None:
        for h in reversed(hashes):
            if h in self.order:
                self.order.remove(h)
            self.order.append(h)

    def match(self, hashes: list[int]) -> int:
        n = 0
        while n < len(hashes) and hashes[n] in self.order:
            n += 1
        self._touch_tail_first(hashes[:n])
        return n

    def insert(self, hashes: list[int]) -> None:
        self._touch_tail_first(hashes)
        del self.order[: max(0, len(self.order) - self.capacity)]


_ops = st.lists(
    st.tuples(st.sampled_from(["match", "insert", "peek"]), st.lists(st.integers(0, 12))),
    max_size=40,
)


@given(st.integers(0, 8), _ops)  # 0: an engine without a prefix cache holds nothing
def test_prefix_cache_is_an_exact_lru(capacity: int, ops: list[tuple[str, list[int]]]) -> None:
    cache, ref = PrefixCache(capacity), _ReferenceLRU(capacity)
    for op, hashes in ops:
        if op == "insert":
            cache.insert(iter(hashes))  # any iterable, consumed once
            ref.insert(hashes)
        elif op == "match":
            assert cache.match(hashes) == ref.match(hashes)
        else:
            n = 0
            for h in hashes:
                if h not in ref.order:
                    break
                n += 1
            assert cache.peek(hashes) == n  # and the order is left alone (checked below)
        assert list(cache._blocks) == ref.order


def test_eviction_takes_a_prefix_tail_first_as_vllm() -> None:
    """vLLM frees a finished request's blocks in reverse order: under pressure a cached prefix
    loses its tail, and its shared head (block 0, a system prompt) stays usable."""
    cache = PrefixCache(4)
    cache.insert([1, 2, 3])
    cache.insert([1, 9])  # a second prompt with the same first block
    assert list(cache._blocks) == [3, 2, 9, 1]  # least recently used first
    cache.insert([7])  # one block over capacity: the first prompt's tail goes
    assert cache.match([1, 2, 3]) == 2
    assert cache.match([1, 9]) == 2
