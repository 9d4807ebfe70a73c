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

__all__ = ["PrefixCache", "block_hashes"]


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

    Keys are any hashable block ids (the router's ``block_hashes`` ints, the simulator's
    bytes). Hits cost one ``move_to_end`` each: a missing key raises ``KeyError`` there, which
    ends the leading run without a separate membership test.
    """

    capacity_blocks: int
    _blocks: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)

    def match(self, hashes: Iterable[Hashable]) -> int:
        """Number of leading blocks of ``hashes`` this instance holds (marks them recently used)."""
        touch = self._blocks.move_to_end
        n = 0
        try:
            for h in hashes:
                touch(h)
                n += 1
        except KeyError:
            pass
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
        """Record blocks as cached (most recently used, in order), evicting the least recently
        used beyond capacity."""
        blocks = self._blocks
        touch = blocks.move_to_end
        it = iter(hashes)
        for h in it:  # the leading run already held: one move each
            try:
                touch(h)
            except KeyError:
                blocks[h] = None  # a new key goes to the end
                break
        for h in it:
            blocks[h] = None
            touch(h)
        evict = blocks.popitem
        for _ in range(len(blocks) - self.capacity_blocks):  # one len(), not one per eviction
            evict(False)  # the least recently used

    def __len__(self) -> int:
        return len(self._blocks)
