"""Discrete-event simulator of cross-datacenter prefill offload with PD disaggregation.

One ``Simulation`` object owns a run: the clock, the event heap, a ``count()`` tiebreak, a
seeded ``random.Random`` and every piece of state; nothing is global, so two runs with the same
seed give the same result. What is modelled (DESIGN.md §5, papers.md §1.5-1.6, §2.2):

* **Routing** with the router's own policy (``prfaas.planner.routing.core``): the uncached prompt
  length after the best local prefix hit is compared with the threshold ``t`` of the remote
  link's ``ThresholdController``, fed as the router feeds it (the larger of an ``EgressMeter``
  of KV bytes routed over the link and the bytes still in flight drained over one window),
  with local fallback while the link is down. Inside a pool the instance with the longest
  prefix hit wins, then the one with the least queued work.
* **Prefill**: per-instance FCFS queue; a batch takes queued prompts while their uncached
  tokens fit ``token_budget`` (at least one). ``pipeline_stages = k`` models inter-op (PP)
  parallelism: a batch takes the latency model's full time ``D`` but the instance accepts the
  next batch after ``D / k`` (papers.md §2.2 Eq. 2). A prefix cache (block-hash LRU) per
  instance removes cached blocks from the work.
* **KV transfer** over ``SharedLink``s: one RTT, then processor sharing of the capacity.
* **Decode** by continuous batching up to ``max_batch``. Between membership changes the batch is
  fixed, so the step time grows by a constant per step (context grows by the batch size); the
  time of the n-th step is a closed-form quadratic, and the loop jumps straight to the next
  completion or to the step boundary where a newly arrived request joins. Cost grows with the
  number of requests, not with the number of output tokens. (The step time is taken as affine
  in context within one such epoch, from the model at its first two steps: exact for
  DistServe's form, the usual case for roofline models that stay memory-bound.) A request's
  first token goes out when it joins a batch, so a wait for a decode slot counts in TTFT.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import count
from typing import Any

import numpy as np
from prfaas.planner.latency.model import LatencyModel
from prfaas.planner.routing.core import EgressMeter, PrefixCache, ThresholdController, choose_route
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.links import LinkSpec, SharedLink
from prfaas.planner.sim.metrics import SimResult, StepSeries

__all__ = [
    "DecodePool",
    "EventKind",
    "PrefillPool",
    "RoutingSpec",
    "SimConfig",
    "Simulation",
    "simulate",
]


class EventKind(IntEnum):
    ARRIVAL = 0
    PREFILL_DONE = 1
    STAGE_FREE = 2
    TRANSFER_START = 3
    LINK_DONE = 4
    LINK_CAPACITY = 5
    DECODE_STEP = 6


@dataclass(frozen=True, slots=True)
class PrefillPool:
    """Identical prefill instances in one datacenter."""

    name: str
    datacenter: str
    instances: int
    latency: LatencyModel
    token_budget: int = 8192
    """Most uncached tokens in one prefill batch; a longer prompt runs alone. 0: no batching."""
    pipeline_stages: int = 1
    """Inter-op (PP) stages: a new batch may start every ``D / stages`` seconds."""
    cache_blocks: int = 0
    """Prefix-cache capacity per instance in blocks; 0 disables the cache."""


@dataclass(frozen=True, slots=True)
class DecodePool:
    """Identical decode instances (continuous batching) in one datacenter."""

    name: str
    datacenter: str
    instances: int
    latency: LatencyModel
    max_batch: int = 256
    """BS_max: most sequences decoded together by one instance."""


@dataclass(frozen=True, slots=True)
class RoutingSpec:
    """The router's policy knobs (see ``ThresholdController`` for their meaning)."""

    threshold_tokens: float | None = None
    """Planned ``t``: offload prompts whose uncached length exceeds it. None: never offload."""
    headroom: float = 0.8
    adaptive: bool = True
    """Raise ``t`` while estimated egress exceeds ``headroom × capacity`` (PrfaaS §3.4.3)."""
    meter_window_s: float = 2.0
    controller_interval_s: float = 0.5
    raise_factor: float = 1.5
    decay_factor: float = 0.8
    low_water: float = 0.7
    distribution_aware: bool = True
    """Derive ``t``'s base from the observed uncached lengths (``ThresholdController.observe``);
    False: the plain multiplicative feedback loop."""
    derive_window_s: float = 60.0
    """Sliding window of observed lengths (λ and the length distribution) for that base."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A serving configuration: prefill pools, at most one decode pool, links, routing.

    Prefill pools in the decode pool's datacenter are *local* (PD-P); the others are *remote*
    (PrfaaS) and each needs a link from its datacenter to the decode datacenter. Without a
    decode pool a request ends at its prefill (prefill-only runs, e.g. for goodput search);
    without prefill pools requests enter decode directly.
    """

    name: str
    prefill: tuple[PrefillPool, ...]
    decode: DecodePool | None
    links: tuple[LinkSpec, ...] = ()
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    block_tokens: int = 16
    """Prefix-cache block size (tokens)."""


# --------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Prefiller:
    pool: int
    latency: LatencyModel
    budget: int
    stages: int
    cache: PrefixCache | None
    queue: deque[int] = field(default_factory=deque)
    load: int = 0
    """Uncached tokens queued or in service (the least-loaded tiebreak)."""
    busy: bool = False


@dataclass(slots=True)
class _Pool:
    name: str
    remote: bool
    link: int
    """Index of the link to the decode datacenter (-1: local)."""
    instances: list[_Prefiller]
    waiting: int = 0
    series_t: array = field(default_factory=lambda: array("d", [0.0]))
    series_v: array = field(default_factory=lambda: array("d", [0.0]))


@dataclass(slots=True)
class _Decoder:
    latency: LatencyModel
    max_batch: int
    members: list[tuple[int, int, int]] = field(default_factory=list)
    """Heap of (finish step, request, context contribution)."""
    waiting: deque[int] = field(default_factory=deque)
    steps: int = 0
    """Decode steps run before the current epoch began."""
    base_ctx: int = 0
    """Σ over members of (context at join − join step): context now = base + b · steps."""
    t0: float = 0.0
    s0: float = 0.0
    delta: float = 0.0
    version: int = 0
    pending: int = 0
    """Steps of the current epoch after which the scheduled event fires (0: none)."""

    def step_end(self, n: int) -> float:
        return self.t0 + n * self.s0 + self.delta * n * (n - 1) * 0.5

    def steps_done_by(self, now: float) -> int:
        """Whole steps of the current epoch finished at ``now``."""
        x = now - self.t0
        if x <= 0.0:
            return 0
        a = 0.5 * self.delta
        if a <= 1e-15 * self.s0:
            k = int(x / self.s0)
        else:
            b = self.s0 - a
            k = int((-b + math.sqrt(b * b + 4.0 * a * x)) / (2.0 * a))
        while self.step_end(k + 1) <= now:
            k += 1
        while k > 0 and self.step_end(k) > now:
            k -= 1
        return k


@dataclass(slots=True)
class _LinkState:
    link: SharedLink
    meter: EgressMeter
    controller: ThresholdController
    in_flight: float = 0.0
    """KV bytes routed over this link and not yet delivered (queued, prefilling or moving)."""
    offered_t: array = field(default_factory=lambda: array("d"))
    offered_b: array = field(default_factory=lambda: array("d"))
    thr_t: array = field(default_factory=lambda: array("d"))
    thr_v: array = field(default_factory=lambda: array("d"))


ProgressFn = Callable[[int], None]


class Simulation:
    """One run of ``config`` over ``stream``; call ``run()`` once."""

    def __init__(
        self,
        config: SimConfig,
        stream: RequestStream,
        *,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> None:
        self.config = config
        self.stream = stream
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = count()
        self._events = 0
        self._progress = progress
        self._done = 0
        n = len(stream)
        self._n = n
        self._arrival: list[float] = stream.arrival_s.tolist()
        self._input: list[int] = stream.input_tokens.tolist()
        self._output: list[int] = stream.output_tokens.tolist()
        self._prefix: list[int] = stream.prefix_id.tolist()
        nan = math.nan
        self._uncached = [0] * n
        self._remote = [False] * n
        self._queued = [nan] * n
        self._pstart = [nan] * n
        self._pend = [nan] * n
        self._first = [nan] * n
        self._ready = [nan] * n
        self._finish = [nan] * n
        self._hash_memo: dict[int, list[bytes]] = {}
        self._build(config)

    # ---- setup -------------------------------------------------------------------------------

    def _build(self, config: SimConfig) -> None:
        names = [p.name for p in config.prefill] + ([config.decode.name] if config.decode else [])
        if len(set(names)) != len(names):
            raise SimulatorError(f"pool names must be unique (they key the results): {names}")
        dec = config.decode
        home = dec.datacenter if dec is not None else None
        links_by_from: dict[str, int] = {}
        self._links: list[_LinkState] = []
        r = config.routing
        for spec in config.links:
            if home is not None and spec.to_dc != home:
                continue
            if spec.from_dc in links_by_from:
                raise SimulatorError(
                    f"two links from {spec.from_dc!r} to {spec.to_dc!r}; give one per pair"
                )
            link = SharedLink(spec)
            planned = r.threshold_tokens
            ctrl = ThresholdController(
                planned=planned,
                capacity_bps=link.capacity_bps,
                headroom=r.headroom,
                raise_factor=r.raise_factor,
                decay_factor=r.decay_factor,
                low_water=r.low_water,
                interval_s=r.controller_interval_s,
                kv_bytes_per_token=config.kv_bytes_per_token,
                kv_fixed_bytes=config.kv_fixed_bytes,
                window_s=r.derive_window_s,
            )
            state = _LinkState(link, EgressMeter(window_s=r.meter_window_s), ctrl)
            state.thr_t.append(0.0)
            state.thr_v.append(ctrl.threshold)
            links_by_from[spec.from_dc] = len(self._links)
            self._links.append(state)
        self._pools: list[_Pool] = []
        self._instances: list[_Prefiller] = []
        for pi, pool in enumerate(config.prefill):
            if pool.instances < 1 or pool.pipeline_stages < 1:
                raise SimulatorError(
                    f"prefill pool {pool.name!r} needs instances >= 1 and pipeline_stages >= 1"
                )
            remote = home is not None and pool.datacenter != home
            link_idx = -1
            if remote:
                if pool.datacenter not in links_by_from:
                    raise SimulatorError(
                        f"prefill pool {pool.name!r} is in {pool.datacenter!r} but no link "
                        f"goes from there to the decode datacenter {home!r}; add an InterDCLink"
                    )
                link_idx = links_by_from[pool.datacenter]
            insts = []
            for _ in range(pool.instances):
                cache = PrefixCache(pool.cache_blocks) if pool.cache_blocks > 0 else None
                inst = _Prefiller(pi, pool.latency, pool.token_budget, pool.pipeline_stages, cache)
                insts.append(inst)
                self._instances.append(inst)
            self._pools.append(_Pool(pool.name, remote, link_idx, insts))
        self._local = [i for i, p in enumerate(self._instances) if not self._pools[p.pool].remote]
        self._remote_ids = [i for i, p in enumerate(self._instances) if self._pools[p.pool].remote]
        self._decoders: list[_Decoder] = []
        if dec is not None:
            if dec.instances < 1 or dec.max_batch < 1:
                raise SimulatorError(
                    f"decode pool {dec.name!r} needs instances >= 1 and max_batch >= 1"
                )
            self._decoders = [_Decoder(dec.latency, dec.max_batch) for _ in range(dec.instances)]
        self._dec_t = array("d", [0.0])
        self._dec_v = array("d", [0.0])
        self._dec_waiting = 0
        self._adaptive = config.routing.adaptive
        self._observe = config.routing.distribution_aware
        self._caching = any(p.cache_blocks > 0 for p in config.prefill)
        self._kv_tok = config.kv_bytes_per_token
        self._kv_fix = config.kv_fixed_bytes
        self._handlers: list[Callable[[Any, Any], None]] = [
            self._on_arrival,
            self._on_prefill_done,
            self._on_stage_free,
            self._on_transfer_start,
            self._on_link_done,
            self._on_link_capacity,
            self._on_decode_step,
        ]

    def _push(self, when: float, kind: EventKind, a: Any, b: Any = None) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, a, b))

    # ---- loop --------------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Simulate every request to completion and return the result."""
        if self._events:
            raise SimulatorError("a Simulation runs once; build a new one for another run")
        if self._n:
            self._push(self._arrival[0], EventKind.ARRIVAL, 0)
        for li, state in enumerate(self._links):
            for when, gbps in state.link.spec.schedule:
                self._push(when, EventKind.LINK_CAPACITY, li, gbps)
        heap = self._heap
        handlers = self._handlers
        pop = heapq.heappop
        events = 0
        while heap:
            when, _, kind, a, b = pop(heap)
            self.now = when
            handlers[kind](a, b)
            events += 1
        self._events = events
        if self._done != self._n:
            raise SimulatorError(
                f"{self._n - self._done} requests never finished (a link stayed at 0 Gbps with "
                "transfers pending?); end the bandwidth schedule above zero"
            )
        return self._result()

    # ---- arrivals and routing ----------------------------------------------------------------

    def _hashes(self, r: int) -> list[bytes] | None:
        pid = self._prefix[r]
        if pid < 0 or not self._caching:
            return None
        nblocks = self._input[r] // self.config.block_tokens
        memo = self._hash_memo.get(pid)
        if memo is None:
            memo = self._hash_memo[pid] = []
        for i in range(len(memo), nblocks):
            memo.append(((pid << 32) | i).to_bytes(12, "little"))
        return memo[:nblocks]

    def _pick(self, ids: Sequence[int], hashes: list[bytes] | None) -> tuple[int, int]:
        """Best instance among ``ids``: longest cached prefix, then least queued work."""
        insts = self._instances
        best = -1
        best_key: tuple[int, int] = (0, 0)
        ties = 0
        for i in ids:
            inst = insts[i]
            hit = 0
            if hashes is not None and inst.cache is not None:
                hit = inst.cache.peek(hashes)
            key = (-hit, inst.load + (0 if not inst.busy else 1))
            if best < 0 or key < best_key:
                best, best_key, ties = i, key, 1
            elif key == best_key:
                ties += 1
                if self.rng.random() * ties < 1.0:  # reservoir choice among equals
                    best = i
        return best, -best_key[0] * self.config.block_tokens

    def _on_arrival(self, r: int, _: Any) -> None:
        if r + 1 < self._n:
            self._push(self._arrival[r + 1], EventKind.ARRIVAL, r + 1)
        if not self._instances:
            self._remote[r] = False
            self._queued[r] = self._pstart[r] = self._pend[r] = self.now
            self._deliver(r)
            return
        hashes = self._hashes(r)
        length = self._input[r]
        target = -1
        hit = 0
        if self._local:
            target, hit = self._pick(self._local, hashes)
        if self._remote_ids:
            rid, rhit = self._pick(self._remote_ids, hashes)
            state = self._links[self._pools[self._instances[rid].pool].link]
            usable = state.link.capacity_Bps > 0.0
            if target < 0:
                target, hit = rid, rhit
            elif usable:
                ctrl = state.controller
                thr = ctrl.threshold
                if self._adaptive:
                    if self._observe:
                        ctrl.observe(self.now, length - hit)
                    thr = ctrl.update(self.now, self._estimated_bps(state))
                    if thr != state.thr_v[-1]:
                        state.thr_t.append(self.now)
                        state.thr_v.append(thr)
                if choose_route(length - hit, thr, remote_usable=True) == "remote":
                    target, hit = rid, rhit
        inst = self._instances[target]
        pool = self._pools[inst.pool]
        if pool.remote:
            state = self._links[pool.link]
            nbytes = self._kv_tok * length + self._kv_fix
            state.meter.add(self.now, nbytes)
            state.controller.sent(self.now, nbytes, uncached_tokens=length - hit)
            state.in_flight += nbytes
            state.offered_t.append(self.now)
            state.offered_b.append(nbytes)
            self._remote[r] = True
        if hashes is not None and inst.cache is not None:
            inst.cache.match(hashes)  # mark the chosen instance's blocks most recently used
        uncached = max(1, length - hit)
        self._uncached[r] = uncached
        self._queued[r] = self.now
        inst.queue.append(r)
        inst.load += uncached
        self._pool_waiting(pool, 1)
        if not inst.busy:
            self._start_batch(target)

    def _estimated_bps(self, state: _LinkState) -> float:
        """The router's egress estimate: the meter's rate, or the KV still in flight drained
        over one window, whichever is larger (``engine_images/router_policy.py``)."""
        drain = 8.0 * state.in_flight / state.meter.window_s
        return max(state.meter.rate_bps(self.now), drain)

    def _pool_waiting(self, pool: _Pool, change: int) -> None:
        pool.waiting += change
        now = self.now
        if pool.series_t[-1] == now:
            pool.series_v[-1] = pool.waiting
        else:
            pool.series_t.append(now)
            pool.series_v.append(pool.waiting)

    # ---- prefill -----------------------------------------------------------------------------

    def _start_batch(self, idx: int) -> None:
        inst = self._instances[idx]
        queue = inst.queue
        unc = self._uncached
        first = queue.popleft()
        batch = [first]
        tokens = unc[first]
        budget = inst.budget
        while queue and tokens + unc[queue[0]] <= budget:
            r = queue.popleft()
            batch.append(r)
            tokens += unc[r]
        seconds = inst.latency.prefill_seconds([unc[r] for r in batch])
        if not seconds > 0.0:
            raise SimulatorError(
                f"prefill latency model returned {seconds} s for {tokens} tokens; it must be > 0"
            )
        now = self.now
        for r in batch:
            self._pstart[r] = now
        self._pool_waiting(self._pools[inst.pool], -len(batch))
        inst.busy = True
        if inst.stages > 1:
            self._push(now + seconds / inst.stages, EventKind.STAGE_FREE, idx)
        self._push(now + seconds, EventKind.PREFILL_DONE, idx, batch)

    def _on_stage_free(self, idx: int, _: Any) -> None:
        inst = self._instances[idx]
        inst.busy = False
        if inst.queue:
            self._start_batch(idx)

    def _on_prefill_done(self, idx: int, batch: list[int]) -> None:
        inst = self._instances[idx]
        now = self.now
        pool = self._pools[inst.pool]
        for r in batch:
            self._pend[r] = now
            inst.load -= self._uncached[r]
            if inst.cache is not None:
                hashes = self._hashes(r)
                if hashes:
                    inst.cache.insert(hashes)
        if inst.stages == 1:
            inst.busy = False
            if inst.queue:
                self._start_batch(idx)
        if not self._decoders:
            for r in batch:
                self._finished_at_first_token(r)
            return
        if pool.remote:
            state = self._links[pool.link]
            rtt = state.link.spec.rtt_s
            for r in batch:
                if rtt > 0.0:
                    self._push(now + rtt, EventKind.TRANSFER_START, r, pool.link)
                else:
                    self._on_transfer_start(r, pool.link)
        else:
            for r in batch:
                self._deliver(r)

    def _finished_at_first_token(self, r: int) -> None:
        self._first[r] = self._ready[r] = self._finish[r] = self.now
        self._count_done()

    def _count_done(self) -> None:
        self._done += 1
        if self._progress is not None and self._done % 4096 == 0:
            self._progress(self._done)

    # ---- links -------------------------------------------------------------------------------

    def _schedule_link(self, li: int) -> None:
        link = self._links[li].link
        when = link.next_completion()
        if when < math.inf:
            self._push(when, EventKind.LINK_DONE, li, link.version)

    def _on_transfer_start(self, r: int, li: int) -> None:
        link = self._links[li].link
        link.add(self.now, r, self._kv_tok * self._input[r] + self._kv_fix)
        self._schedule_link(li)

    def _on_link_done(self, li: int, version: int) -> None:
        state = self._links[li]
        link = state.link
        if version != link.version:
            return
        for r in link.finish(self.now):
            state.in_flight = max(
                0.0, state.in_flight - self._kv_tok * self._input[r] - self._kv_fix
            )
            self._deliver(r)
        self._schedule_link(li)

    def _on_link_capacity(self, li: int, gbps: float) -> None:
        state = self._links[li]
        state.link.set_capacity(self.now, gbps)
        before = state.controller.threshold
        state.controller.set_capacity(gbps * 1e9)
        if state.controller.threshold != before:
            state.thr_t.append(self.now)
            state.thr_v.append(state.controller.threshold)
        self._schedule_link(li)

    # ---- decode ------------------------------------------------------------------------------

    def _deliver(self, r: int) -> None:
        """KV of ``r`` is at the decode side; its first token goes out when it joins a batch."""
        now = self.now
        if not self._decoders or self._output[r] <= 1:
            self._finished_at_first_token(r)
            return
        self._ready[r] = now
        decs = self._decoders
        di = 0
        if len(decs) > 1:
            best = math.inf
            for i, d in enumerate(decs):
                load = len(d.members) + len(d.waiting)
                if load < best:
                    best, di = load, i
        d = decs[di]
        if not d.members:
            self._admit(d, r)
            self._start_epoch(di)
            return
        d.waiting.append(r)
        self._decode_waiting(1)
        if len(d.members) < d.max_batch:
            nxt = d.steps_done_by(now) + 1
            if nxt < d.pending:
                d.pending = nxt
                d.version += 1
                self._push(d.step_end(nxt), EventKind.DECODE_STEP, di, d.version)

    def _decode_waiting(self, change: int) -> None:
        self._dec_waiting += change
        now = self.now
        if self._dec_t[-1] == now:
            self._dec_v[-1] = self._dec_waiting
        else:
            self._dec_t.append(now)
            self._dec_v.append(self._dec_waiting)

    def _admit(self, d: _Decoder, r: int) -> None:
        contrib = self._input[r] + 1 - d.steps
        d.base_ctx += contrib
        self._first[r] = self.now
        heapq.heappush(d.members, (d.steps + self._output[r] - 1, r, contrib))

    def _start_epoch(self, di: int) -> None:
        d = self._decoders[di]
        d.version += 1
        b = len(d.members)
        if b == 0:
            d.pending = 0
            return
        ctx = d.base_ctx + b * d.steps
        s0 = d.latency.decode_step_seconds(b, ctx)
        s1 = d.latency.decode_step_seconds(b, ctx + b)
        if not s0 > 0.0:
            raise SimulatorError(
                f"decode latency model returned {s0} s for batch {b}; it must be > 0"
            )
        d.t0 = self.now
        d.s0 = s0
        d.delta = max(s1 - s0, 0.0)
        n = d.members[0][0] - d.steps
        d.pending = n
        self._push(d.step_end(n), EventKind.DECODE_STEP, di, d.version)

    def _on_decode_step(self, di: int, version: int) -> None:
        d = self._decoders[di]
        if version != d.version:
            return
        d.steps += d.pending
        members = d.members
        now = self.now
        while members and members[0][0] <= d.steps:
            _, r, contrib = heapq.heappop(members)
            d.base_ctx -= contrib
            self._finish[r] = now
            self._count_done()
        admitted = 0
        while d.waiting and len(members) < d.max_batch:
            self._admit(d, d.waiting.popleft())
            admitted += 1
        if admitted:
            self._decode_waiting(-admitted)
        self._start_epoch(di)

    # ---- result ------------------------------------------------------------------------------

    def _result(self) -> SimResult:
        s = self.stream
        f = np.asarray
        links = {st.link.spec.name: StepSeries.of(*st.link.egress_series()) for st in self._links}
        capacity = {}
        for st in self._links:
            spec = st.link.spec
            sched = ((0.0, spec.capacity_gbps), *spec.schedule)
            capacity[spec.name] = StepSeries.of([t for t, _ in sched], [g * 1e9 for _, g in sched])
        queues = {p.name: StepSeries.of(p.series_t, p.series_v) for p in self._pools}
        if self.config.decode is not None:
            queues[self.config.decode.name] = StepSeries.of(self._dec_t, self._dec_v)
        return SimResult(
            name=self.config.name,
            arrival_s=s.arrival_s,
            input_tokens=s.input_tokens,
            output_tokens=s.output_tokens,
            uncached_tokens=f(self._uncached, dtype=np.int64),
            remote=f(self._remote, dtype=np.bool_),
            prefill_queued_s=f(self._queued, dtype=np.float64),
            prefill_start_s=f(self._pstart, dtype=np.float64),
            prefill_end_s=f(self._pend, dtype=np.float64),
            first_token_s=f(self._first, dtype=np.float64),
            kv_ready_s=f(self._ready, dtype=np.float64),
            finish_s=f(self._finish, dtype=np.float64),
            links=links,
            link_capacity=capacity,
            offered={
                st.link.spec.name: (f(st.offered_t, dtype=np.float64), f(st.offered_b))
                for st in self._links
            },
            thresholds={st.link.spec.name: StepSeries.of(st.thr_t, st.thr_v) for st in self._links},
            queues=queues,
            events=self._events,
        )


def simulate(
    config: SimConfig,
    stream: RequestStream,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> SimResult:
    """Run ``config`` over ``stream`` (see ``Simulation``)."""
    return Simulation(config, stream, seed=seed, progress=progress).run()
