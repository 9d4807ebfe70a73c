"""The long-timescale loop in the simulator: periodic re-plan with the measured bandwidth,
applied by role changes of ``kv_both`` instances that drain first (issue #12, item 4).

The router's threshold loop (seconds) keeps egress under a degraded link by raising ``t``; it
cannot move compute. The operator's re-plan (every ``interval_s``, the autoscaler's period) can:
``planner.solver.plan()`` on the problem with the links' *measured* bandwidth gives each decode
cluster a new PD-P/PD-D split and ``t``. Where PD-P and PD-D instances share accelerator, TP×PP
and flags they are one pool of ``kv_both`` engines, so the split changes by reassigning roles:

* **Measured bandwidth** of a link over the last interval: the bits it sent divided by the time
  it was busy (had a transfer in flight), i.e. what it achieved while busy, as the operator's
  autoscaler measures it (KV bytes ÷ KV transfer seconds, ``measuredGbps``). Average egress
  would measure demand, not the link (a link at 10 % load would read as 10 Gbps and the plan
  would shrink offload for nothing); a pull-based KV meter sees the achieved rate per transfer.
  A link idle for the whole interval gives no sample: its current capacity is used (the
  simulator's truth; an operator would keep its last sample or probe).
* **Role change with drain**: the instance is marked ``leaving`` (the routing core's
  ``Target.available`` is false, as for the router's drain): it takes no new request of its old
  role, finishes what it holds (queued and running prefills; routed, waiting and running
  decodes), leaves its old pool, and ``switch_delay_s`` later (0 for ``kv_both`` engines: the
  role is a per-request decision; a Deployment roll would be the model-load time) joins the
  other pool. No request is moved or dropped. The KV of a drained prefill instance's last
  batch still leaves it at the pool's local KV bandwidth (milliseconds); that is not waited for.
* **Which instances move**: those with the fewest requests in flight (quickest to drain); a
  re-plan that reverses a pending change cancels it (the instance stops leaving). Each role
  keeps at least one instance. Only a decode cluster with one PD-P pool beside a PD-D pool
  (not aggregated) changes roles; the others keep theirs. Whether the two rows are one
  ``kv_both`` pool is the plan's ``Plan.convertible()`` (the case study's are); where they
  are not, a role change is a Deployment roll (``prfaas simulate`` says so): give
  ``switch_delay_s`` the model-load time.

``simulate_online`` runs a ``SimConfig`` with the loop; ``solver_replan`` is the operator's
re-plan as a callback. The loop changes membership only; a run without it is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from prfaas.planner.problem import Problem
from prfaas.planner.routing.policy import Target
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.links import CapacitySchedule, SharedLink
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.simulator import (
    DecodePool,
    PrefillPool,
    ProgressFn,
    SimConfig,
    Simulation,
    _Decoder,
    _Prefiller,
    _Router,
)

__all__ = [
    "OnlineLoop",
    "OnlineResult",
    "OnlineSpec",
    "Replan",
    "ReplanFn",
    "RoleChange",
    "Split",
    "measured_gbps",
    "outage_window",
    "phase_p90",
    "recovery_s",
    "settled_s",
    "simulate_online",
    "solver_replan",
    "windowed_p90",
]

Role = Literal["prefill", "decode"]


@dataclass(frozen=True, slots=True)
class Split:
    """A decode cluster's planned roles: PD-P and PD-D instances, and its ``t``."""

    prefill: int
    decode: int
    threshold_tokens: float | None


ReplanFn = Callable[[float, Mapping[str, float]], Mapping[str, Split]]
"""``(now, measured Gbit/s per link name) -> Split per decode cluster name`` (clusters it
leaves out keep their split; a single-cluster ``SimConfig`` takes the one split given)."""


@dataclass(frozen=True, slots=True)
class OnlineSpec:
    """The re-plan loop: every ``interval_s`` the measured links go to ``replan``."""

    replan: ReplanFn
    interval_s: float = 60.0
    switch_delay_s: float = 0.0
    """Seconds between a drained instance leaving its old pool and joining the other."""

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise SimulatorError(
                f"replan interval must be a positive number of seconds, got {self.interval_s}"
            )
        if not (self.switch_delay_s >= 0 and math.isfinite(self.switch_delay_s)):
            raise SimulatorError(f"switch delay must be >= 0 seconds, got {self.switch_delay_s}")


@dataclass(frozen=True, slots=True)
class RoleChange:
    """One instance's role change: asked at ``asked_s``, drained (left its old pool) at
    ``drained_s``, serving its new role from ``joined_s`` (NaN: not yet by the run's end)."""

    cluster: str
    instance: int
    """Index of the instance in its cluster's convertible pool (PD-P first, then PD-D)."""
    to: Role
    asked_s: float
    drained_s: float = math.nan
    joined_s: float = math.nan
    cancelled_s: float = math.nan
    """A later re-plan reversed it before it completed."""


@dataclass(frozen=True, slots=True)
class Replan:
    """One re-plan: when, the measured Gbit/s per link, and the split per decode cluster."""

    at_s: float
    measured_gbps: dict[str, float]
    splits: dict[str, Split]


@dataclass(frozen=True, slots=True)
class OnlineResult:
    result: SimResult
    replans: tuple[Replan, ...]
    changes: tuple[RoleChange, ...]
    """Every role change asked for, in order (cancelled ones included)."""

    def roles_at(self, cluster: str, when: float, initial: tuple[int, int]) -> tuple[int, int]:
        """(PD-P, PD-D) instances serving at ``when``, from the initial split and the joins
        (instances between roles count in neither)."""
        p, d = initial
        for c in self.changes:
            if c.cluster != cluster:
                continue
            if c.drained_s <= when and not c.cancelled_s <= c.drained_s:
                p, d = (p - 1, d) if c.to == "decode" else (p, d - 1)
            if c.joined_s <= when:
                p, d = (p, d + 1) if c.to == "decode" else (p + 1, d)
        return p, d


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def measured_gbps(link: SharedLink, start: float, end: float) -> float:
    """What ``link`` achieved while busy in ``[start, end)`` (Gbit/s), or its current capacity
    when it was idle throughout (see the module docstring for why)."""
    t, bps = link.egress_series()
    bits = busy = 0.0
    for i in range(len(t)):
        a = max(t[i], start)
        b = min(t[i + 1] if i + 1 < len(t) else end, end)
        if b > a and bps[i] > 0.0:
            bits += bps[i] * (b - a)
            busy += b - a
    if busy <= 0.0:
        return link.capacity_bps / 1e9
    return bits / busy / 1e9


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Slot:
    """One convertible instance: its prefill and decode personas (created on first use)."""

    number: int
    role: Role
    """The role it serves (or, between roles, the one it left)."""
    target: Role
    prefiller: _Prefiller | None = None
    decoder: _Decoder | None = None
    switching: bool = False
    """Drained and out of both pools, joining ``target`` after the switch delay."""
    change: int = -1
    """Index of its open ``RoleChange`` in ``OnlineLoop.changes`` (-1: none)."""

    def persona(self) -> _Prefiller | _Decoder:
        p = self.prefiller if self.role == "prefill" else self.decoder
        assert p is not None
        return p


@dataclass(slots=True, eq=False)
class _Cluster:
    name: str
    router: _Router
    prefill: PrefillPool
    pool_index: int
    decode: DecodePool
    slots: list[_Slot] = field(default_factory=list)


class OnlineLoop:
    """The loop attached to one ``Simulation`` (before its ``run()``)."""

    def __init__(self, sim: Simulation, spec: OnlineSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.replans: list[Replan] = []
        self.changes: list[RoleChange] = []
        self.clusters = self._clusters(sim)
        for c in self.clusters:
            c.router.core.always_available = False  # honour ``leaving``
            for inst in c.router.core.local_prefill + c.router.core.decode:
                inst.drained = self._drained
        sim.at(spec.interval_s, self._tick)

    def _clusters(self, sim: Simulation) -> list[_Cluster]:
        config = sim.config
        pools = {p.name: (i, p) for i, p in enumerate(config.prefill)}
        specs: list[tuple[str, tuple[str, ...], DecodePool]] = []
        if config.clusters:
            specs = [(c.name, c.local, c.decode) for c in config.clusters]
        elif config.decode is not None:
            local = tuple(p.name for i, p in enumerate(config.prefill) if not sim._pools[i].remote)
            specs = [(config.name, local, config.decode)]
        out = []
        refused = []
        for router, (name, local, dec) in zip(sim._routers, specs, strict=True):
            if len(local) != 1 or dec.aggregated:
                refused.append(
                    f"{name!r} has {len(local)} local prefill pool(s)"
                    + (" and an aggregated decode pool" if dec.aggregated else "")
                )
                continue
            pi, pool = pools[local[0]]
            c = _Cluster(name, router, pool, pi, dec)
            n = 0
            for inst in router.core.local_prefill:
                c.slots.append(_Slot(n, "prefill", "prefill", prefiller=inst))
                n += 1
            for dinst in router.core.decode:
                c.slots.append(_Slot(n, "decode", "decode", decoder=dinst))
                n += 1
            out.append(c)
        if not out:
            raise SimulatorError(
                "role changes need a decode cluster with one PD-P pool beside its PD-D pool ("
                + "; ".join(refused)
                + "); simulate without the online re-plan"
            )
        return out

    # ---- ticks -------------------------------------------------------------------------------

    def _tick(self, _: Any) -> None:
        sim = self.sim
        now = sim.now
        start = now - self.spec.interval_s
        measured = {w.spec.name: measured_gbps(w, start, now) for w in sim._wires}
        splits = dict(self.spec.replan(now, measured))
        self.replans.append(Replan(now, measured, splits))
        single = not sim.config.clusters and len(splits) == 1
        for c in self.clusters:
            split = next(iter(splits.values())) if single else splits.get(c.name)
            if split is not None:
                self._apply(c, split)
        if sim._done < sim._n:
            sim.at(now + self.spec.interval_s, self._tick)

    def _apply(self, c: _Cluster, split: Split) -> None:
        for st in c.router.links:
            before = st.controller.threshold
            st.controller.set_planned(split.threshold_tokens)
            if st.controller.threshold != before:
                st.thr_t.append(self.sim.now)
                st.thr_v.append(st.controller.threshold)
        total = len(c.slots)
        want = min(max(split.prefill, 1), total - 1)  # keep both roles served
        have = sum(1 for s in c.slots if s.target == "prefill")
        if want == have:
            return
        to: Role = "prefill" if want > have else "decode"
        frm: Role = "decode" if to == "prefill" else "prefill"
        # Not those between roles (they join their target first; the next tick may move them).
        movable = [s for s in c.slots if s.target == frm and not s.switching]
        # Reversing a pending change first (it holds the least), then the least loaded.
        movable.sort(key=lambda s: (s.role != to, s.persona().in_flight))
        for s in movable[: abs(want - have)]:
            self._move(c, s, to)

    def _move(self, c: _Cluster, s: _Slot, to: Role) -> None:
        now = self.sim.now
        s.target = to
        if s.change >= 0:  # reversal of an open change
            self.changes[s.change] = replace(self.changes[s.change], cancelled_s=now)
            s.change = -1
        if s.role == to:
            s.persona().leaving = False
            return
        s.change = len(self.changes)
        self.changes.append(RoleChange(c.name, s.number, to, now))
        p = s.persona()
        p.leaving = True
        if p.in_flight == 0:
            self._drained(p)

    def _drained(self, persona: Target) -> None:
        """``persona`` (leaving) holds nothing now: out of its pool; join the other later."""
        c, s = self._owner(persona)
        if s.role == s.target or s.switching:
            return
        s.persona().leaving = False
        core = c.router.core
        pool: list[Any] = core.local_prefill if s.role == "prefill" else core.decode
        pool.remove(persona)
        s.switching = True
        now = self.sim.now
        self.changes[s.change] = replace(self.changes[s.change], drained_s=now)
        self.sim.at(now + self.spec.switch_delay_s, self._join, (c, s))

    def _join(self, arg: tuple[_Cluster, _Slot]) -> None:
        c, s = arg
        sim = self.sim
        s.switching = False
        core = c.router.core
        if s.target == "prefill":
            if s.prefiller is None:
                s.prefiller = self._new_prefiller(c)
            core.local_prefill.append(s.prefiller)
        else:
            if s.decoder is None:
                s.decoder = self._new_decoder(c)
            core.decode.append(s.decoder)
        if s.role != s.target and s.change >= 0:
            self.changes[s.change] = replace(self.changes[s.change], joined_s=sim.now)
        s.role = s.target
        s.change = -1

    def _owner(self, persona: Target) -> tuple[_Cluster, _Slot]:
        for c in self.clusters:
            for s in c.slots:
                if s.prefiller is persona or s.decoder is persona:
                    return c, s
        raise SimulatorError("a drained instance belongs to no convertible pool")  # a bug

    def _new_prefiller(self, c: _Cluster) -> _Prefiller:
        sim, pool = self.sim, c.prefill
        inst = _Prefiller(
            cache=sim._cache(pool.cache_blocks),
            index=len(sim._instances),
            pool=c.pool_index,
            latency=pool.latency,
            budget=pool.token_budget,
            stages=pool.pipeline_stages,
            drained=self._drained,
            idle_since=sim.now,
        )
        sim._instances.append(inst)
        sim._pools[c.pool_index].instances.append(inst)
        return inst

    def _new_decoder(self, c: _Cluster) -> _Decoder:
        sim, dec = self.sim, c.decode
        d = _Decoder(
            cache=sim._cache(dec.cache_blocks),
            index=len(sim._decoders),
            latency=dec.latency,
            max_batch=dec.max_batch,
            kv_cap=float(dec.kv_capacity_tokens) if dec.kv_capacity_tokens > 0 else math.inf,
            drained=self._drained,
            idle_since=sim.now,
        )
        sim._decoders.append(d)
        return d


def simulate_online(
    config: SimConfig,
    stream: RequestStream,
    online: OnlineSpec,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> OnlineResult:
    """Run ``config`` over ``stream`` with the re-plan loop (see the module docstring)."""
    sim = Simulation(config, stream, seed=seed, progress=progress)
    loop = OnlineLoop(sim, online)
    result = sim.run()
    return OnlineResult(result, tuple(loop.replans), tuple(loop.changes))


# --------------------------------------------------------------------------------------------
# The operator's re-plan as a callback
# --------------------------------------------------------------------------------------------


def solver_replan(problem: Problem, *, digits: int = 2) -> ReplanFn:
    """``planner.solver.plan()`` on ``problem`` with each link's bandwidth replaced by its
    measurement (rounded to ``digits`` significant digits, so that noise does not re-plan;
    plans are memoised per rounded measurement). An infeasible plan keeps the splits."""
    from prfaas.planner.solver import plan as make_plan

    memo: dict[tuple[float, ...], dict[str, Split]] = {}
    names = [lk.name for lk in problem.links]

    def replan(now: float, measured: Mapping[str, float]) -> Mapping[str, Split]:
        gbps = tuple(
            float(f"{measured[n]:.{digits}g}") if n in measured else lk.bandwidth_gbps
            for n, lk in zip(names, problem.links, strict=True)
        )
        if gbps not in memo:
            links = tuple(
                replace(lk, bandwidth_gbps=max(g, 1e-3))
                for lk, g in zip(problem.links, gbps, strict=True)
            )
            p = make_plan(replace(problem, links=links))
            out: dict[str, Split] = {}
            if p.feasible:
                t = {r.decode_cluster: r.threshold_tokens for r in p.routers}
                for d in (c for c in p.clusters if c.role == "decode"):
                    pre = sum(
                        c.instances for c in p.clusters if c.role == "prefill" and c.name == d.name
                    )
                    out[d.name] = Split(pre, d.instances, t.get(d.name, p.threshold_tokens))
            memo[gbps] = out
        return memo[gbps]

    return replan


# --------------------------------------------------------------------------------------------
# Reading the result
# --------------------------------------------------------------------------------------------


def windowed_p90(
    result: SimResult, window_s: float = 60.0, q: float = 90.0
) -> tuple[np.ndarray, np.ndarray]:
    """P``q`` TTFT of the requests arriving in each ``window_s`` window: (window starts,
    values; NaN where none arrived)."""
    arrival = result.arrival_s
    if not len(arrival):
        return np.zeros(0), np.zeros(0)
    ttft = result.ttft
    bins = np.floor(arrival / window_s).astype(np.int64)
    n = int(bins.max()) + 1
    out = np.full(n, np.nan)
    order = np.argsort(bins, kind="stable")
    edges = np.searchsorted(bins[order], np.arange(n + 1))
    for i in range(n):
        chunk = ttft[order[edges[i] : edges[i + 1]]]
        if chunk.size:
            out[i] = float(np.percentile(chunk, q))
    return np.arange(n) * window_s, out


def recovery_s(
    result: SimResult,
    slo_s: float,
    drop_s: float,
    until_s: float,
    window_s: float = 60.0,
    min_span_s: float = 600.0,
) -> float:
    """Seconds after ``drop_s`` from which the requests arriving until ``until_s`` meet the
    TTFT SLO at P90: the first ``k·window_s`` such that the P90 of the arrivals in
    ``[drop_s + k·window_s, until_s)`` is within ``slo_s``, looking only while that span is at
    least ``min_span_s`` long (0: it never left; inf: not found). One P90 over everything that
    follows, not per window: a 60 s window holds ~100 requests at the case study's rate, and
    where the re-planned steady state sits near the SLO single windows fall on both sides."""
    arrival, ttft = result.arrival_s, result.ttft
    k = 0
    while until_s - (drop_s + k * window_s) >= min(min_span_s, until_s - drop_s) - 1e-9:
        m = (arrival >= drop_s + k * window_s) & (arrival < until_s)
        if m.any() and float(np.percentile(ttft[m], 90)) <= slo_s:
            return k * window_s
        k += 1
    return math.inf


def outage_window(schedule: CapacitySchedule, nominal_gbps: float) -> tuple[float, float] | None:
    """(drop, return) of the first time a link's schedule falls below ``nominal_gbps`` and the
    first time after it that it is back (inf: never); None: it never drops."""
    drop = None
    for when, gbps in sorted(schedule):
        if drop is None and gbps < nominal_gbps:
            drop = when
        elif drop is not None and gbps >= nominal_gbps:
            return drop, when
    return None if drop is None else (drop, math.inf)


def phase_p90(result: SimResult, drop_s: float, up_s: float) -> tuple[float, float, float]:
    """P90 TTFT of the requests arriving before ``drop_s``, in ``[drop_s, up_s)`` and from
    ``up_s`` on (NaN where none arrived)."""
    out = []
    arrival, ttft = result.arrival_s, result.ttft
    for a, b in ((-math.inf, drop_s), (drop_s, up_s), (up_s, math.inf)):
        m = (arrival >= a) & (arrival < b)
        out.append(float(np.percentile(ttft[m], 90)) if m.any() else math.nan)
    return out[0], out[1], out[2]


def settled_s(online: OnlineResult, since_s: float, until_s: float = math.inf) -> float:
    """Seconds from ``since_s`` until the last role change asked in ``[since_s, until_s)``
    served its new role (0: none was asked; NaN: one had not by the run's end)."""
    joined = [
        c.joined_s
        for c in online.changes
        if since_s <= c.asked_s < until_s and math.isnan(c.cancelled_s)
    ]
    if not joined:
        return 0.0
    if any(math.isnan(j) for j in joined):
        return math.nan
    return max(joined) - since_s
