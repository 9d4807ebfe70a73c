"""Which prompt prefix an instance already holds: chained block hashes and an LRU of blocks.

A prompt is a *chain* of block ids: block ``i``'s id covers blocks ``0..i`` (as vLLM's prefix
cache, Mooncake's conductor and llm-d's prefix scorer key their blocks), so two prompts share
exactly their leading run of equal ids. The router makes chains from token ids
(``block_hashes``); the simulator takes them from a trace or a workload description. Only full
blocks are cached: a partial tail block never hits.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["Chains", "PrefixCache", "block_hashes"]


def block_hashes(tokens: Sequence[int], block_size: int, *, salt: bytes = b"") -> list[int]:
    """Chained 64-bit hashes of the *full* blocks of ``tokens`` (a partial tail block is not
    cached).

    Block ``i``'s hash is ``hash(parent ‖ block_bytes)`` (the previous block's 64-bit hash, then
    the block's tokens), so it covers blocks ``0..i`` and equal hashes mean equal prefixes.
    Token ids are packed once as 64-bit integers and each link of the chain is the interpreter's
    keyed SipHash of bytes (seeded per process, 64-bit: distinct prefixes collide with
    probability ~2⁻⁶⁴ per pair) — a few times cheaper than a cryptographic digest, and the router
    runs this for every request. Values are only comparable within one process.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    n_full = len(tokens) - len(tokens) % block_size
    if n_full == 0:
        return []
    try:
        data = struct.pack(f"<{n_full}q", *tokens[:n_full])
    except struct.error as exc:
        raise ValueError(f"token ids must be integers that fit in 64 bits: {exc}") from exc
    step = 8 * block_size
    out: list[int] = []
    append = out.append
    parent = hash(salt) if salt else 0
    for start in range(0, len(data), step):
        parent = hash(parent.to_bytes(8, "little", signed=True) + data[start : start + step])
        append(parent)
    return out


@dataclass(slots=True)
class PrefixCache:
    """An LRU set of block hashes held by one instance, ``capacity_blocks`` at most.

    Keys are any hashable block ids (the router's ``block_hashes`` ints, a trace's chain ids).
    Eviction order is vLLM's: a prompt's blocks are marked recently used *tail first*, so that
    within one prefix the last block is evicted first and the shared head last (vLLM returns a
    finished request's blocks to its free queue in reverse order). ``match`` marks the held
    leading run the same way.
    """

    capacity_blocks: int
    _blocks: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)

    def match(self, hashes: Sequence[Hashable]) -> int:
        """Number of leading blocks of ``hashes`` this instance holds (marks them recently
        used, tail first)."""
        blocks = self._blocks
        n = 0
        for h in hashes:
            if h not in blocks:
                break
            n += 1
        if n:
            touch = blocks.move_to_end
            for i in range(n - 1, -1, -1):
                touch(hashes[i])
        return n

    def peek(self, hashes: Iterable[Hashable]) -> int:
        """Like ``match`` but leaves recency alone: for comparing instances before choosing."""
        blocks = self._blocks
        n = 0
        for h in hashes:
            if h not in blocks:
                break
            n += 1
        return n

    def insert(self, hashes: Iterable[Hashable]) -> None:
        """Record a prompt's blocks as cached (most recently used, tail first), evicting the
        least recently used beyond capacity."""
        blocks = self._blocks
        touch = blocks.move_to_end
        seq = hashes if isinstance(hashes, list | tuple) else list(hashes)
        for h in reversed(seq):
            if h in blocks:
                touch(h)
            else:
                blocks[h] = None  # a new key goes to the end
        evict = blocks.popitem
        for _ in range(len(blocks) - self.capacity_blocks):  # one len(), not one per eviction
            evict(False)  # the least recently used

    def __len__(self) -> int:
        return len(self._blocks)


@dataclass(frozen=True, slots=True)
class Chains:
    """Every request's block chain, as integer arrays (no Python objects per block).

    ``ids[offsets[r]:offsets[r + 1]]`` is request ``r``'s chain: block ``i``'s id stands for
    the prompt's *full* blocks ``0..i`` (equal ids, equal prefixes), ``block_tokens`` tokens
    each; a partial tail block is never in a chain (nothing caches it, as in the router). An
    empty chain never consults a cache. A trace's block is the unit of sharing it can prove, so
    a cached length is ``held blocks × block_tokens``: rounded down to whole trace blocks.
    """

    ids: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    block_tokens: int

    def __post_init__(self) -> None:
        if self.block_tokens <= 0:
            raise ValueError(f"block_tokens must be positive, got {self.block_tokens}")
        if len(self.offsets) < 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.ids):
            raise ValueError("offsets must start at 0 and end at len(ids)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def chain(self, r: int) -> list[int]:
        """Request ``r``'s chain as Python ints (cache keys)."""
        return self.ids[self.offsets[r] : self.offsets[r + 1]].tolist()

    def lengths(self) -> npt.NDArray[np.int64]:
        """Blocks per request."""
        return np.diff(self.offsets)

    def take(self, index: npt.NDArray[np.int64] | slice) -> Chains:
        """The chains of the requests ``index`` selects, in that order."""
        rows = np.arange(len(self))[index]
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lens = ends - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        if len(self.ids) == 0 or offsets[-1] == 0:
            return Chains(np.zeros(0, dtype=np.int64), offsets, self.block_tokens)
        # Positions of every kept block: each row's start repeated, plus 0..len-1.
        pos = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
        return Chains(self.ids[pos], offsets, self.block_tokens)

    @classmethod
    def from_lists(cls, chains: Sequence[Sequence[int]], block_tokens: int) -> Chains:
        lens = np.fromiter((len(c) for c in chains), dtype=np.int64, count=len(chains))
        offsets = np.zeros(len(chains) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        ids = np.fromiter((b for c in chains for b in c), dtype=np.int64, count=int(offsets[-1]))
        return cls(ids, offsets, block_tokens)

    @classmethod
    def from_prefix_ids(
        cls,
        prefix_id: npt.NDArray[np.int64],
        input_tokens: npt.NDArray[np.int64],
        block_tokens: int,
    ) -> Chains:
        """Chains for the older ``prefix_id`` model: requests with the same id share their
        full blocks up to the shorter prompt (block ``i`` of id ``p`` is ``p·2³² + i``); ``-1``
        shares nothing (an empty chain)."""
        pid = np.asarray(prefix_id, dtype=np.int64)
        if len(pid) and int(pid.max()) >= 1 << 31:
            raise ValueError("prefix ids must be below 2^31")
        lens = np.where(pid >= 0, np.asarray(input_tokens, dtype=np.int64) // block_tokens, 0)
        offsets = np.zeros(len(pid) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        total = int(offsets[-1])
        owner = np.repeat(np.arange(len(pid)), lens)
        index = np.arange(total, dtype=np.int64) - offsets[:-1][owner]
        ids = (pid[owner] << 32) | index
        return cls(ids.astype(np.int64), offsets, block_tokens)
