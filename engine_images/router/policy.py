"""The router's routing state: instances with circuits, links with circuits, and the decision.

The decision itself is ``prfaas.planner.routing.policy.RoutingCore`` (path, instances, KV bytes,
egress estimate, dispatch bookkeeping), the same object the simulator routes with; this module
adds what only a running router has: URLs, datacenters and roles from the router file, and
circuit breakers. No I/O: the proxy calls ``RoutingPolicy.decide`` and reports back through
``Instance`` / ``LinkState`` (``started`` / ``finished``, ``send`` / ``delivered``,
``circuit.record_success`` / ``record_failure``). Time is an explicit ``now`` (seconds,
monotonic) so tests drive it.

* **Hashes**: ``block_hashes`` of the prompt's token ids at the file's ``block_size``.
* **Prefix caches**: one LRU per engine, as large as the engine's KV memory (its datacenter's
  ``cacheBlocks`` for its role, else ``prefixCacheBlocks``): a smaller one forgets prefixes
  the engine still holds, and the next turn of a conversation goes elsewhere and recomputes.
* **Available**: an instance or link whose circuit allows a request now (and a link not marked
  down, with capacity).
* **Circuits**: ``failures`` consecutive failures open an instance's or a link's circuit for
  ``retryAfterS``; afterwards requests are let through again, and one success closes it.
* **Roles of a convertible pool** (``kv_both`` engines, the file's ``convertible`` map): each
  instance is in the pool of its assigned role. A role change drains first: the instance leaves
  its old role at once (state ``leaving``: no new request of that role, the ones it holds run
  to their end), and its new-role entry waits (state ``joining``, in no pool) until the old one
  holds nothing; then it serves. Both entries share the engine's prefix cache and circuit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from prfaas.engine.router.config import PoolRole, RouterConfig
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
    state: str = "serving"
    """``serving``; ``leaving``: a role it no longer has, kept until its requests end;
    ``joining``: its new role, waiting for the ``leaving`` entry of the same engine to drain."""

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


def _assigned_roles(config: RouterConfig, datacenter: str, url: str) -> set[str]:
    eps = config.datacenters.get(datacenter)
    if eps is None:
        return set()
    roles = {r for r, urls in (("prefill", eps.prefill), ("decode", eps.decode)) if url in urls}
    if url in eps.convertible:
        roles.add(eps.convertible[url])
    return roles


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
    _draining: bool = False
    """Some engine is changing role (``settle`` has work)."""

    def __post_init__(self) -> None:
        self.reconfigure(self.config)

    # ------------------------------------------------------------------ configuration
    def reconfigure(self, config: RouterConfig) -> None:
        """Adopt a new router file. Instances and links that persist keep their state."""
        self.config = config
        c = config.circuit
        wanted: dict[tuple[str, str, str], Instance] = {}
        by_engine: dict[tuple[str, str], list[Instance]] = {}
        for inst in self.instances.values():
            by_engine.setdefault((inst.datacenter, inst.url), []).append(inst)
        for dc, eps in config.datacenters.items():
            assigned = [
                *((role, url) for role, urls in (("prefill", eps.prefill), ("decode", eps.decode))
                  for url in urls),
                *((role, url) for url, role in eps.convertible.items()),
            ]
            for role, url in assigned:
                key = (dc, role, url)
                blocks = config.cache_blocks(dc, role)
                known = self.instances.get(key)
                if known is not None:
                    inst = known
                else:
                    # The engine's other entries (a role change): same cache, same circuit.
                    same = by_engine.get((dc, url), [])
                    inst = Instance(
                        cache=same[0].cache if same else PrefixCache(blocks),
                        url=url,
                        datacenter=dc,
                        role=role,
                        circuit=same[0].circuit if same
                        else Circuit(c.failures, c.retry_after_s),
                    )
                inst.cache.capacity_blocks = blocks
                inst.circuit.failures_to_open = c.failures
                inst.circuit.retry_after_s = c.retry_after_s
                wanted[key] = inst
        convertible = {
            (dc, url) for dc, eps in config.datacenters.items() for url in eps.convertible
        }
        for key, inst in self.instances.items():
            if key in wanted or (inst.datacenter, inst.url) not in convertible:
                continue  # a role kept, or an engine removed (its requests hold their entry)
            if inst.in_flight > 0:  # a role change: drain the old role first
                inst.state = "leaving"
                wanted[key] = inst
        for key, inst in wanted.items():
            if inst.state == "leaving" and key[1] in _assigned_roles(config, key[0], key[2]):
                inst.state = "serving"  # changed back before it drained
        self.instances = wanted
        self._rebuild_pools()
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
        self._rebuild_pools()

    def _rebuild_pools(self) -> None:
        """Pools of the serving entries; a new role joins once its engine's old role drained."""
        leaving = {(i.datacenter, i.url) for i in self.instances.values() if i.state == "leaving"}
        self._pools = {}
        for (dc, role, url), inst in self.instances.items():
            if inst.state != "leaving":
                inst.state = "joining" if (dc, url) in leaving else "serving"
            if inst.state == "serving":
                self._pools.setdefault((dc, role), []).append(inst)
        self._draining = bool(leaving)
        core, local = self.core, self.config.local_datacenter
        core.decode = self.pool(local, "decode")
        core.local_prefill = self.pool(local, "prefill")
        core.remote = [
            (link, self.pool(link.datacenter, "prefill")) for link in self.links.values()
        ]

    def settle(self) -> bool:
        """Finish the role changes whose old role has drained (no request in flight there);
        ``True`` when an entry left. Called before every decision and by the ticker."""
        if not self._draining:
            return False
        done = [k for k, i in self.instances.items() if i.state == "leaving" and i.in_flight <= 0]
        for key in done:
            del self.instances[key]
        self._rebuild_pools()
        return bool(done)

    def assignment(self) -> dict[str, dict[str, str]]:
        """Per datacenter, each convertible engine's role now (``prefill``/``decode``, or
        ``draining:<old>-><new>`` while its old role still holds requests)."""
        out: dict[str, dict[str, str]] = {}
        for dc, eps in self.config.datacenters.items():
            for url, role in eps.convertible.items():
                old = [
                    i.role for i in self.instances.values()
                    if i.datacenter == dc and i.url == url and i.state == "leaving"
                ]
                out.setdefault(dc, {})[url] = f"draining:{old[0]}->{role}" if old else role
        return out

    def role_state(self) -> tuple[dict[str, PoolRole], dict[str, int]]:
        """The roles convertible engines have now (URL → role) and the requests each engine
        holds: what ``discovery.apply_discovery`` keeps stable and moves by."""
        roles = {
            url: role for eps in self.config.datacenters.values()
            for url, role in eps.convertible.items()
        }
        busy: dict[str, int] = {}
        for inst in self.instances.values():
            busy[inst.url] = busy.get(inst.url, 0) + inst.in_flight
        return roles, busy

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
        self.settle()
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
        self.settle()
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
