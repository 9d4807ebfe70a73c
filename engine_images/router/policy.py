"""Routing state and decisions: which path (local / remote), which instances, how many KV bytes.

Built on ``prfaas.planner.routing.core`` (the same ``block_hashes``, ``PrefixCache``,
``EgressMeter``, ``ThresholdController`` and ``choose_route`` the simulator uses). No I/O: the
proxy calls ``RoutingPolicy.decide`` and reports back through ``Instance`` / ``LinkState``
(``started`` / ``finished``, ``record_success`` / ``record_failure``). Time is an explicit
``now`` (seconds, monotonic) so tests drive it.

* **Uncached length** is the prompt minus the longest prefix one *local* instance already holds
  (local prefill pool, or the decode pool where there is none): what the local PD cluster would
  have to compute.
* **Remote** iff ``choose_route(uncached, t_link, remote_usable)`` says so for some link
  (the least-utilised one wins).
* **Instance choice** inside a pool: cache affinity first (longest held prefix), unless that
  instance has ``affinityMaxImbalance`` more requests in flight than the least-loaded one;
  ties go to the less loaded, then the least recently picked.
* **Bandwidth**: a remote prefill puts ``kv_bytes_per_token × (prompt − decode-cached) +
  kv_fixed_bytes`` on its link's ``EgressMeter`` and into ``bytes_in_flight`` until decode has
  pulled it. The estimated egress is the larger of the meter's rate and in-flight bytes drained
  over one window; ``ThresholdController`` derives ``t``'s base from every request's uncached
  length (``observe``) and the link's budget, raises ``t`` while that estimate exceeds
  ``headroom × capacity`` and decays it back afterwards (``tick``).
* **Circuits**: ``failures`` consecutive failures open an instance's or a link's circuit for
  ``retryAfterS``; afterwards requests are let through again, and one success closes it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.errors import NoBackendError
from prfaas.planner.routing.core import (
    EgressMeter,
    PrefixCache,
    Route,
    ThresholdController,
    block_hashes,
    choose_route,
)

__all__ = ["Circuit", "Decision", "Instance", "LinkState", "RoutingPolicy"]


@dataclass(slots=True)
class Circuit:
    """Consecutive-failure circuit breaker with a retry-after."""

    failures_to_open: int
    retry_after_s: float
    failures: int = 0
    open_until: float = -math.inf

    def allows(self, now: float) -> bool:
        """Closed, or open long enough ago that a trial request may go through."""
        return self.failures < self.failures_to_open or now >= self.open_until

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = -math.inf

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.open_until = now + self.retry_after_s


@dataclass(slots=True, eq=False)
class Instance:
    """One engine instance: its URL, what it has cached, its load and its health."""

    url: str
    datacenter: str
    role: str
    cache: PrefixCache
    circuit: Circuit
    in_flight: int = 0
    last_pick: int = -1
    down_by_probe: bool = False
    """The open circuit was opened by health probes (a passing probe may close it)."""

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1


@dataclass(slots=True, eq=False)
class LinkState:
    """One remote datacenter's link: egress meter, bytes in flight, threshold loop, health."""

    datacenter: str
    name: str
    meter: EgressMeter
    controller: ThresholdController
    circuit: Circuit
    down: bool = False
    bytes_in_flight: float = 0.0

    def estimated_bps(self, now: float) -> float:
        drain = 8.0 * self.bytes_in_flight / self.meter.window_s
        return max(self.meter.rate_bps(now), drain)

    def usable(self, now: float) -> bool:
        return not self.down and self.controller.capacity_bps > 0 and self.circuit.allows(now)

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


@dataclass(slots=True)
class Decision:
    """Where one request goes. ``prefill`` ``None``: decode prefills itself (local only)."""

    route: Route
    prompt_tokens: int
    uncached_tokens: int
    hashes: list[int]
    decode: Instance
    prefill: Instance | None
    link: LinkState | None = None
    kv_bytes: float = 0.0


@dataclass(slots=True)
class RoutingPolicy:
    """All routing state of one router; ``reconfigure`` keeps caches, load and loops."""

    config: RouterConfig
    instances: dict[tuple[str, str, str], Instance] = field(default_factory=dict)
    links: dict[str, LinkState] = field(default_factory=dict)
    _picks: itertools.count[int] = field(default_factory=itertools.count)
    _pools: dict[tuple[str, str], list[Instance]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reconfigure(self.config)

    # ------------------------------------------------------------------ configuration
    def reconfigure(self, config: RouterConfig) -> None:
        """Adopt a new router file. Instances and links that persist keep their state."""
        self.config = config
        c = config.circuit
        wanted: dict[tuple[str, str, str], Instance] = {}
        for dc, eps in config.datacenters.items():
            for role, urls in (("prefill", eps.prefill), ("decode", eps.decode)):
                for url in urls:
                    key = (dc, role, url)
                    inst = self.instances.get(key)
                    if inst is None:
                        inst = Instance(
                            url,
                            dc,
                            role,
                            PrefixCache(config.prefix_cache_blocks),
                            Circuit(c.failures, c.retry_after_s),
                        )
                    inst.cache.capacity_blocks = config.prefix_cache_blocks
                    inst.circuit.failures_to_open = c.failures
                    inst.circuit.retry_after_s = c.retry_after_s
                    wanted[key] = inst
        self.instances = wanted
        self._pools = {}
        for (dc, role, _), inst in wanted.items():
            self._pools.setdefault((dc, role), []).append(inst)
        links: dict[str, LinkState] = {}
        ctl = config.controller
        for dc in config.remote_datacenters:
            ls = config.link(dc)
            cap = math.inf if ls.capacity_gbps is None else ls.capacity_gbps * 1e9
            state = self.links.get(dc)
            if state is None:
                state = LinkState(
                    dc,
                    ls.name,
                    EgressMeter(window_s=ctl.window_s),
                    ThresholdController(
                        config.threshold_tokens,
                        cap,
                        headroom=ls.headroom,
                        kv_bytes_per_token=config.kv_bytes_per_token,
                        kv_fixed_bytes=config.kv_fixed_bytes,
                    ),
                    Circuit(c.failures, c.retry_after_s),
                )
            state.name, state.down = ls.name, ls.down
            state.meter.window_s = ctl.window_s
            tc = state.controller
            tc.headroom, tc.max_threshold = ls.headroom, ctl.max_threshold_tokens
            tc.raise_factor, tc.decay_factor = ctl.raise_factor, ctl.decay_factor
            tc.low_water, tc.interval_s = ctl.low_water, ctl.interval_s
            tc.kv_bytes_per_token = config.kv_bytes_per_token
            tc.kv_fixed_bytes = config.kv_fixed_bytes
            tc.set_capacity(cap)
            tc.set_planned(config.threshold_tokens)
            links[dc] = state
        self.links = links

    def pool(self, datacenter: str, role: str) -> list[Instance]:
        """The instances of one role in one datacenter (configuration order; do not mutate)."""
        return self._pools.get((datacenter, role), [])

    @property
    def local_prefill_pool(self) -> list[Instance]:
        """Local PD-P instances, or the decode instances where the DC has no prefill pool."""
        dc = self.config.local_datacenter
        return self.pool(dc, "prefill") or self.pool(dc, "decode")

    # ------------------------------------------------------------------ decisions
    def tick(self, now: float) -> dict[str, float]:
        """Run every link's threshold loop; returns ``t`` per link name."""
        return {link.name: link.tick(now) for link in self.links.values()}

    def pick(
        self,
        instances: Sequence[Instance],
        hashes: Sequence[int],
        now: float,
        matched: dict[Instance, int] | None = None,
    ) -> tuple[Instance | None, int]:
        """Best healthy instance by cache affinity, then load; with its cached block count.
        ``matched`` (one decision's memo, same ``hashes``) holds the prefix length of every
        instance already looked up: looking again would give the same count and LRU order."""
        healthy = [i for i in instances if i.circuit.allows(now)]
        if not healthy:
            return None, 0
        least = min(i.in_flight for i in healthy)
        limit = least + self.config.affinity_max_imbalance
        best: Instance | None = None
        best_key: tuple[int, int, int] = (-1, 0, 0)
        best_blocks = 0
        for inst in healthy:
            blocks = 0
            if inst.in_flight <= limit:
                if matched is None:
                    blocks = inst.cache.match(hashes)
                elif inst in matched:
                    blocks = matched[inst]
                else:
                    blocks = matched[inst] = inst.cache.match(hashes)
            key = (blocks, -inst.in_flight, -inst.last_pick)
            if key > best_key:
                best, best_key, best_blocks = inst, key, blocks
        assert best is not None
        best.last_pick = next(self._picks)
        return best, best_blocks

    def decide(self, tokens: Sequence[int], now: float) -> Decision:
        """Route one prompt. Raises ``NoBackendError`` when no decode instance is healthy."""
        cfg = self.config
        bs = cfg.block_size
        n = len(tokens)
        hashes = block_hashes(tokens, bs)
        # Prefixes looked up are remembered for this decision: the local prefill pool is looked
        # at twice (and is the decode pool where there is none); again, match would return the
        # same counts and leave the same LRU order.
        matched: dict[Instance, int] = {}
        decode_pool = self.pool(cfg.local_datacenter, "decode")
        decode, decode_blocks = self.pick(decode_pool, hashes, now, matched)
        if decode is None:
            raise NoBackendError(
                f"no healthy decode instance in datacenter {cfg.local_datacenter!r} "
                f"({len(decode_pool)} configured, all failing); "
                f"retry after {cfg.circuit.retry_after_s:g} s or check the engines"
            )
        local_pool = self.local_prefill_pool
        local_cached = 0
        for i in local_pool:
            if i.circuit.allows(now):
                if i not in matched:
                    matched[i] = i.cache.match(hashes)
                local_cached = max(local_cached, min(n, matched[i] * bs))
        uncached = n - local_cached
        best_link: LinkState | None = None
        best_util = math.inf
        for link in self.links.values():
            link.controller.observe(now, uncached)  # the length distribution t* comes from
            t = link.tick(now)
            if not self.pool(link.datacenter, "prefill"):
                continue
            if choose_route(uncached, t, remote_usable=link.usable(now)) == "remote":
                util = link.estimated_bps(now) / max(link.controller.budget_bps, 1e-9)
                if util < best_util:
                    best_link, best_util = link, util
        if best_link is not None:
            prefill, _ = self.pick(self.pool(best_link.datacenter, "prefill"), hashes, now)
            if prefill is not None:
                moved = max(0, n - min(n, decode_blocks * bs))
                kv = cfg.kv_bytes_per_token * moved + cfg.kv_fixed_bytes
                return Decision("remote", n, uncached, hashes, decode, prefill, best_link, kv)
        prefill = self.local_prefill(hashes, now, matched)
        return Decision("local", n, uncached, hashes, decode, prefill)

    def local_prefill(
        self, hashes: Sequence[int], now: float, matched: dict[Instance, int] | None = None
    ) -> Instance | None:
        """A healthy local PD-P instance; ``None`` means decode prefills itself."""
        dc = self.config.local_datacenter
        inst, _ = self.pick(self.pool(dc, "prefill"), hashes, now, matched)
        return inst
