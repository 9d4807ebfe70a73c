"""Discrete-event simulator of cross-datacenter prefill offload with PD disaggregation.

One ``Simulation`` object owns a run: the clock, the event heap, a ``count()`` tiebreak, a
seeded ``random.Random`` and every piece of state; nothing is global, so two runs with the same
seed give the same result (routing draws no random numbers: ties go by the router's rotation).
What is modelled (DESIGN.md §5, papers.md §1.5-1.6, §2.2):

* **Routing** by the router's own decision object (``prfaas.planner.routing.RoutingCore``):
  path, prefill and decode instance, threshold loop, KV bytes and egress bookkeeping are the
  router's code, fed the same way (each request's block chain and length at its arrival;
  ``finished`` when its prefill ends and when its last token goes out; ``delivered`` when its
  KV has crossed the link). The decode instance is chosen with the request, at arrival.
* **Several decode clusters** (``SimConfig.clusters``): one routing core per cluster over its
  own decode and PD-P instances, its own ``t`` and threshold loops, and the PrfaaS pools its
  plan names; a PrfaaS pool is one set of instances (queues, in-flight counts, caches) for
  every router, a link one ``SharedLink`` however many routers send over it (each router
  meters its own sends, as the real routers do). Routers here see each other's requests in
  a shared instance's in-flight count (and one pick rotation); real routers count only their
  own, so the simulated balance across a shared pool is the better-informed one. Each
  arrival belongs to one cluster, drawn from the seed with the clusters' shares. Decoders
  sit in one list, so decode is unchanged.
* **Prefill**: per-instance FCFS queue; a batch takes queued prompts while their uncached
  tokens fit ``token_budget`` (at least one). ``pipeline_stages = k`` models inter-op (PP)
  parallelism: a batch takes the latency model's full time ``D`` but the instance accepts the
  next batch after ``D / k`` (papers.md §2.2 Eq. 2). A prefix cache (block-hash LRU) per
  instance removes cached blocks from the work.
* **KV transfer** over ``SharedLink``s: one RTT, then processor sharing of the capacity.
  Inside the decode datacenter a local prefill batch's KV moves to decode at the pool's
  ``kv_gbps`` (its fabric NIC, or NVLink when prefill and decode share a node) and lands
  together once all of it has arrived.
* **Decode** by continuous batching, admitted as vLLM's scheduler does: first come first
  served while fewer than ``max_batch`` (``max_num_seqs``) sequences run *and* the newcomer's
  KV fits in ``kv_capacity_tokens`` beside the running sequences' next step; when the running
  sequences outgrow the KV capacity the newest is preempted (recompute mode: it returns to the
  front of the queue and, readmitted, recomputes its prompt and generated tokens in its first
  step). Between membership changes the batch is fixed, so the step time grows by a constant
  per step (context grows by the batch size); the time of the n-th step is a closed-form
  quadratic, and the loop jumps straight to the next completion, the step where KV runs out, or
  the step boundary where a newly arrived request joins. Cost grows with the number of
  requests, not with the number of output tokens. (The step time is taken as affine in context
  within one such epoch, from the model at its first two steps: exact for DistServe's form, the
  usual case for roofline models that stay memory-bound.)
* **Aggregated pools** (``DecodePool.aggregated``: chunked prefill, vLLM's default scheduler):
  the instance prefills its local requests itself. Each step holds the running decodes first,
  then fills the rest of ``token_budget`` (``max_num_batched_tokens``) with chunks of the
  waiting prompts in arrival order, under ``max_num_seqs`` (a prompt being prefilled holds a
  sequence slot) and the KV capacity (its prefilled tokens hold KV beside the decodes'), with
  the same preemption. The step time is ``latency.mixed.mixed_step_seconds`` (decode step plus
  each chunk's own work). A local request's first token comes out of the step that finishes its
  last chunk (TTFT = arrival → that step's end), and it decodes on in the same batch: ``o``
  output tokens take that step and ``o − 1`` decode steps. Remote-prefilled requests arrive
  with their KV and join the decodes as in a PD-D pool (admitted before waiting prompts start).
  Steps with chunks are simulated one by one; with no chunk pending (or none that fits) the
  closed-form epochs above run, cut at the next step boundary when a prompt arrives.
* **Tokens and TTFT** as on vLLM's NIXL P/D path: prefill runs with ``max_tokens=1`` and its
  token is dropped; the decode instance loads the prompt's KV, and its first step (the last
  prompt position) emits token 1, the first byte the client sees. So a request of ``o`` output
  tokens takes ``o`` decode steps; TTFT ends at its first decode step; TPOT is
  ``(finish − first token) / (o − 1)``. Requests that reach an idle decoder at the same instant
  (one prefill batch, identical arrivals) start in the same step; identical arrival timestamps
  batch together in prefill.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import count
from typing import Any

import numpy as np
from prfaas.planner.latency.measured import IdleWake
from prfaas.planner.latency.mixed import Chunk, mixed_step_seconds
from prfaas.planner.latency.model import LatencyModel
from prfaas.planner.routing.policy import Link, RoutingCore, Target
from prfaas.planner.routing.prefix import DenseChain, DensePrefixCache
from prfaas.planner.routing.threshold import DEFAULTS, EgressMeter, ThresholdController
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.links import LinkSpec, SharedLink
from prfaas.planner.sim.metrics import SimResult, StepSeries

__all__ = [
    "DecodeCluster",
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
    LOCAL_KV = 7
    CONTROL = 8
    """A callback at a time (``Simulation.at``): the online re-plan loop's ticks and role
    changes (``prfaas.planner.sim.online``)."""


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
    kv_gbps: float = 0.0
    """Local pools: KV bandwidth to the decode instances (Gbit/s); 0: instant. Remote pools
    use their link."""


@dataclass(frozen=True, slots=True)
class DecodePool:
    """Identical decode instances (continuous batching) in one datacenter."""

    name: str
    datacenter: str
    instances: int
    latency: LatencyModel
    max_batch: int = 256
    """``max_num_seqs``: most sequences decoded together by one instance."""
    kv_capacity_tokens: int = 0
    """KV cache of one instance in tokens (its memory after weights, at the plan's memory
    fraction); 0: unlimited, only ``max_batch`` caps the batch."""
    cache_blocks: int = 0
    """Prefix-cache capacity per instance in blocks (a remote request's KV transfer skips the
    prefix decode holds); 0 disables the cache."""
    aggregated: bool = False
    """An aggregated (chunked-prefill) pool: its instances also prefill the local requests, in
    mixed steps; the configuration then has no local prefill pool."""
    token_budget: int = 0
    """Aggregated pools: ``max_num_batched_tokens``, the tokens of one step (decodes first,
    then prefill chunks); 0: unlimited."""


@dataclass(frozen=True, slots=True)
class RoutingSpec:
    """The router's policy knobs (see ``ThresholdController`` for their meaning)."""

    threshold_tokens: float | None = None
    """Planned ``t``: offload prompts whose uncached length exceeds it. None: never offload."""
    headroom: float = DEFAULTS.headroom
    adaptive: bool = True
    """Raise ``t`` while estimated egress exceeds ``headroom × capacity`` (PrfaaS §3.4.3)."""
    meter_window_s: float = DEFAULTS.meter_window_s
    controller_interval_s: float = DEFAULTS.interval_s
    raise_factor: float = DEFAULTS.raise_factor
    decay_factor: float = DEFAULTS.decay_factor
    low_water: float = DEFAULTS.low_water
    distribution_aware: bool = True
    """Derive ``t``'s base from the observed uncached lengths (``ThresholdController.observe``);
    False: the plain multiplicative feedback loop."""
    derive_window_s: float = DEFAULTS.derive_window_s
    """Sliding window of observed lengths (λ and the length distribution) for that base."""


@dataclass(frozen=True, slots=True)
class DecodeCluster:
    """One decode cluster of a multi-cluster run: its router (own ``t`` and threshold loop),
    decode pool, PD-P pools, and the PrfaaS pools it offloads to, each over a named link into
    its datacenter. Its router sees only its own pools; a PrfaaS pool named by several
    clusters is one set of instances (one queue each), so their load is shared."""

    name: str
    decode: DecodePool
    share: float
    """Its part of the arrivals (normalised over the clusters): the plan's ``Λ_d``."""
    local: tuple[str, ...] = ()
    """Names of its PD-P pools in ``SimConfig.prefill`` (none: every request goes remote)."""
    remotes: tuple[tuple[str, str], ...] = ()
    """``(prefill pool, link)`` pairs its router may offload to (none: it never offloads)."""
    routing: RoutingSpec = field(default_factory=RoutingSpec)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A serving configuration: prefill pools, one decode pool or several decode clusters,
    links, routing.

    One cluster (``decode``): prefill pools in the decode pool's datacenter are *local*
    (PD-P); the others are *remote* (PrfaaS) and each needs a link from its datacenter to the
    decode datacenter. Without a decode pool a request ends at its prefill (prefill-only runs,
    e.g. for goodput search); without prefill pools requests enter decode directly.

    Several clusters (``clusters``, ``decode`` None, ``routing`` unused): each
    ``DecodeCluster`` names its local pools and its remote (pool, link) pairs; a pool local to
    no cluster is a shared PrfaaS pool. Each arrival goes to one cluster, drawn with the
    clusters' shares from the run's seed.
    """

    name: str
    prefill: tuple[PrefillPool, ...]
    decode: DecodePool | None
    links: tuple[LinkSpec, ...] = ()
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    block_tokens: int = DEFAULTS.block_size
    """The engines' prefix-cache block (tokens): the unit of ``cache_blocks``. Prefixes are
    matched in the stream's chain blocks (``RequestStream.chains``); a capacity is converted to
    those, rounded down (at least one block)."""
    clusters: tuple[DecodeCluster, ...] = ()
    """Several decode clusters (empty: ``decode`` is the one)."""
    data_plane_s: tuple[float, float] = (0.0, 0.0)
    """Seconds (local path, remote path) the data plane adds to each request's first token and
    finish as the client sees them (``latency.measured.DataPlane``: router, API servers, NIXL
    set-up). That work runs outside the engines, so it delays the client, not the engines."""
    idle_wake: IdleWake | None = None
    """What an instance left idle adds to its next request (``latency.measured.IdleWake``):
    its ``engine`` part lengthens the instance's first step after the idle time (occupancy),
    its ``outside`` part delays that request's client-visible times. None: nothing."""


# --------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False, kw_only=True)
class _Drainable(Target):
    """An instance that can leave its role (online re-plan): routing skips it while it drains,
    and ``drained`` runs once it holds nothing."""

    leaving: bool = False
    """Draining for a role change: routing skips it; ``drained`` runs when it holds nothing."""
    drained: Callable[[Target], None] | None = None

    def available(self, now: float) -> bool:
        return not self.leaving

    def finished(self) -> None:
        self.in_flight -= 1
        if self.leaving and self.in_flight == 0 and self.drained is not None:
            self.drained(self)


@dataclass(slots=True, eq=False, kw_only=True)
class _Prefiller(_Drainable):
    """A prefill instance (``in_flight``: requests queued or in service)."""

    index: int
    pool: int
    latency: LatencyModel
    budget: int
    stages: int
    queue: deque[int] = field(default_factory=deque)
    busy: bool = False
    idle_since: float = 0.0
    """When it last had nothing to do (-1: busy); for ``SimConfig.idle_wake``."""


@dataclass(slots=True)
class _Pool:
    name: str
    datacenter: str
    remote: bool
    """A PrfaaS pool: its KV crosses the link its request was routed over."""
    instances: list[_Prefiller]
    kv_Bps: float = 0.0
    """Local pools: bytes/s of KV to decode (0: instant)."""
    waiting: int = 0
    series_t: array = field(default_factory=lambda: array("d", [0.0]))
    series_v: array = field(default_factory=lambda: array("d", [0.0]))


@dataclass(slots=True, eq=False, kw_only=True)
class _Decoder(_Drainable):
    """A decode instance (``in_flight``: requests routed to it and not finished)."""

    index: int
    latency: LatencyModel
    max_batch: int
    kv_cap: float = math.inf
    """KV capacity in tokens (inf: unlimited)."""
    members: list[tuple[int, int, int]] = field(default_factory=list)
    """Heap of (finish step, request, context contribution)."""
    waiting: deque[int] = field(default_factory=deque)
    fresh: list[int] = field(default_factory=list)
    """Requests admitted for the coming epoch whose first token its first step emits."""
    extra: float = 0.0
    """Seconds added to the coming epoch's first step (recomputing preempted requests)."""
    starting: bool = False
    """An epoch start is scheduled at the current instant (idle decoder woken)."""
    steps: int = 0
    """Decode steps run before the current epoch began."""
    base_ctx: int = 0
    """Σ over members of (context at join − join step): context now = base + b · steps."""
    t0: float = 0.0
    s0: float = 0.0
    delta: float = 0.0
    version: int = 0
    pending: int = 0
    """Steps of the current epoch after which the scheduled event fires (0: none, idle)."""
    budget: float = 0.0
    """Aggregated instances: tokens per step (inf: unlimited); 0: a PD-D instance."""
    prompts: deque[int] = field(default_factory=deque)
    """Aggregated: local requests waiting for or in chunked prefill, in arrival order (at most
    the first is partly prefilled: a later prompt gets a chunk only when the one before it
    finishes in the same step)."""
    prompt_kv: int = 0
    """Aggregated: prompt tokens prefilled so far by the partly prefilled first prompt."""
    chunks: list[tuple[int, int]] = field(default_factory=list)
    """Aggregated: (request, tokens) of the chunks in the step in flight."""
    idle_since: float = 0.0
    """When it last had nothing to do (-1: running); for ``SimConfig.idle_wake``."""

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


@dataclass(slots=True, eq=False, kw_only=True)
class _LinkState(Link):
    """The routing core's link (``bytes_in_flight``: KV routed over it and not yet delivered)
    and the shared link that carries the bytes."""

    link: SharedLink
    """The link carrying the bytes (shared by every router that offloads over it)."""
    wire: int
    """Index of ``link`` in ``Simulation._wires``."""
    index: int
    """Index of this state in ``Simulation._links``."""
    offered_t: array = field(default_factory=lambda: array("d"))
    offered_b: array = field(default_factory=lambda: array("d"))
    thr_t: array = field(default_factory=lambda: array("d"))
    thr_v: array = field(default_factory=lambda: array("d"))


@dataclass(slots=True)
class _Router:
    """One decode cluster's router: its decision object and its views of the links."""

    name: str
    core: RoutingCore[Any, _LinkState]
    links: list[_LinkState]


ProgressFn = Callable[[int], None]
DECODE_QUEUE = "decode (all clusters)"
"""Key of the decode pools' combined queue in a multi-cluster result's ``queues``."""
_SPLIT_STREAM = 0x5B11
"""Second seed word of the draw that splits arrivals among decode clusters."""


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
        self._seed = seed
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
        self._kv: list[float] = [0.0] * n
        """KV bytes each remote request moves (the routing core's count)."""
        self._dec_of: list[int] = [-1] * n
        """Decode instance chosen for each request (-1: none)."""
        self._via: list[int] = [-1] * n
        """Router link state (index into ``_links``) a remote request's KV is metered on."""
        nan = math.nan
        self._uncached = [0] * n
        self._remote = [False] * n
        self._queued = [nan] * n
        self._pstart = [nan] * n
        self._pend = [nan] * n
        self._first = [nan] * n
        self._dstart = [nan] * n
        self._ready = [nan] * n
        self._finish = [nan] * n
        self._woke = [0.0] * n
        """Seconds the instances this request woke added outside the engines (idle wake)."""
        self._idle_wake = config.idle_wake
        chains = stream.block_chains
        self._chain_ids = chains.ids
        """Dense block ids (``Chains.dense``) once a cache needs them (``_cache``)."""
        self._chain_rev = chains.ids[:0]
        """``_chain_ids`` reversed (with them): each chain tail first is a contiguous slice."""
        self._n_ids = -1
        self._chain_first: list[int] = []
        """Each chain's first dense id (the cache's quick miss test)."""
        self._holders: array[int] | None = None
        """Per first block, the caches holding it (``DensePrefixCache``): a prompt whose count
        is 0 is routed without lookups (every one would miss)."""
        self._chain_off: list[int] = chains.offsets.tolist()
        self._chain_of: list[DenseChain | None] = [None] * n
        """The chain routing looked up, kept for the inserts after prefill and decode."""
        self._gen0 = [0] * n
        """Tokens generated before the current decode admission (> 0 after a preemption)."""
        self._join = [0] * n
        """Decoder step count when the request last joined its batch."""
        self._preemptions = 0
        self._prefilled = [0] * n
        """Aggregated pools: uncached prompt tokens prefilled so far in chunks."""
        self._build(config)

    # ---- setup -------------------------------------------------------------------------------

    def _build(self, config: SimConfig) -> None:
        clusters = config.clusters
        if clusters and config.decode is not None:
            raise SimulatorError(
                "give the decode pool as SimConfig.decode (one cluster) or the decode clusters "
                "as SimConfig.clusters (several), not both"
            )
        dec_pools = [c.decode for c in clusters] or ([config.decode] if config.decode else [])
        names = [p.name for p in config.prefill] + [d.name for d in dec_pools]
        if len(set(names)) != len(names):
            raise SimulatorError(f"pool names must be unique (they key the results): {names}")
        cnames = [c.name for c in clusters]
        if len(set(cnames)) != len(cnames):
            raise SimulatorError(f"decode cluster names must be unique: {cnames}")
        home = config.decode.datacenter if config.decode is not None else None
        links_by_from: dict[str, int] = {}
        wire_of: dict[str, int] = {}
        self._wires: list[SharedLink] = []
        for spec in config.links:
            if not clusters:
                if home is not None and spec.to_dc != home:
                    continue
                if spec.from_dc in links_by_from:
                    raise SimulatorError(
                        f"two links from {spec.from_dc!r} to {spec.to_dc!r}; give one per pair"
                    )
                links_by_from[spec.from_dc] = len(self._wires)
            if spec.name in wire_of:
                raise SimulatorError(f"two links named {spec.name!r}; link names must be unique")
            wire_of[spec.name] = len(self._wires)
            self._wires.append(SharedLink(spec))
        local_of: dict[str, str] = {}
        for c in clusters:
            for name in c.local:
                if name in local_of:
                    raise SimulatorError(
                        f"prefill pool {name!r} is local to both {local_of[name]!r} and "
                        f"{c.name!r}; a PD-P pool belongs to one decode cluster"
                    )
                local_of[name] = c.name
        self._pools: list[_Pool] = []
        self._instances: list[_Prefiller] = []
        for pi, pool in enumerate(config.prefill):
            if pool.instances < 1 or pool.pipeline_stages < 1:
                raise SimulatorError(
                    f"prefill pool {pool.name!r} needs instances >= 1 and pipeline_stages >= 1"
                )
            if clusters:
                remote = pool.name not in local_of
            else:
                remote = home is not None and pool.datacenter != home
                if remote and pool.datacenter not in links_by_from:
                    raise SimulatorError(
                        f"prefill pool {pool.name!r} is in {pool.datacenter!r} but no link "
                        f"goes from there to the decode datacenter {home!r}; add an InterDCLink"
                    )
            insts = []
            for _ in range(pool.instances):
                inst = _Prefiller(
                    cache=self._cache(pool.cache_blocks),
                    index=len(self._instances),
                    pool=pi,
                    latency=pool.latency,
                    budget=pool.token_budget,
                    stages=pool.pipeline_stages,
                )
                insts.append(inst)
                self._instances.append(inst)
            if pool.kv_gbps < 0:
                raise SimulatorError(
                    f"prefill pool {pool.name!r} needs kv_gbps >= 0 (0: instant local KV)"
                )
            self._pools.append(
                _Pool(pool.name, pool.datacenter, remote, insts, pool.kv_gbps * 1e9 / 8)
            )
        self._decoders: list[_Decoder] = []
        for dec in dec_pools:
            if dec.instances < 1 or dec.max_batch < 1 or dec.kv_capacity_tokens < 0:
                raise SimulatorError(
                    f"decode pool {dec.name!r} needs instances >= 1, max_batch >= 1 and "
                    "kv_capacity_tokens >= 0 (0: unlimited)"
                )
            cap = float(dec.kv_capacity_tokens) if dec.kv_capacity_tokens > 0 else math.inf
            if dec.token_budget < 0:
                raise SimulatorError(
                    f"decode pool {dec.name!r} needs token_budget >= 0 (0: unlimited)"
                )
            budget = 0.0
            if dec.aggregated:
                budget = float(dec.token_budget) if dec.token_budget > 0 else math.inf
            self._decoders += [
                _Decoder(
                    cache=self._cache(dec.cache_blocks),
                    index=len(self._decoders) + i,
                    latency=dec.latency,
                    max_batch=dec.max_batch,
                    kv_cap=cap,
                    budget=budget,
                )
                for i in range(dec.instances)
            ]
        self._dec_t = array("d", [0.0])
        self._dec_v = array("d", [0.0])
        self._dec_waiting = 0
        self._caching = any(p.cache_blocks > 0 for p in config.prefill) or any(
            d.cache_blocks > 0 for d in dec_pools
        )
        self._links: list[_LinkState] = []
        self._routers: list[_Router] = []
        self._picks = count()
        """One pick sequence for every router: "least recently picked" of a shared PrfaaS
        instance then means by any router, as its shared in-flight count does."""
        if clusters:
            self._build_clusters(clusters, wire_of)
        else:
            states = [self._link_state(wi, config.routing) for wi in range(len(self._wires))]
            behind = [
                (
                    st,
                    [
                        i
                        for i in self._instances
                        if self._pools[i.pool].remote
                        and self._pools[i.pool].datacenter == st.link.spec.from_dc
                    ],
                )
                for st in states
            ]
            local = [i for i in self._instances if not self._pools[i.pool].remote]
            core = self._make_core(config.routing, self._decoders, local, behind)
            self._routers.append(_Router(config.name, core, states))
        self._core = self._routers[0].core
        """The (first) router's decision object."""
        self._cluster_of: list[int] = [0] * self._n
        """Decode cluster (index into ``config.clusters``) each request arrives at."""
        if clusters:
            shares = np.array([c.share for c in clusters], dtype=np.float64)
            if not (np.all(np.isfinite(shares)) and np.all(shares >= 0) and shares.sum() > 0):
                raise SimulatorError(
                    f"decode cluster shares must be finite, >= 0 and not all 0: {shares.tolist()}"
                )
            # Independent thinning of the arrival stream: each cluster's arrivals keep the
            # stream's process (Poisson stays Poisson), drawn from the seed alone.
            rng = np.random.default_rng([self._seed, _SPLIT_STREAM])
            pick = rng.choice(len(clusters), size=self._n, p=shares / shares.sum())
            self._cluster_of = pick.tolist()
        self._handlers: list[Callable[[Any, Any], None]] = [
            self._on_arrival,
            self._on_prefill_done,
            self._on_stage_free,
            self._on_transfer_start,
            self._on_link_done,
            self._on_link_capacity,
            self._on_decode_step,
            self._on_local_kv,
            self._on_control,
        ]

    def _build_clusters(self, clusters: tuple[DecodeCluster, ...], wire_of: dict[str, int]) -> None:
        """One router per decode cluster over its decoders, its PD-P pools and the remote pools
        its plan offloads to (each behind the named link into its datacenter)."""
        by_name = {p.name: p for p in self._pools}
        start = 0
        for c in clusters:
            decs = self._decoders[start : start + c.decode.instances]
            start += c.decode.instances
            local: list[_Prefiller] = []
            for name in c.local:
                pool = by_name.get(name)
                if pool is None:
                    raise SimulatorError(
                        f"decode cluster {c.name!r} names local prefill pool {name!r}, which "
                        f"SimConfig.prefill does not have (pools: {sorted(by_name)})"
                    )
                local += pool.instances
            remote: dict[int, tuple[_LinkState, list[_Prefiller]]] = {}
            for name, link in c.remotes:
                pool = by_name.get(name)
                if pool is None or not pool.remote:
                    raise SimulatorError(
                        f"decode cluster {c.name!r} offloads to {name!r}, which is "
                        + ("not a prefill pool" if pool is None else "a PD-P pool")
                        + "; remotes name PrfaaS pools (not local to any decode cluster)"
                    )
                wi = wire_of.get(link, -1)
                if wi < 0:
                    raise SimulatorError(
                        f"decode cluster {c.name!r} offloads over link {link!r}, which "
                        f"SimConfig.links does not have (links: {sorted(wire_of)})"
                    )
                spec = self._wires[wi].spec
                if spec.to_dc != c.decode.datacenter or spec.from_dc != pool.datacenter:
                    raise SimulatorError(
                        f"link {link!r} goes {spec.from_dc!r} → {spec.to_dc!r}, but decode "
                        f"cluster {c.name!r} needs {pool.datacenter!r} (pool {name!r}) → "
                        f"{c.decode.datacenter!r}; name the link that ends in its datacenter"
                    )
                if wi not in remote:
                    remote[wi] = (self._link_state(wi, c.routing), [])
                insts = remote[wi][1]
                insts += [i for i in pool.instances if i not in insts]
            states = [st for st, _ in remote.values()]
            core = self._make_core(c.routing, decs, local, list(remote.values()))
            self._routers.append(_Router(c.name, core, states))

    def _link_state(self, wire: int, r: RoutingSpec) -> _LinkState:
        """A router's view of link ``wire``: its own egress meter and threshold loop."""
        link = self._wires[wire]
        config = self.config
        ctrl = ThresholdController(
            planned=r.threshold_tokens,
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
        state = _LinkState(
            meter=EgressMeter(window_s=r.meter_window_s),
            controller=ctrl,
            link=link,
            wire=wire,
            index=len(self._links),
        )
        state.thr_t.append(0.0)
        state.thr_v.append(ctrl.threshold)
        self._links.append(state)
        return state

    def _make_core(
        self,
        r: RoutingSpec,
        decoders: list[_Decoder],
        local: list[_Prefiller],
        remote: list[tuple[_LinkState, list[_Prefiller]]],
    ) -> RoutingCore[Any, _LinkState]:
        config = self.config
        aggregated = [d for d in decoders if d.budget > 0.0]
        if aggregated and local:
            raise SimulatorError(
                f"{len(aggregated)} decode instance(s) are aggregated (they prefill their local "
                f"requests themselves) beside {len(local)} local prefill instance(s); drop the "
                "local prefill pools of an aggregated decode pool"
            )
        return RoutingCore(
            block_size=self.stream.block_chains.block_tokens,
            kv_block_tokens=config.block_tokens,
            kv_bytes_per_token=config.kv_bytes_per_token,
            kv_fixed_bytes=config.kv_fixed_bytes,
            decode=list(decoders),
            local_prefill=local,
            remote=list(remote),
            adaptive=r.adaptive,
            observe=r.distribution_aware,
            decode_prefills=bool(aggregated),
            always_available=True,
            _picks=self._picks,
        )

    def _push(self, when: float, kind: EventKind, a: Any, b: Any = None) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, a, b))

    def at(self, when: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Call ``fn(arg)`` at simulated time ``when`` (a ``CONTROL`` event)."""
        self._push(when, EventKind.CONTROL, fn, arg)

    def _on_control(self, fn: Callable[[Any], None], arg: Any) -> None:
        fn(arg)

    # ---- loop --------------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Simulate every request to completion and return the result."""
        if self._events:
            raise SimulatorError("a Simulation runs once; build a new one for another run")
        if self._n:
            self._push(self._arrival[0], EventKind.ARRIVAL, 0)
        for li, link in enumerate(self._wires):
            for when, gbps in link.spec.schedule:
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

    def _chain_capacity(self, engine_blocks: int) -> int:
        """``engine_blocks`` of ``config.block_tokens`` as blocks of the stream's chains."""
        if engine_blocks <= 0:
            return 0
        tokens = engine_blocks * self.config.block_tokens
        return max(1, tokens // self.stream.block_chains.block_tokens)

    def _cache(self, engine_blocks: int) -> DensePrefixCache:
        """A prefix cache of ``engine_blocks`` engine blocks over the stream's dense ids."""
        capacity = self._chain_capacity(engine_blocks)
        if capacity > 0 and self._n_ids < 0:
            chains = self.stream.block_chains
            self._chain_ids, self._n_ids = chains.dense()
            self._chain_rev = self._chain_ids[::-1].copy()
            if len(chains.ids):
                starts = np.minimum(chains.offsets[:-1], len(chains.ids) - 1)
                self._chain_first = self._chain_ids[starts].tolist()
                if chains.heads_only_lead():
                    self._holders = array("i", bytes(4 * self._n_ids))
        return DensePrefixCache(capacity, max(self._n_ids, 0), self._holders)

    def _hashes(self, r: int) -> DenseChain | None:
        """Request ``r``'s block chain (``None``: empty, or no cache anywhere)."""
        if not self._caching or self._n_ids < 0:
            return None
        a, b = self._chain_off[r], self._chain_off[r + 1]
        if a == b:
            return None
        end = len(self._chain_rev)
        rev = self._chain_rev[end - b : end - a]
        return DenseChain(self._chain_ids[a:b], self._chain_first[r], rev)

    def _on_arrival(self, r: int, _: Any) -> None:
        """Route ``r`` and every later request arriving at the same instant, then start the
        idle prefill instances they went to, so identical timestamps share a batch."""
        arrival = self._arrival
        last = r
        while last + 1 < self._n and arrival[last + 1] == arrival[r]:
            last += 1
        if last + 1 < self._n:
            self._push(arrival[last + 1], EventKind.ARRIVAL, last + 1)
        if last == r:
            target = self._arrive(r)
            if target >= 0 and not self._instances[target].busy:
                self._start_batch(target)
            return
        targets = [self._arrive(q) for q in range(r, last + 1)]
        for target in dict.fromkeys(targets):
            if target >= 0 and not self._instances[target].busy:
                self._start_batch(target)

    def _arrive(self, r: int) -> int:
        """Route ``r`` and queue it; the prefill instance it queued at (-1: sent to decode)."""
        now = self.now
        length = self._input[r]
        router = self._routers[self._cluster_of[r]]
        hashes = self._chain_of[r] = self._hashes(r)
        holders = self._holders
        if hashes is None or (holders is not None and not holders[hashes.first]):
            d = router.core.decide((), length, now)  # no cache holds its first block
        else:
            d = router.core.decide(hashes, length, now)
        for state in router.links:
            thr = state.controller.threshold
            if thr != state.thr_v[-1]:
                state.thr_t.append(now)
                state.thr_v.append(thr)
        dec = d.decode
        if dec is not None:
            dec.started()
            self._dec_of[r] = dec.index
        inst: _Prefiller | None = d.prefill
        if inst is None and dec is not None and dec.budget > 0.0:
            self._queue_prompt(dec, r, d.prefill_cached_tokens)  # aggregated: it prefills r
            return -1
        if inst is None:  # no prefill pool: requests enter decode directly
            self._remote[r] = False
            self._queued[r] = self._pstart[r] = self._pend[r] = now
            self._deliver(r)
            return -1
        pool = self._pools[inst.pool]
        link = d.link
        if link is not None:
            link.send(now, d.kv_bytes, d.uncached_tokens)
            link.offered_t.append(now)
            link.offered_b.append(d.kv_bytes)
            self._kv[r] = d.kv_bytes
            self._remote[r] = True
            self._via[r] = link.index
        uncached = max(1, length - d.prefill_cached_tokens)
        self._uncached[r] = uncached
        self._queued[r] = now
        inst.queue.append(r)
        inst.started()
        self._pool_waiting(pool, 1)
        return inst.index

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
        wake = self._idle_wake
        if wake is not None and inst.idle_since >= 0.0:
            engine, outside = wake.prefill(now - inst.idle_since)
            seconds += engine
            for r in batch:
                self._woke[r] += outside
        inst.idle_since = -1.0
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
            inst.finished()
            if inst.cache.capacity_blocks > 0:
                hashes = self._chain_of[r]
                if hashes is not None:
                    inst.cache.insert(hashes)
        if inst.stages == 1:
            inst.busy = False
            if inst.queue:
                self._start_batch(idx)
        if not inst.busy and not inst.queue:
            inst.idle_since = now
        if not self._decoders:
            for r in batch:
                self._finished_at_first_token(r)
            return
        if pool.remote:
            links, via = self._links, self._via
            for r in batch:
                wire = links[via[r]].wire
                rtt = self._wires[wire].spec.rtt_s
                if rtt > 0.0:
                    self._push(now + rtt, EventKind.TRANSFER_START, r, wire)
                else:
                    self._on_transfer_start(r, wire)
        elif pool.kv_Bps > 0.0:
            per_token, fixed = self.config.kv_bytes_per_token, self.config.kv_fixed_bytes
            nbytes = sum(per_token * self._input[r] + fixed for r in batch)
            self._push(now + nbytes / pool.kv_Bps, EventKind.LOCAL_KV, batch)
        else:
            self._on_local_kv(batch, None)

    def _on_local_kv(self, batch: list[int], _: Any) -> None:
        for r in batch:
            self._deliver(r)

    def _finished_at_first_token(self, r: int) -> None:
        self._first[r] = self._ready[r] = self._dstart[r] = self._finish[r] = self.now
        self._decode_done(r)
        self._count_done()

    def _decode_done(self, r: int) -> None:
        """``r``'s last token went out: its decode instance holds its prompt's blocks now."""
        hashes = self._chain_of[r]
        self._chain_of[r] = None
        di = self._dec_of[r]
        if di < 0:
            return
        d = self._decoders[di]
        d.finished()
        if hashes is not None and d.cache.capacity_blocks > 0:
            d.cache.insert(hashes)

    def _count_done(self) -> None:
        self._done += 1
        if self._progress is not None and self._done % 4096 == 0:
            self._progress(self._done)

    # ---- links -------------------------------------------------------------------------------

    # Events carry the index of the link (``_wires``); each router has its own state for it.

    def _schedule_link(self, li: int) -> None:
        link = self._wires[li]
        when = link.next_completion()
        if when < math.inf:
            self._push(when, EventKind.LINK_DONE, li, link.version)

    def _on_transfer_start(self, r: int, li: int) -> None:
        link = self._wires[li]
        link.add(self.now, r, self._kv[r])
        self._schedule_link(li)

    def _on_link_done(self, li: int, version: int) -> None:
        link = self._wires[li]
        if version != link.version:
            return
        links, via = self._links, self._via
        for r in link.finish(self.now):
            links[via[r]].delivered(self._kv[r])
            self._deliver(r)
        self._schedule_link(li)

    def _on_link_capacity(self, li: int, gbps: float) -> None:
        self._wires[li].set_capacity(self.now, gbps)
        for state in self._links:
            if state.wire != li:
                continue
            before = state.controller.threshold
            state.controller.set_capacity(gbps * 1e9)
            if state.controller.threshold != before:
                state.thr_t.append(self.now)
                state.thr_v.append(state.controller.threshold)
        self._schedule_link(li)

    # ---- decode ------------------------------------------------------------------------------

    def _deliver(self, r: int) -> None:
        """KV of ``r`` is at the decode side: it queues for a decode slot and KV blocks."""
        now = self.now
        if not self._decoders:
            self._finished_at_first_token(r)
            return
        self._ready[r] = now
        di = self._dec_of[r]  # chosen with the request, by the routing core
        d = self._decoders[di]
        d.waiting.append(r)
        self._decode_waiting(1)
        if d.pending == 0:
            self._wake(d, r, prompt=False)
            return
        if len(d.waiting) == 1 and len(d.members) < d.max_batch:
            nxt = d.steps_done_by(now) + 1
            if nxt < d.pending and self._fits(d, r, d.steps + nxt):
                d.pending = nxt
                d.version += 1
                self._push(d.step_end(nxt), EventKind.DECODE_STEP, di, d.version)

    def _wake(self, d: _Decoder, r: int, *, prompt: bool) -> None:
        """Start an idle instance once everything arriving at this instant is in; ``r`` (a
        prompt to prefill, or a request whose KV arrived) pays what the idle time costs."""
        wake = self._idle_wake
        if wake is not None and d.idle_since >= 0.0:
            idle = self.now - d.idle_since
            engine, outside = wake.prefill(idle) if prompt else wake.decode(idle)
            d.extra += engine
            self._woke[r] += outside
        d.idle_since = -1.0
        if not d.starting:
            d.starting = True
            d.version += 1
            d.pending = 0
            self._push(self.now, EventKind.DECODE_STEP, d.index, d.version)

    def _fits(self, d: _Decoder, r: int, steps: int) -> bool:
        """Whether ``r``'s KV fits beside the members' next step at absolute step ``steps``
        (and a partly prefilled prompt's KV, on an aggregated instance)."""
        b = len(d.members)
        if b == 0:
            return True  # a lone sequence always runs (vLLM rejects what can never fit)
        need = d.base_ctx + b * (steps + 1) + d.prompt_kv + self._input[r] + self._gen0[r] + 1
        return need <= d.kv_cap

    # ---- aggregated (chunked-prefill) instances ----------------------------------------------

    def _queue_prompt(self, d: _Decoder, r: int, cached: int) -> None:
        """Local request ``r`` waits for chunked prefill on aggregated instance ``d``."""
        now = self.now
        self._remote[r] = False
        self._uncached[r] = max(1, self._input[r] - cached)
        self._queued[r] = now
        d.prompts.append(r)
        self._decode_waiting(1)
        if d.pending == 0:
            self._wake(d, r, prompt=True)
        elif len(d.prompts) == 1 and len(d.members) < min(d.budget, d.max_batch):
            nxt = d.steps_done_by(now) + 1  # a closed-form epoch: cut it at the next step
            if nxt < d.pending:
                d.pending = nxt
                d.version += 1
                self._push(d.step_end(nxt), EventKind.DECODE_STEP, d.index, d.version)

    def _mixed_step(self, d: _Decoder) -> bool:
        """Start one step of the running decodes plus prompt chunks up to the budget; False
        when no chunk fits (budget, ``max_num_seqs`` or KV taken by the decodes)."""
        b = len(d.members)
        left = d.budget - b
        if left <= 0:
            return False
        ctx = d.base_ctx + b * d.steps
        slots = d.max_batch - b - (1 if d.prompt_kv else 0)
        room = d.kv_cap - ctx - b - d.prompt_kv
        done, unc = self._prefilled, self._uncached
        chunks = d.chunks
        work: list[Chunk] = []
        for r in d.prompts:
            have = done[r]
            if have == 0 and slots <= 0:
                break
            c = min(unc[r] - have, left)
            if b or chunks:  # a lone sequence always runs
                c = min(c, room)
            if c <= 0:
                break
            chunks.append((r, int(c)))
            work.append(Chunk(c, have))
            left -= c
            room -= c
            if have == 0:
                slots -= 1
            if left <= 0:
                break
        if not chunks:
            return False
        seconds = mixed_step_seconds(d.latency, b, ctx, work)
        if not seconds > 0.0:
            raise SimulatorError(
                f"mixed-step latency model returned {seconds} s for {b} decodes and "
                f"{len(chunks)} chunks; it must be > 0"
            )
        d.t0 = self.now + d.extra
        d.extra = 0.0
        d.s0 = seconds
        d.delta = 0.0
        started = 0
        for r, _ in chunks:
            if done[r] == 0:
                self._pstart[r] = d.t0
                started += 1
        if started:
            self._decode_waiting(-started)
        if d.fresh:
            for r in d.fresh:
                self._first[r] = d.t0 + seconds
            d.fresh.clear()
        d.pending = 1
        self._push(d.t0 + seconds, EventKind.DECODE_STEP, d.index, d.version)
        return True

    def _chunks_done(self, d: _Decoder) -> None:
        """The step in flight ended: its chunks are prefilled; a prompt whose last chunk it
        carried emits its first token now and decodes on in the batch."""
        now = self.now
        done, unc, out = self._prefilled, self._uncached, self._output
        for r, c in d.chunks:
            done[r] += c
            if done[r] < unc[r]:
                continue
            d.prompts.popleft()  # prompts finish in queue order
            self._pend[r] = self._first[r] = self._ready[r] = self._dstart[r] = now
            if out[r] <= 1:
                self._finish[r] = now
                self._decode_done(r)
                self._count_done()
                continue
            self._gen0[r] = 1
            self._join[r] = d.steps
            contrib = self._input[r] + 1 - d.steps
            d.base_ctx += contrib
            heapq.heappush(d.members, (d.steps + out[r] - 1, r, contrib))
        d.chunks.clear()
        d.prompt_kv = done[d.prompts[0]] if d.prompts else 0

    def _decode_waiting(self, change: int) -> None:
        self._dec_waiting += change
        now = self.now
        if self._dec_t[-1] == now:
            self._dec_v[-1] = self._dec_waiting
        else:
            self._dec_t.append(now)
            self._dec_v.append(self._dec_waiting)

    def _admit(self, d: _Decoder, r: int) -> None:
        gen = self._gen0[r]
        ctx = self._input[r] + gen
        contrib = ctx - d.steps
        d.base_ctx += contrib
        self._join[r] = d.steps
        if gen == 0:
            self._dstart[r] = self.now
            d.fresh.append(r)
        else:  # readmitted after preemption: recompute prompt + generated tokens first
            d.extra += d.latency.prefill_seconds([ctx])
        heapq.heappush(d.members, (d.steps + self._output[r] - gen, r, contrib))

    def _preempt_newest(self, d: _Decoder) -> None:
        """vLLM's recompute preemption: the most recently admitted member gives its KV back
        and waits at the front of the queue with what it generated so far."""
        members = d.members
        k = max(range(len(members)), key=lambda i: (self._join[members[i][1]], members[i][1]))
        _, r, contrib = members[k]
        members[k] = members[-1]
        members.pop()
        heapq.heapify(members)
        d.base_ctx -= contrib
        self._gen0[r] += d.steps - self._join[r]
        d.waiting.appendleft(r)
        self._preemptions += 1
        self._decode_waiting(1)

    def _start_epoch(self, di: int) -> None:
        d = self._decoders[di]
        d.version += 1
        if d.prompts and self._mixed_step(d):
            return
        b = len(d.members)
        if b == 0:
            d.pending = 0
            d.idle_since = self.now
            return
        ctx = d.base_ctx + b * d.steps
        s0 = d.latency.decode_step_seconds(b, ctx)
        s1 = d.latency.decode_step_seconds(b, ctx + b)
        if not s0 > 0.0:
            raise SimulatorError(
                f"decode latency model returned {s0} s for batch {b}; it must be > 0"
            )
        d.t0 = self.now + d.extra
        d.extra = 0.0
        d.s0 = s0
        d.delta = max(s1 - s0, 0.0)
        if d.fresh:
            first = d.t0 + s0
            for r in d.fresh:
                self._first[r] = first
            d.fresh.clear()
        n = d.members[0][0] - d.steps
        if b > 1 and d.kv_cap < math.inf:
            # Steps until the members' KV outgrows the cache: base + b·(steps + n) <= cap.
            room = int((d.kv_cap - d.base_ctx - d.prompt_kv) // b) - d.steps
            n = min(n, max(room, 1))
        d.pending = n
        self._push(d.step_end(n), EventKind.DECODE_STEP, di, d.version)

    def _on_decode_step(self, di: int, version: int) -> None:
        d = self._decoders[di]
        if version != d.version:
            return
        d.starting = False
        d.steps += d.pending
        members = d.members
        now = self.now
        while members and members[0][0] <= d.steps:
            _, r, contrib = heapq.heappop(members)
            d.base_ctx -= contrib
            self._finish[r] = now
            self._decode_done(r)
            self._count_done()
        if d.chunks:
            self._chunks_done(d)
        held = d.prompt_kv
        while len(members) > 1 and d.base_ctx + len(members) * (d.steps + 1) + held > d.kv_cap:
            self._preempt_newest(d)
        admitted = 0
        waiting = d.waiting
        cap = d.max_batch - (1 if held else 0)
        while waiting and len(members) < cap and self._fits(d, waiting[0], d.steps):
            self._admit(d, waiting.popleft())
            admitted += 1
        if admitted:
            self._decode_waiting(-admitted)
        self._start_epoch(di)

    # ---- result ------------------------------------------------------------------------------

    def _result(self) -> SimResult:
        s = self.stream
        f = np.asarray
        links = {w.spec.name: StepSeries.of(*w.egress_series()) for w in self._wires}
        capacity = {}
        offered = {}
        for wi, w in enumerate(self._wires):
            spec = w.spec
            sched = ((0.0, spec.capacity_gbps), *spec.schedule)
            capacity[spec.name] = StepSeries.of([t for t, _ in sched], [g * 1e9 for _, g in sched])
            states = [st for st in self._links if st.wire == wi]
            none = np.zeros(0)
            at = np.concatenate([none, *(f(st.offered_t, dtype=np.float64) for st in states)])
            nbytes = np.concatenate([none, *(f(st.offered_b, dtype=np.float64) for st in states)])
            order = np.argsort(at, kind="stable")
            offered[spec.name] = (at[order], nbytes[order])
        multi = bool(self.config.clusters)
        thresholds = {
            (f"{router.name}/{st.link.spec.name}" if multi else st.link.spec.name): StepSeries.of(
                st.thr_t, st.thr_v
            )
            for router in self._routers
            for st in router.links
        }
        queues = {p.name: StepSeries.of(p.series_t, p.series_v) for p in self._pools}
        if self.config.decode is not None:
            queues[self.config.decode.name] = StepSeries.of(self._dec_t, self._dec_v)
        elif multi:
            queues[DECODE_QUEUE] = StepSeries.of(self._dec_t, self._dec_v)
        local_s, remote_s = self.config.data_plane_s
        shift = np.where(f(self._remote, dtype=np.bool_), remote_s, local_s)
        shift += f(self._woke, dtype=np.float64)
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
            decode_start_s=f(self._dstart, dtype=np.float64),
            first_token_s=f(self._first, dtype=np.float64) + shift,
            kv_ready_s=f(self._ready, dtype=np.float64),
            finish_s=f(self._finish, dtype=np.float64) + shift,
            links=links,
            link_capacity=capacity,
            offered=offered,
            thresholds=thresholds,
            queues=queues,
            events=self._events,
            preemptions=self._preemptions,
            clusters=tuple(c.name for c in self.config.clusters),
            cluster=f(self._cluster_of if multi else [], dtype=np.int32),
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
