"""The routing policy shared by the router and the simulator (one implementation, two users).

* ``block_hashes`` / ``PrefixCache``: which prompt prefix an instance already holds, by chained
  hashes of fixed-size token blocks (as vLLM's prefix cache, Mooncake's conductor and llm-d's
  prefix scorer do), with LRU eviction.
* ``EgressMeter``: KV bytes put on a link over a sliding window → estimated egress (bit/s).
* ``ThresholdController``: the PrfaaS short-timescale loop (papers.md §1.6). Its base is
  re-derived from the incremental-length distribution after prefix matching: the smallest
  ``t* ≥ planned`` whose predicted egress ``λ·E[S_kv(L)·1{L>t}]`` over a sliding window of
  observed uncached lengths fits ``headroom × capacity``. A multiplicative feedback on top
  raises ``t`` further only while the KV actually sent exceeds both the budget and the model
  (a model mismatch), and decays back otherwise. With too few observations it is the plain
  feedback loop on the caller's egress estimate (the planned value as base).
* ``choose_route``: remote prefill iff the uncached length exceeds ``t`` and the remote side is
  usable.

Everything is driven by an explicit ``now`` (seconds) so the simulator's virtual clock and the
router's monotonic clock use the same code.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "EgressMeter",
    "PrefixCache",
    "Route",
    "ThresholdController",
    "block_hashes",
    "choose_route",
]

Route = Literal["local", "remote"]


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
    """Keeps a link's KV egress under budget by raising the offload threshold ``t``.

    ``planned`` is the planner's ``t`` (``None``: no offload). ``threshold`` is ``math.inf``
    when nothing may be offloaded. Two parts, moved at most once per ``interval_s``:

    * **Derived base** ``max(planned, t*)``: ``observe`` records every routed request's uncached
      length (the last ``window_s`` seconds, ``window_requests`` at most); ``t*`` is the
      smallest ``t`` whose predicted egress ``8·λ·E[kv(L)·1{L>t}]``, with ``kv(l) =
      kv_bytes_per_token·l + kv_fixed_bytes`` and ``λ`` the window's rate, fits
      ``headroom × capacity`` — exact over the sorted window (suffix sums), recomputed at most
      once per ``interval_s`` and on ``set_capacity``. A step change in capacity moves ``t``
      once, to a fixed point, instead of in ×1.5 steps that overshoot while the egress
      estimate lags (with ~1 GB of KV per request on a few Gbps it flips between 0 and several
      budgets). Drops smaller than ``hysteresis`` wait (sampling noise); rises and a return to
      ``planned`` do not. The base needs ``min_observations`` in the window.
    * **Feedback** on top, ×``raise_factor``: with a trusted base, only while the KV bytes
      reported by ``sent`` over the window exceed the budget and what the model says those
      requests carry by ``mismatch_tolerance`` (raises paced at a quarter window); else it
      decays ×``decay_factor`` back to the base. Without a trusted base it is the original
      loop: raise while the caller's estimate > ``headroom × capacity``, decay (never below
      ``planned``) while it is < ``low_water × headroom × capacity``. The feedback's ratio
      above the base carries over when the base moves.

    With no observations this is exactly the original loop. Once capacity is restored the
    base returns to ``planned`` at once and the feedback decays back to exactly it.
    """

    planned: float | None
    capacity_bps: float
    headroom: float = 0.8
    max_threshold: float = 1 << 22
    raise_factor: float = 1.5
    decay_factor: float = 0.8
    low_water: float = 0.7
    interval_s: float = 0.5
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    window_s: float = 60.0
    window_requests: int = 4096
    min_observations: int = 32
    hysteresis: float = 0.85
    mismatch_tolerance: float = 0.1
    threshold: float = math.inf
    _last_move: float = -math.inf
    _base: float = math.inf
    _last_derive: float = -math.inf
    _last_now: float = -math.inf
    _obs_t: deque[float] = field(default_factory=deque)
    _obs_l: deque[float] = field(default_factory=deque)
    _obs_sum: float = 0.0
    _trusted: bool = False
    _sent: EgressMeter = field(default_factory=EgressMeter)
    _modelled: EgressMeter = field(default_factory=EgressMeter)
    _sent_since: float = -math.inf
    _last_raise: float = -math.inf

    def __post_init__(self) -> None:
        if self.window_requests < 1 or self.window_s <= 0:
            raise ValueError(
                f"window_requests ({self.window_requests}) and window_s ({self.window_s}) "
                "must be positive"
            )
        self.threshold = self._floor()
        self._base = self.threshold
        self._sent.window_s = self._modelled.window_s = self.window_s
        self._obs_t = deque(maxlen=self.window_requests)
        self._obs_l = deque(maxlen=self.window_requests)

    def _floor(self) -> float:
        if self.planned is None or self.capacity_bps <= 0:
            return math.inf
        return float(self.planned)

    @property
    def budget_bps(self) -> float:
        return self.headroom * self.capacity_bps

    @property
    def base(self) -> float:
        """The derived part ``max(planned, t*)`` as of the last derivation."""
        return self._base

    def observe(self, now: float, uncached_tokens: float) -> None:
        """A request was routed (either way) with this uncached length: O(1), no sorting."""
        self._last_now = now
        obs_l = self._obs_l
        if len(obs_l) == obs_l.maxlen:
            self._obs_sum -= obs_l[0]  # about to fall out
        self._obs_t.append(now)
        obs_l.append(uncached_tokens)
        self._obs_sum += uncached_tokens

    def derive(self, now: float) -> float:
        """``max(planned, t*)`` from the observations in the window ending at ``now``."""
        floor = self._floor()
        kv_tok, kv_fix = self.kv_bytes_per_token, self.kv_fixed_bytes
        budget = self.budget_bps
        obs_t, obs_l = self._obs_t, self._obs_l
        horizon = now - self.window_s
        while obs_t and obs_t[0] <= horizon:
            obs_t.popleft()
            self._obs_sum -= obs_l.popleft()
        n = len(obs_l)
        if n == 0:
            self._obs_sum = 0.0  # no drift carried over
        self._trusted = n >= self.min_observations
        if not self._trusted or math.isinf(floor) or math.isinf(budget):
            return floor
        if kv_tok <= 0 and kv_fix <= 0:
            return floor
        # λ: the window's rate; when the request bound truncates it, over the span it covers.
        span = self.window_s
        if n == obs_l.maxlen:
            span = max(now - obs_t[0], self.interval_s)
        # Predicted egress with threshold t: 8·(1/span)·Σ_{l>t} kv(l) (λ·E[·] = Σ/span).
        allowance = budget * span / 8.0
        if kv_tok * self._obs_sum + kv_fix * n <= 0.999 * allowance:
            return floor  # even offloading everything would fit (running sum: O(1))
        lengths = np.fromiter(obs_l, dtype=np.float64, count=n)
        above = lengths[lengths > floor]
        if kv_tok * float(above.sum()) + kv_fix * above.size <= allowance:
            return floor  # the plan fits: no sorting needed
        lengths.sort()
        suffix = np.cumsum((kv_tok * lengths + kv_fix)[::-1])[::-1]  # suffix[i] = Σ_{j≥i}
        # Smallest i whose suffix fits: t* = lengths[i-1] keeps 0..i-1 local.
        fits = suffix <= allowance
        i = int(np.argmax(fits)) if fits.any() else n
        t_star = float(lengths[i - 1]) if i > 0 else floor
        return min(self.max_threshold, max(floor, t_star))

    def sent(self, now: float, nbytes: float, uncached_tokens: float | None = None) -> None:
        """A request was routed over the link: ``nbytes`` of KV will cross it, where the model
        says ``kv(uncached_tokens)`` (default: as many). Their ratio is the model mismatch."""
        self._sent.add(now, nbytes)
        modelled = nbytes
        if uncached_tokens is not None:
            modelled = self.kv_bytes_per_token * uncached_tokens + self.kv_fixed_bytes
        self._modelled.add(now, modelled)
        if math.isinf(self._sent_since):
            self._sent_since = now

    def set_capacity(self, capacity_bps: float) -> None:
        """The link's capacity changed (re-plan, probe, or schedule): re-derive the base now."""
        if capacity_bps != self.capacity_bps:  # traffic routed for the old budget
            self._sent = EgressMeter(window_s=self.window_s)
            self._modelled = EgressMeter(window_s=self.window_s)
            self._sent_since = self._last_now
        self.capacity_bps = capacity_bps
        if capacity_bps <= 0:
            self.threshold = math.inf
            return
        if math.isinf(self.threshold):
            self.threshold = self._floor()
            self._base = self.threshold
        if len(self._obs_l):
            self._rebase(self.derive(self._last_now))
            self._last_derive = self._last_now

    def set_planned(self, planned: float | None) -> None:
        """The planner's ``t`` changed (a new plan): never stay below the new floor."""
        self.planned = planned
        floor = self._floor()
        if math.isinf(floor) or math.isinf(self.threshold) or self.threshold < floor:
            self.threshold = floor
        self._base = self.derive(self._last_now)

    def _rebase(self, base: float) -> None:
        """Move the derived part to ``base``, keeping the feedback ratio above it."""
        old = self._base
        if base == old or (old * self.hysteresis < base < old and base > self._floor()):
            return  # small drops wait (sampling noise); rises and returns to the plan do not
        if math.isinf(old) or math.isinf(base) or self.threshold <= old:
            self.threshold = base
        else:
            self.threshold = min(self.max_threshold, base * (self.threshold / old))
        self._base = base

    def update(self, now: float, egress_bps: float) -> float:
        """Feed the current egress estimate; returns the threshold to use now."""
        floor = self._floor()
        if math.isinf(floor):
            self.threshold = math.inf
            self._base = math.inf
            return self.threshold
        if now > self._last_now:
            self._last_now = now
        if now - self._last_derive >= self.interval_s and len(self._obs_l):
            self._rebase(self.derive(now))
            self._last_derive = now
        base = self._base if not math.isinf(self._base) else floor
        if now - self._last_move < self.interval_s:
            return self.threshold
        if self._trusted:
            return self._feedback_on_mismatch(now, base)
        if egress_bps > self.budget_bps:
            self.threshold = min(self.max_threshold, max(self.threshold, base) * self.raise_factor)
            self._last_move = now
        elif egress_bps < self.low_water * self.budget_bps and self.threshold > base:
            self.threshold = max(base, self.threshold * self.decay_factor)
            self._last_move = now
        return self.threshold

    def _feedback_on_mismatch(self, now: float, base: float) -> float:
        """The feedback part while the derived base is trusted.

        The base already targets the budget, so the feedback corrects only a model mismatch:
        KV bytes actually sent over the last window above the budget *and* above what the
        model says those same requests carry. The caller's estimate is not used here: it
        counts bytes still queued for remote prefill, and with ~1 GB per request a few-second
        estimate flips between 0 and several budgets (sampling noise, not mismatch). Raises
        are paced at a quarter window (the measurement needs that long to show a move);
        without a mismatch the feedback decays at the controller's interval.
        """
        sent = self._sent.rate_bps(now)
        mismatch = (
            now - self._sent_since >= self.window_s  # a full window since capacity changed
            and sent > self.budget_bps
            and sent > self._modelled.rate_bps(now) * (1.0 + self.mismatch_tolerance)
        )
        if mismatch:
            if now - self._last_raise >= self.window_s / 4:
                self.threshold = min(
                    self.max_threshold, max(self.threshold, base) * self.raise_factor
                )
                self._last_move = self._last_raise = now
        elif self.threshold > base:
            self.threshold = max(base, self.threshold * self.decay_factor)
            self._last_move = now
        return self.threshold


def choose_route(uncached_tokens: int, threshold: float, *, remote_usable: bool) -> Route:
    """Remote prefill iff the uncached prompt is longer than ``threshold`` and remote works."""
    if remote_usable and uncached_tokens > threshold:
        return "remote"
    return "local"
