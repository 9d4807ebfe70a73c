"""The PrfaaS short-timescale loop (papers.md §1.6) and the one set of routing defaults.

* ``DEFAULTS``: every default of the routing policy, written once; the router's configuration
  model and the simulator's ``RoutingSpec`` take theirs from here.
* ``EgressMeter``: KV bytes put on a link over a sliding window → estimated egress (bit/s).
* ``ThresholdController``: its base is re-derived from the incremental-length distribution
  after prefix matching: the smallest ``t* ≥ planned`` whose predicted egress
  ``λ·E[S_kv(L)·1{L>t}]`` over a sliding window of observed uncached lengths fits
  ``headroom × capacity``. A multiplicative feedback on top raises ``t`` further only while
  the KV actually sent exceeds both the budget and the model (a model mismatch), and decays
  back otherwise. With too few observations it is the plain feedback loop on the caller's
  egress estimate (the planned value as base).

Everything is driven by an explicit ``now`` (seconds) so the simulator's virtual clock and the
router's monotonic clock use the same code.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEFAULTS", "EgressMeter", "RoutingDefaults", "ThresholdController"]


@dataclass(frozen=True, slots=True)
class RoutingDefaults:
    """Defaults of the routing policy (router file, simulator spec and controller share them)."""

    headroom: float = 0.8
    """Fraction of a link's capacity KV may fill before ``t`` rises."""
    meter_window_s: float = 2.0
    """Egress is averaged over this sliding window, seconds."""
    interval_s: float = 0.5
    """``t`` moves at most once per interval, seconds."""
    raise_factor: float = 1.5
    decay_factor: float = 0.8
    low_water: float = 0.7
    """Decay ``t`` only while egress < ``low_water × headroom × capacity``."""
    max_threshold_tokens: float = float(1 << 22)
    derive_window_s: float = 60.0
    """Sliding window of observed uncached lengths that ``t``'s base is derived from."""
    block_size: int = 16
    """Prefix-cache block, tokens (vLLM's default)."""
    prefix_cache_blocks: int = 65536
    """Blocks one instance's prefix cache holds when nothing else says."""
    affinity_max_imbalance: int = 4
    """Cache affinity wins unless that instance has this many more requests in flight than
    the least-loaded one."""


DEFAULTS = RoutingDefaults()


@dataclass(slots=True)
class EgressMeter:
    """Bytes sent on one link in the last ``window_s`` seconds, as a rate in bit/s."""

    window_s: float = DEFAULTS.meter_window_s
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
    headroom: float = DEFAULTS.headroom
    max_threshold: float = DEFAULTS.max_threshold_tokens
    raise_factor: float = DEFAULTS.raise_factor
    decay_factor: float = DEFAULTS.decay_factor
    low_water: float = DEFAULTS.low_water
    interval_s: float = DEFAULTS.interval_s
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    window_s: float = DEFAULTS.derive_window_s
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
