"""The router's routing state: instances with circuits, links with circuits, and the decision.

The decision itself is ``prfaas.planner.routing.policy.RoutingCore`` (path, instances, KV bytes,
egress estimate, dispatch bookkeeping), the same object the simulator routes with; this module
adds what only a running router has: URLs, datacenters and roles from the router file, and
circuit breakers. No I/O: the proxy calls ``RoutingPolicy.decide`` and reports back through
``Instance`` / ``LinkState`` (``started`` / ``finished``, ``send`` / ``delivered``,
``circuit.record_success`` / ``record_failure``). Time is an explicit ``now`` (seconds,
monotonic) so tests drive it.

* **Hashes**: ``block_hashes`` of the prompt's token ids at the file's ``block_size``.
* **Available**: an instance or link whose circuit allows a request now (and a link not marked
  down, with capacity).
* **Circuits**: ``failures`` consecutive failures open an instance's or a link's circuit for
  ``retryAfterS``; afterwards requests are let through again, and one success closes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.errors import NoBackendError
from prfaas.planner.routing.policy import Link, Route, RoutingCore, Target
from prfaas.planner.routing.prefix import PrefixCache, block_hashes
from prfaas.planner.routing.threshold import EgressMeter, ThresholdController

__all__ = ["Circuit", "Decision", "Instance", "LinkState", "RoutingPolicy"]


@dataclass(slots=True)
class Circuit:
    """Consecutive-failure circuit breaker with a retry-after: after ``failures_to_open``
    failures it opens for ``retry_after_s``; then it is half-open and admits ONE trial
    (``take_trial``), whose outcome closes or re-opens it; while the trial is out, the rest
    wait, and only if it stays out another ``retry_after_s`` is a second trial admitted."""

    failures_to_open: int
    retry_after_s: float
    failures: int = 0
    open_until: float = -math.inf

    def allows(self, now: float) -> bool:
        """Closed, or open long enough ago that a trial request may go through."""
        return self.failures < self.failures_to_open or now >= self.open_until

    def take_trial(self, now: float) -> None:
        """A request was sent here: if the circuit is half-open it is the one trial, so the
        circuit stays shut to others until its outcome is recorded (or ``retry_after_s``)."""
        if self.failures >= self.failures_to_open and now >= self.open_until:
            self.open_until = now + self.retry_after_s

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = -math.inf

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.open_until = now + self.retry_after_s


@dataclass(slots=True, eq=False, kw_only=True)
class Instance(Target):
    """One engine instance: its URL, what it has cached, its load and its health."""

    url: str
    datacenter: str
    role: str
    circuit: Circuit
    down_by_probe: bool = False
    """The open circuit was opened by health probes (a passing probe may close it)."""

    def available(self, now: float) -> bool:
        return self.circuit.allows(now)


@dataclass(slots=True, eq=False, kw_only=True)
class LinkState(Link):
    """One remote datacenter's link (egress meter, KV in flight, threshold loop) and health."""

    datacenter: str
    name: str
    circuit: Circuit

    def usable(self, now: float) -> bool:
        return not self.down and self.controller.capacity_bps > 0 and self.circuit.allows(now)


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
    core: RoutingCore[Instance, LinkState] = field(default_factory=RoutingCore)
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
                            cache=PrefixCache(config.prefix_cache_blocks),
                            url=url,
                            datacenter=dc,
                            role=role,
                            circuit=Circuit(c.failures, c.retry_after_s),
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
                    meter=EgressMeter(window_s=ctl.window_s),
                    controller=ThresholdController(
                        config.threshold_tokens,
                        cap,
                        headroom=ls.headroom,
                        kv_bytes_per_token=config.kv_bytes_per_token,
                        kv_fixed_bytes=config.kv_fixed_bytes,
                    ),
                    datacenter=dc,
                    name=ls.name,
                    circuit=Circuit(c.failures, c.retry_after_s),
                )
            state.name, state.down = ls.name, ls.down
            state.meter.window_s = ctl.window_s
            tc = state.controller
            tc.headroom, tc.max_threshold = ls.headroom, ctl.max_threshold_tokens
            tc.raise_factor, tc.decay_factor = ctl.raise_factor, ctl.decay_factor
            tc.low_water, tc.interval_s = ctl.low_water, ctl.interval_s
            tc.kv_bytes_per_token = config.kv_bytes_per_token
            tc.kv_fixed_bytes = config.kv_fixed_bytes
            if tc.capacity_bps != cap:  # an unchanged link keeps its loop as it is
                tc.set_capacity(cap)
            if tc.planned != config.threshold_tokens:  # an unchanged plan keeps the base
                tc.set_planned(config.threshold_tokens)
            links[dc] = state
        self.links = links
        core = self.core
        core.block_size = core.kv_block_tokens = config.block_size  # hashes at the engines' block
        core.kv_bytes_per_token = config.kv_bytes_per_token
        core.kv_fixed_bytes = config.kv_fixed_bytes
        core.affinity_max_imbalance = config.affinity_max_imbalance
        local = config.local_datacenter
        core.decode = self.pool(local, "decode")
        core.local_prefill = self.pool(local, "prefill")
        core.remote = [(link, self.pool(link.datacenter, "prefill")) for link in links.values()]

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
        """Best healthy instance by the routing core's rule (``RoutingCore.pick``)."""
        return self.core.pick(instances, hashes, now, matched)

    def decide(self, tokens: Sequence[int], now: float) -> Decision:
        """Route one prompt. Raises ``NoBackendError`` when no decode instance is healthy."""
        cfg = self.config
        hashes = block_hashes(tokens, cfg.block_size)
        d = self.core.decide(hashes, len(tokens), now)
        if d.decode is None:
            decode_pool = self.pool(cfg.local_datacenter, "decode")
            raise NoBackendError(
                f"no healthy decode instance in datacenter {cfg.local_datacenter!r} "
                f"({len(decode_pool)} configured, all failing); "
                f"retry after {cfg.circuit.retry_after_s:g} s or check the engines"
            )
        return Decision(
            d.route,
            d.prompt_tokens,
            d.uncached_tokens,
            hashes,
            d.decode,
            d.prefill,
            d.link,
            d.kv_bytes,
        )

    def local_prefill(
        self, hashes: Sequence[int], now: float, matched: dict[Instance, int] | None = None
    ) -> Instance | None:
        """A healthy local PD-P instance; ``None`` means decode prefills itself."""
        dc = self.config.local_datacenter
        inst, _ = self.pick(self.pool(dc, "prefill"), hashes, now, matched)
        return inst
