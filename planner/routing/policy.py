"""The routing decision the router and the simulator both make, and its bookkeeping.

``RoutingCore.decide`` is the one implementation; the router (``prfaas.engine.router.policy``)
and the simulator (``prfaas.planner.sim.simulator``) each hold one and feed it their pools. The
rules, chosen once for both:

* **Uncached length**: the prompt minus the longest prefix one available *local* instance holds
  (the local prefill pool, or the decode pool where there is none) — what the local PD cluster
  would compute. A cached length is ``held blocks × block_size``, capped at the prompt.
* **Path**: every link's threshold loop observes that length and ticks (``adaptive``); the
  request goes remote iff ``uncached > t`` on a usable link whose datacenter has prefill
  instances; among those links the least utilised (estimated egress / budget) wins, ties to the
  first configured. ``decode_prefills=False`` (a simulator without local prefill instances,
  where decode prefilling itself is not modelled) sends every request remote.
* **Aggregated instances** (chunked prefill: no local prefill pool, ``decode_prefills``): the
  decode instance is the local target — it prefills a local request itself (``prefill``
  ``None``; ``prefill_cached_tokens`` is the prefix it holds) and decodes it; for a remote
  request it is the decode target, as a PD-D instance.
* **Instance pick** (deterministic, no randomness): among available instances the longest held
  prefix wins, unless that instance has more than ``affinity_max_imbalance`` requests in flight
  above the least loaded (its prefix then counts as 0, and its cache is not looked up); ties go
  to fewer requests in flight, then to the least recently picked (a rotation: never-picked
  instances first, in pool order). The decode instance is picked with the request, so its load
  counts the request from arrival to the last token.
* **KV bytes** a remote request moves: ``kv_bytes_per_token × kv_block_tokens × (⌈prompt /
  kv_block_tokens⌉ − whole KV blocks of decode's held prefix) + kv_fixed_bytes``: vLLM's
  NixlConnector moves whole KV blocks (a 1665-token prompt in 128-token blocks moves 14 of
  them), and decode pulls only the blocks it does not hold. ``kv_bytes_per_token`` is the plan's
  model's; ``kv_block_tokens`` is the engines' ``--block-size`` (``spec.engine.blockSize``: the
  router's ``blockSize``, the simulator's ``block_tokens``), which may differ from
  ``block_size``, the unit of the prefix hashes (a trace's blocks in the simulator).
* **Egress estimate** (``Link.estimated_bps``): the larger of the link's ``EgressMeter`` rate
  and the KV still in flight drained over one meter window. **Dispatch bookkeeping**:
  ``Link.send`` when a remote prefill is dispatched, ``Link.delivered`` once decode holds the
  KV; ``Target.started`` / ``finished`` around each leg.
* **Lookups**: the instance cache's ``match`` (``PrefixCache`` in the router,
  ``DensePrefixCache`` in the simulator; it marks the held blocks recently used) on every
  instance looked at, once per decision: a memo is shared by the decode pick, the uncached
  length and the local prefill pick. A cache of zero capacity holds nothing, so it is never
  looked up (its prefix is 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from prfaas.planner.routing.prefix import BlockCache
from prfaas.planner.routing.threshold import DEFAULTS, EgressMeter, ThresholdController

__all__ = ["Decision", "Link", "Route", "RoutingCore", "Target", "choose_route"]

Route = Literal["local", "remote"]


def choose_route(uncached_tokens: int, threshold: float, *, remote_usable: bool) -> Route:
    """Remote prefill iff the uncached prompt is longer than ``threshold`` and remote works."""
    if remote_usable and uncached_tokens > threshold:
        return "remote"
    return "local"


@dataclass(slots=True, eq=False)
class Target:
    """One engine instance as routing sees it: what it holds and how many requests it has."""

    cache: BlockCache
    in_flight: int = 0
    last_pick: int = -1
    """Sequence number of the last pick (``-1``: never picked)."""

    def available(self, now: float) -> bool:
        """Whether requests may go here now (the router adds a circuit breaker)."""
        return True

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1


@dataclass(slots=True, eq=False)
class Link:
    """One remote datacenter's link: egress meter, KV bytes in flight, threshold loop."""

    meter: EgressMeter
    controller: ThresholdController
    bytes_in_flight: float = 0.0
    down: bool = False

    def estimated_bps(self, now: float) -> float:
        """The meter's rate, or the KV still in flight drained over one window if larger."""
        drain = 8.0 * self.bytes_in_flight / self.meter.window_s
        return max(self.meter.rate_bps(now), drain)

    def usable(self, now: float) -> bool:
        return not self.down and self.controller.capacity_bps > 0

    def tick(self, now: float) -> float:
        """Run the threshold loop once; returns the current ``t`` for this link."""
        return self.controller.update(now, self.estimated_bps(now))

    def send(self, now: float, nbytes: float, uncached_tokens: float | None = None) -> None:
        """A remote prefill was dispatched: ``nbytes`` of KV will cross this link (the
        controller compares them with what its model says ``uncached_tokens`` carry)."""
        self.meter.add(now, nbytes)
        self.controller.sent(now, nbytes, uncached_tokens)
        self.bytes_in_flight += nbytes

    def delivered(self, nbytes: float) -> None:
        """The KV was pulled by decode (or the transfer was abandoned)."""
        self.bytes_in_flight = max(0.0, self.bytes_in_flight - nbytes)


T = TypeVar("T", bound=Target)
L = TypeVar("L", bound=Link)


def _load_order(inst: Target) -> tuple[int, int]:
    return inst.in_flight, inst.last_pick


@dataclass(slots=True)
class Decision(Generic[T, L]):
    """Where one request goes. ``prefill`` ``None`` on the local path: decode prefills itself.
    ``decode`` ``None``: no decode pool (a prefill-only simulation) or none available."""

    route: Route
    prompt_tokens: int
    uncached_tokens: int
    """Prompt minus the best local prefix hit (what the threshold is compared with)."""
    decode: T | None
    prefill: T | None
    link: L | None = None
    kv_bytes: float = 0.0
    """KV a remote request puts on its link; 0 on the local path."""
    prefill_cached_tokens: int = 0
    """Prefix the chosen prefill instance holds (its work is the rest)."""


@dataclass(eq=False)
class RoutingCore(Generic[T, L]):
    """The pools one decision sees; ``decide`` routes one request (see the module docstring)."""

    block_size: int = DEFAULTS.block_size
    """Tokens per prefix hash (the unit of ``hashes`` and of a held prefix)."""
    kv_block_tokens: int = DEFAULTS.block_size
    """The engines' KV block (vLLM ``--block-size``): the unit a KV transfer moves."""
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    affinity_max_imbalance: int = DEFAULTS.affinity_max_imbalance
    decode: list[T] = field(default_factory=list)
    local_prefill: list[T] = field(default_factory=list)
    remote: list[tuple[L, list[T]]] = field(default_factory=list)
    """Each link with the prefill instances behind it (its datacenter's pool)."""
    adaptive: bool = True
    """Run each link's threshold loop on every decision (False: ``t`` stays as planned)."""
    observe: bool = True
    """Feed every uncached length to the loops (``ThresholdController.observe``)."""
    decode_prefills: bool = True
    always_available: bool = False
    """Every instance is always available (the simulator): skip the ``available`` calls."""
    _picks: itertools.count[int] = field(default_factory=itertools.count)

    def kv_bytes(self, prompt_tokens: int, held_tokens: int = 0) -> float:
        """KV bytes crossing a link for a prompt of ``prompt_tokens`` tokens whose first
        ``held_tokens`` decode already holds: the prompt's blocks (the last one partial) less
        the whole blocks held, in ``kv_block_tokens`` blocks, plus the fixed state."""
        kb = self.kv_block_tokens
        if kb <= 0:
            raise ValueError(
                f"kv_block_tokens must be positive (the engines' --block-size), got {kb}"
            )
        blocks = -(-prompt_tokens // kb) - min(held_tokens, prompt_tokens) // kb
        return self.kv_bytes_per_token * kb * max(0, blocks) + self.kv_fixed_bytes

    def pick(
        self,
        instances: Sequence[T],
        hashes: Sized,
        now: float,
        matched: dict[T, int] | None = None,
    ) -> tuple[T | None, int]:
        """Best available instance by cache affinity, then load, then rotation; with its held
        block count. ``matched`` (one decision's memo, same ``hashes``) holds the prefix length
        of every instance already looked up: looking again would give the same count and LRU
        order."""
        return self._pick(instances, hashes, len(hashes) > 0, now, matched)

    def _pick(
        self,
        instances: Sequence[T],
        hashes: Sized,
        any_blocks: bool,
        now: float,
        matched: dict[T, int] | None,
    ) -> tuple[T | None, int]:
        """``pick`` with ``len(hashes) > 0`` known (``decide`` asks it once per request)."""
        healthy = instances if self.always_available else [i for i in instances if i.available(now)]
        if not healthy:
            return None, 0
        if not any_blocks:  # nothing to match: fewest in flight, then least recently picked
            best = min(healthy, key=_load_order)
            best.last_pick = next(self._picks)
            return best, 0
        limit = -1  # found with the first instance that can hold anything
        best_blocks = 0
        top: list[T] = []  # the instances holding the longest prefix, in pool order
        for inst in healthy:
            cache = inst.cache
            if not cache.capacity_blocks:
                continue  # holds nothing, ever: its prefix is 0 without a lookup
            if limit < 0:
                limit = min([i.in_flight for i in healthy]) + self.affinity_max_imbalance
            if inst.in_flight > limit:
                continue  # too loaded for affinity: its prefix counts as 0, not looked up
            if matched is None:
                blocks = cache.match(hashes)
            else:
                got = matched.get(inst)
                blocks = matched[inst] = cache.match(hashes) if got is None else got
            if blocks > best_blocks:
                best_blocks, top = blocks, [inst]
            elif blocks and blocks == best_blocks:
                top.append(inst)
        best = min(top if best_blocks else healthy, key=_load_order)
        best.last_pick = next(self._picks)
        return best, best_blocks

    def decide(self, hashes: Sized, prompt_tokens: int, now: float) -> Decision[T, L]:
        """Route one prompt of ``prompt_tokens`` tokens whose block chain is ``hashes``."""
        bs = self.block_size
        n = prompt_tokens
        any_blocks = len(hashes) > 0
        matched: dict[T, int] = {}
        decode, decode_blocks = self._pick(self.decode, hashes, any_blocks, now, matched)
        if decode is None and self.decode:
            return Decision("local", n, n, None, None)  # no decode available: the caller refuses
        local_cached = 0
        for inst in (self.local_prefill or self.decode) if any_blocks else ():
            if inst.cache.capacity_blocks and (self.always_available or inst.available(now)):
                blocks = matched.get(inst)
                if blocks is None:
                    blocks = matched[inst] = inst.cache.match(hashes)
                if blocks > local_cached:
                    local_cached = blocks
        uncached = n - min(n, local_cached * bs)
        force = not self.decode_prefills and not self.local_prefill
        best: tuple[L, list[T]] | None = None
        best_util = math.inf
        for link, pool in self.remote:
            ctl = link.controller
            t = ctl.threshold
            if self.adaptive:
                if self.observe:
                    ctl.observe(now, uncached)  # the length distribution t* comes from
                t = link.tick(now)
            if not pool:
                continue
            if force:
                t = -math.inf
            if choose_route(uncached, t, remote_usable=link.usable(now)) == "remote":
                util = link.estimated_bps(now) / max(ctl.budget_bps, 1e-9)
                if util < best_util:
                    best, best_util = (link, pool), util
        if best is None and force:
            best = next(((ln, p) for ln, p in self.remote if p), None)
        if best is not None:
            prefill, blocks = self._pick(best[1], hashes, any_blocks, now, None)
            if prefill is not None:
                return Decision(
                    "remote",
                    n,
                    uncached,
                    decode,
                    prefill,
                    best[0],
                    self.kv_bytes(n, decode_blocks * bs),
                    min(n, blocks * bs),
                )
        prefill, blocks = self._pick(self.local_prefill, hashes, any_blocks, now, matched)
        if prefill is None and self.decode_prefills:
            blocks = decode_blocks  # decode (an aggregated instance) prefills: its own prefix
        return Decision("local", n, uncached, decode, prefill, None, 0.0, min(n, blocks * bs))
