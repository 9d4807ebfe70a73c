"""The routing policy shared by the router and the simulator (one implementation, two users).

* ``block_hashes`` / ``PrefixCache``: which prompt prefix an instance already holds, by chained
  hashes of fixed-size token blocks (as vLLM's prefix cache, Mooncake's conductor and llm-d's
  prefix scorer do), with LRU eviction.
* ``EgressMeter``: KV bytes put on a link over a sliding window → estimated egress (bit/s).
* ``ThresholdController``: the PrfaaS short-timescale loop (papers.md §1.6) — while estimated
  egress exceeds ``headroom × capacity`` raise the offload threshold ``t`` (fewer, longer, i.e.
  lower-Φ_kv requests go remote); once egress falls below a low-water mark, decay ``t`` back
  towards the planned value.
* ``choose_route``: remote prefill iff the uncached length exceeds ``t`` and the remote side is
  usable.

Everything is driven by an explicit ``now`` (seconds) so the simulator's virtual clock and the
router's monotonic clock use the same code.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EgressMeter",
    "PrefixCache",
    "Route",
    "ThresholdController",
    "block_hashes",
    "choose_route",
]

Route = Literal["local", "remote"]


def block_hashes(tokens: Sequence[int], block_size: int, *, salt: bytes = b"") -> list[bytes]:
    """Chained hashes of the *full* blocks of ``tokens`` (a partial tail block is not cached).

    Block ``i``'s hash covers blocks ``0..i``, so equal hashes mean equal prefixes. Token ids
    are hashed as packed 64-bit integers (one C call per block: the router runs this for every
    request).
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    n_full = len(tokens) - len(tokens) % block_size
    if n_full == 0:
        return []
    try:
        data = memoryview(array("q", tokens[:n_full]).tobytes())
    except OverflowError as exc:
        raise ValueError("token ids must fit in 64 bits") from exc
    step = 8 * block_size
    out: list[bytes] = []
    parent = salt
    for start in range(0, len(data), step):
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(data[start : start + step])
        parent = digest.digest()
        out.append(parent)
    return out


@dataclass(slots=True)
class PrefixCache:
    """An LRU set of block hashes held by one instance, ``capacity_blocks`` at most."""

    capacity_blocks: int
    _blocks: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def match(self, hashes: Sequence[bytes]) -> int:
        """Number of leading blocks of ``hashes`` this instance holds (marks them recently used)."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            n += 1
        return n

    def peek(self, hashes: Sequence[bytes]) -> int:
        """Like ``match`` but leaves recency alone: for comparing instances before choosing."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def insert(self, hashes: Iterable[bytes]) -> None:
        """Record blocks as cached, evicting the least recently used beyond capacity."""
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)

    def __len__(self) -> int:
        return len(self._blocks)


@dataclass(slots=True)
class EgressMeter:
    """Bytes sent on one link in the last ``window_s`` seconds, as a rate in bit/s."""

    window_s: float = 2.0
    _events: deque[tuple[float, float]] = field(default_factory=deque)
    _total: float = 0.0

    def add(self, now: float, nbytes: float) -> None:
        self._events.append((now, nbytes))
        self._total += nbytes
        self._expire(now)

    def rate_bps(self, now: float) -> float:
        self._expire(now)
        return 8.0 * self._total / self.window_s

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] <= horizon:
            self._total -= self._events.popleft()[1]
        if not self._events:
            self._total = 0.0


@dataclass(slots=True)
class ThresholdController:
    """Raises the offload threshold while a link is over budget, then decays it back.

    ``planned`` is the planner's ``t`` (``None``: no offload). The controller moves at most
    once per ``interval_s``: ×``raise_factor`` while egress > ``headroom × capacity``,
    ×``decay_factor`` (never below ``planned``) while egress < ``low_water × headroom ×
    capacity``. ``threshold`` is ``math.inf`` when nothing may be offloaded.
    """

    planned: float | None
    capacity_bps: float
    headroom: float = 0.8
    max_threshold: float = 1 << 22
    raise_factor: float = 1.5
    decay_factor: float = 0.8
    low_water: float = 0.7
    interval_s: float = 0.5
    threshold: float = math.inf
    _last_move: float = -math.inf

    def __post_init__(self) -> None:
        self.threshold = self._floor()

    def _floor(self) -> float:
        if self.planned is None or self.capacity_bps <= 0:
            return math.inf
        return float(self.planned)

    @property
    def budget_bps(self) -> float:
        return self.headroom * self.capacity_bps

    def set_capacity(self, capacity_bps: float) -> None:
        """The link's capacity changed (re-plan, probe, or schedule)."""
        self.capacity_bps = capacity_bps
        if capacity_bps <= 0:
            self.threshold = math.inf
        elif math.isinf(self.threshold):
            self.threshold = self._floor()

    def set_planned(self, planned: float | None) -> None:
        """The planner's ``t`` changed (a new plan): never stay below the new floor."""
        self.planned = planned
        floor = self._floor()
        if math.isinf(floor) or math.isinf(self.threshold) or self.threshold < floor:
            self.threshold = floor

    def update(self, now: float, egress_bps: float) -> float:
        """Feed the current egress estimate; returns the threshold to use now."""
        floor = self._floor()
        if math.isinf(floor):
            self.threshold = math.inf
            return self.threshold
        if now - self._last_move < self.interval_s:
            return self.threshold
        if egress_bps > self.budget_bps:
            self.threshold = min(self.max_threshold, max(self.threshold, floor) * self.raise_factor)
            self._last_move = now
        elif egress_bps < self.low_water * self.budget_bps and self.threshold > floor:
            self.threshold = max(floor, self.threshold * self.decay_factor)
            self._last_move = now
        return self.threshold


def choose_route(uncached_tokens: int, threshold: float, *, remote_usable: bool) -> Route:
    """Remote prefill iff the uncached prompt is longer than ``threshold`` and remote works."""
    if remote_usable and uncached_tokens > threshold:
        return "remote"
    return "local"
