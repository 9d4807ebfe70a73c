"""Which prompt prefix an instance already holds: chained block hashes and an LRU of blocks.

A prompt is a *chain* of block ids: block ``i``'s id covers blocks ``0..i`` (as vLLM's prefix
cache, Mooncake's conductor and llm-d's prefix scorer key their blocks), so two prompts share
exactly their leading run of equal ids. The router makes chains from token ids
(``block_hashes``); the simulator takes them from a trace or a workload description. Only full
blocks are cached: a partial tail block never hits.

Two caches with one LRU rule: ``PrefixCache`` keys any hashable (the router's 64-bit hashes,
known only as requests arrive); ``DensePrefixCache`` keys ids numbered ``0..n-1`` up front
(``Chains.dense``) and keeps numpy arrays, a few times faster for the simulator's long chains.
``tests/unit/test_routing_dense_cache.py`` checks that the two agree exactly.
"""

from __future__ import annotations

import struct
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "BlockCache",
    "Chains",
    "DenseChain",
    "DensePrefixCache",
    "PrefixCache",
    "block_hashes",
]


_STAMP32_MAX = int(np.iinfo(np.int32).max)
"""The largest log position ``DensePrefixCache`` keeps in int32 stamps."""


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
        least recently used beyond capacity. A zero-capacity cache (an engine that keeps no
        prefix cache) records nothing."""
        if not self.capacity_blocks:
            return
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


class BlockCache(Protocol):
    """What routing needs of an instance's prefix cache (``PrefixCache``, ``DensePrefixCache``)."""

    capacity_blocks: int

    def match(self, hashes: Any) -> int: ...

    def peek(self, hashes: Any) -> int: ...

    def insert(self, hashes: Any) -> None: ...

    def __len__(self) -> int: ...


class DenseChain:
    """One prompt's chain of dense block ids (``Chains.dense``) with its first id as a Python
    int (``DensePrefixCache`` answers most lookups, a miss on the first block, from it alone)
    and its ids tail first in a contiguous array (the order the cache stamps them in: numpy
    scatters through a contiguous index several times faster than through a reversed view)."""

    __slots__ = ("first", "ids", "rev")

    def __init__(
        self,
        ids: npt.NDArray[np.int64],
        first: int | None = None,
        rev: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.ids = ids
        self.first = (int(ids[0]) if len(ids) else -1) if first is None else first
        self.rev = ids[::-1].copy() if rev is None else rev

    def __len__(self) -> int:
        return len(self.ids)


class DensePrefixCache:
    """``PrefixCache``'s exact LRU for block ids known up front as dense ints ``0..n_ids-1``
    (the simulator numbers a stream's blocks once: ``Chains.dense``), in numpy arrays instead
    of a Python object per block. Takes ``DenseChain``s (or int sequences); a chain's ids are
    distinct (block ``i``'s id names the prefix ``0..i``).

    Every touch (a prompt tail first, as ``PrefixCache``) appends the block to a log; its
    position there is its stamp, so the log is in recency order and an entry is *live* while
    its block still carries that stamp. An LRU holds the ``capacity_blocks`` most recently
    touched blocks whatever happened between, so evictions wait until a lookup needs them: an
    insert stamps its chain at once (a few numpy calls), and a lookup whose first block has no
    stamp misses at once (one Python read); other lookups first evict the oldest live entries
    beyond capacity.

    ``holders`` (one ``array("i")`` of ``n_ids`` zeros shared by several caches) counts, per
    block that only ever starts a chain (``Chains.heads_only_lead``), the caches that hold it
    (stamped, evicted or not yet): where a prompt's first block has count 0 no cache can match
    it, so the simulator skips every lookup (other blocks' counts are not kept).
    """

    __slots__ = (
        "_head",
        "_holders",
        "_holders_np",
        "_live",
        "_log",
        "_stamp",
        "_stamps",
        "_steps",
        "_tail",
        "capacity_blocks",
    )

    def __init__(self, capacity_blocks: int, n_ids: int, holders: array[int] | None = None) -> None:
        self.capacity_blocks = capacity_blocks
        size = max(n_ids, 0) if capacity_blocks > 0 else 0
        self._stamp = np.zeros(size, dtype=np.int32)
        """0: not held; else 1 + the position of the block's live log entry (int32: half the
        memory traffic of int64; widened if the log ever outgrows it)."""
        self._stamps = self._stamp.data
        """The same memory, read one block at a time as Python ints (the quick miss test)."""
        self._log = np.zeros(1024, dtype=np.int64)
        self._steps = np.arange(len(self._log) + 1, dtype=np.int32)
        self._head = 0
        """Log entries before it are dead."""
        self._tail = 0
        self._live = 0
        """Blocks with a non-zero stamp: held, or due for eviction at the next lookup."""
        self._holders = holders if size else None
        self._holders_np = None if holders is None or not size else np.frombuffer(holders, np.int32)

    @staticmethod
    def _chain(hashes: Any) -> DenseChain:
        if type(hashes) is DenseChain:
            return hashes
        if type(hashes) is not np.ndarray:
            seq = hashes if isinstance(hashes, list | tuple) else list(hashes)
            hashes = np.asarray(seq, dtype=np.int64)
        return DenseChain(hashes)

    def _settle(self) -> None:
        """Evict the least recently used blocks beyond capacity."""
        over = self._live - self.capacity_blocks
        if over > 0:
            self._evict(over)

    def _held(self, ids: npt.NDArray[np.int64]) -> int:
        over = self._live - self.capacity_blocks
        if over > 0:
            self._evict(over)
        stamps = self._stamp[ids]
        n = int(stamps.argmin())  # the first block not held, if any (stamps are >= 0)
        return len(stamps) if stamps.item(n) else n

    def peek(self, hashes: Any) -> int:
        """Like ``match`` but leaves recency alone."""
        if not self._live:
            return 0
        chain = hashes if type(hashes) is DenseChain else self._chain(hashes)
        first = chain.first
        if first < 0 or not self._stamps[first]:
            return 0  # the first block is not stamped: nothing to evict first
        return self._held(chain.ids)

    def match(self, hashes: Any) -> int:
        """Number of leading blocks held (marks them recently used, tail first)."""
        if not self._live:
            return 0
        chain = hashes if type(hashes) is DenseChain else self._chain(hashes)
        first = chain.first
        if first < 0 or not self._stamps[first]:
            return 0  # as in ``peek``: the common miss, answered from two Python ints
        n = self._held(chain.ids)
        if n:
            rev = chain.rev
            self._stamp_new(rev[len(rev) - n :] if n < len(rev) else rev, False)
        return n

    def insert(self, hashes: Any) -> None:
        """Record a prompt's blocks as cached (most recently used, tail first); the least
        recently used beyond capacity are evicted before the next lookup that needs it."""
        if self.capacity_blocks <= 0:
            return
        chain = hashes if type(hashes) is DenseChain else self._chain(hashes)
        first = chain.first
        if first >= 0:
            if self._holders is not None and not self._stamps[first]:
                self._holders[first] += 1
            self._stamp_new(chain.rev, True)

    def _stamp_new(self, rev: npt.NDArray[np.int64], count: bool) -> None:
        """Stamp blocks ``rev`` (distinct, contiguous) in this order at the log's end, the last
        most recent; ``count``: some may be new to the cache (else all are held)."""
        n = len(rev)
        if self._tail + n >= len(self._log):
            self._compact(n)
        t = self._tail
        stamp = self._stamp
        if count:
            self._live += n - int(np.count_nonzero(stamp[rev]))
        stamp[rev] = self._steps[t + 1 : t + n + 1]
        self._log[t : t + n] = rev
        self._tail = t + n

    def _compact(self, room: int) -> None:
        """Keep the live entries only, restamped in order; grow the log if still half full."""
        h, t = self._head, self._tail
        ids = self._log[h:t]
        ids = ids[self._stamp[ids] == self._steps[h + 1 : t + 1]]
        k = len(ids)
        if 2 * (k + room) > len(self._log):
            size = 4 * (k + room)
            if size >= _STAMP32_MAX and self._stamp.dtype == np.int32:  # would overflow: widen
                self._stamps.release()
                self._stamp = self._stamp.astype(np.int64)
                self._stamps = self._stamp.data
            self._log = np.zeros(size, dtype=np.int64)
            self._steps = np.arange(size + 1, dtype=self._stamp.dtype)
        self._log[:k] = ids
        self._stamp[ids] = self._steps[1 : k + 1]
        self._head, self._tail = 0, k

    def _evict(self, k: int) -> None:
        """Evict the ``k`` least recently used blocks (the first ``k`` live log entries)."""
        stamp, log, steps = self._stamp, self._log, self._steps
        h, t = self._head, self._tail
        window = k + (k >> 1) + 64
        while True:
            e = min(h + window, t)
            ids = log[h:e]
            live = (stamp[ids] == steps[h + 1 : e + 1]).nonzero()[0]
            if len(live) >= k or e == t:
                break
            window *= 4
        gone = ids[live[:k]]
        stamp[gone] = 0
        holders = self._holders_np
        if holders is not None:  # right for blocks that only start chains; ``gone`` are
            holders[gone] = holders[gone] - 1  # distinct (2x faster than an in-place -=)
        self._live -= len(gone)
        self._head = h + int(live[k - 1]) + 1

    def __len__(self) -> int:
        self._settle()
        return self._live


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
    _dense_ids: tuple[npt.NDArray[np.int64], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _heads_lead: bool | None = field(default=None, init=False, repr=False, compare=False)

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

    def dense(self) -> tuple[npt.NDArray[np.int64], int]:
        """Every block id renumbered ``0..n-1`` (equal ids, equal numbers), and ``n``: keys for
        ``DensePrefixCache``. Ids already in a small non-negative range (a Mooncake trace's
        ``hash_ids``) are kept; others are ranked once (a stable sort). Computed once."""
        cached = self._dense_ids
        if cached is not None:
            return cached
        ids = self.ids
        if len(ids) == 0:
            out: tuple[npt.NDArray[np.int64], int] = (ids, 0)
        elif int(ids.min()) >= 0 and int(ids.max()) < 2 * len(ids) + 1024:
            out = (ids, int(ids.max()) + 1)
        else:
            order = np.argsort(ids, kind="stable")
            ranked = ids[order]
            first = np.empty(len(ids), dtype=bool)
            first[0] = True
            np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
            dense = np.empty(len(ids), dtype=np.int64)
            dense[order] = np.cumsum(first) - 1
            out = (dense, int(dense[order[-1]]) + 1)
        object.__setattr__(self, "_dense_ids", out)
        return out

    def heads_only_lead(self) -> bool:
        """Whether no chain's first block is a later block of another chain (so whenever
        block ``i``'s id names the prefix ``0..i``): ``DensePrefixCache``'s ``holders`` count
        first blocks exactly then. Computed once (known from the start for ``from_prefix_ids``)."""
        known = self._heads_lead
        if known is not None:
            return known
        ids, n = self.dense()
        heads = self.offsets[:-1][self.lengths() > 0]
        lead = np.zeros(n, dtype=bool)
        lead[ids[heads]] = True
        # Each first block is counted once at its own position; any more is a later block.
        out = int(np.count_nonzero(lead[ids])) == len(heads)
        object.__setattr__(self, "_heads_lead", out)
        return out

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
        out = Chains(self.ids[pos], offsets, self.block_tokens)
        if self._dense_ids is not None:  # a subset of dense ids is still a valid numbering
            dense, n = self._dense_ids
            object.__setattr__(out, "_dense_ids", (dense[pos], n))
        if self._heads_lead:  # fewer chains cannot make a first block follow
            object.__setattr__(out, "_heads_lead", True)
        return out

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
        out = cls(ids.astype(np.int64), offsets, block_tokens)
        # Dense ids without a sort over blocks: each prefix id owns a run as long as its
        # longest prompt's chain.
        unique, which = np.unique(pid, return_inverse=True)
        longest = np.zeros(len(unique), dtype=np.int64)
        np.maximum.at(longest, which, lens)
        base = np.zeros(len(unique) + 1, dtype=np.int64)
        np.cumsum(longest, out=base[1:])
        dense = base[which][owner] + index
        object.__setattr__(out, "_dense_ids", (dense, int(base[-1])))
        object.__setattr__(out, "_heads_lead", True)  # block i's id is p·2³² + i
        return out
