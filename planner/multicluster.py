"""A threshold per decode cluster: ``t_d`` and the offload routing chosen together.

With one decode cluster this is the PrfaaS model of ``throughput`` (one ``t``). With several,
each decode cluster ``d`` has its own PD-P/PD-D pool and router, while the PrfaaS compute (per
prefill cluster) and the links (``headroom × capacity`` each) are shared. A cluster with a fat
link should offload more (lower ``t_d``) than one behind a thin link, so one global ``t`` leaves
throughput on the table.

Formulation. At thresholds ``t = (t_d)`` cluster ``d`` sustains ``Λ_d ≤ C_d(t_d)`` (its best
integer P/D split, Eqs. 4-6) and offloads ``r_d = p(t_d)·Λ_d`` requests/s, each shipping
``S_kv(l_long(t_d))`` bytes and taking ``T_k(l_long(t_d)) / N_k`` of PrfaaS cluster ``k``. Since
requests of different clusters differ in size, the routing is a multi-commodity flow (one
commodity per offloading decode cluster, transit through datacenters allowed): the linear
program

    max Σ_d Λ_d   s.t.  flow conservation per (commodity, datacenter),
                        Σ_d S_d · f_{d,e} ≤ headroom · B_e         (every link e),
                        Σ_d τ_{k,d} · x_{d,k} ≤ 1                  (every PrfaaS cluster k),
                        0 ≤ Λ_d ≤ C_d(t_d)

is exact for fixed ``t`` (HiGHS, a few ms). Requests of different sizes share one byte flow per
commodity on the links, so a commodity may also mix several thresholds: letting every cluster
time-share all grid thresholds and all-local gives a relaxation whose ``Σ Λ_d`` bounds what any
choice of grid thresholds reaches (``MultiResult.bound``).

The thresholds themselves (a discrete choice per cluster) are searched, each candidate scored
by the exact LP, keeping a change only when ``Σ Λ_d`` rises: start at the global-``t`` optimum
(so the result is never below it); round the relaxation (per cluster: the threshold with its
mixture's offload fraction, and its heaviest point); best responses at the LP's dual prices of
link bytes and PrfaaS compute (``argmax_t C_d(t)·(1 − p(t)·π_d(t))``, ``π_d`` the cheapest
priced path for one request); a pattern search over the optimiser's log grid (one cluster at a
time, or one cluster leaving while the others offload more); finally golden section on each
offloading cluster's ``t`` between its grid neighbours. A cluster whose offload does not beat its
all-local capacity runs all-local (``t_d = ∞``). The search is a heuristic for the discrete part;
on the benchmark's 10 × 20 problem it ends within 0.1% of the relaxation bound.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from prfaas.planner.distributions import Split
from prfaas.planner.throughput import Evaluation, LocalSplit, Solver, best_split
from prfaas.planner.topology import Network
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

__all__ = ["ClusterChoice", "MultiResult", "RemoteLP", "optimise_thresholds"]

_GB = 1e9
"""Byte rates enter the LP in GB/s so its coefficients stay near 1."""


@dataclass(frozen=True, slots=True)
class Point:
    """A decode cluster at one threshold."""

    p: float
    capacity: float
    """``C_d(t)``: the local bound on ``Λ_d`` (``inf``: only the routing bounds it)."""
    kv_bytes: float
    """``S_kv(l_long(t))`` per offloaded request."""
    compute: Mapping[str, float]
    """PrfaaS cluster → fraction of it one offloaded request takes."""


@dataclass(frozen=True, slots=True)
class Commodity:
    """One offloading decode cluster and the threshold(s) it may run at."""

    name: str
    points: tuple[Point, ...]


@dataclass(slots=True)
class Routing:
    """The LP's answer for fixed thresholds."""

    rate: dict[str, float]
    """``Λ_d`` per commodity."""
    link_price: dict[str, float] = field(default_factory=dict)
    """Dual price of one GB/s on each link (Λ gained per GB/s more)."""
    compute_price: dict[str, float] = field(default_factory=dict)
    """Dual price of a whole PrfaaS cluster more."""
    link_bytes: dict[str, float] = field(default_factory=dict)
    """Bytes/s on each link."""
    pair_rps: dict[tuple[str, str], float] = field(default_factory=dict)
    """Offloaded req/s per (decode, prefill) pair."""
    pairs: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """Links of the main path per (decode, prefill) pair (empty: same datacenter)."""
    mix: dict[str, list[float]] = field(default_factory=dict)
    """``Λ_d`` per point of each commodity (one point: ``[Λ_d]``)."""


class RemoteLP:
    """The multi-commodity routing LP over a ``Network``'s datacenters, links and clusters."""

    def __init__(self, network: Network) -> None:
        g = network.graph
        self.network = network
        self.prefill_dc = {
            k: next(v[1] for v in g.successors(("p", k)) if v[0] == "dc") for k in network.prefill
        }
        self.decode_dc = {
            d: next(u[1] for u in g.predecessors(("d", d)) if u[0] == "dc") for d in network.decode
        }
        self.capacity = {
            name: network.headroom * lk.bandwidth_gbps * 1e9 / 8.0
            for name, lk in network.links.items()
            if lk.bandwidth_gbps > 0
        }
        self.links = {name: network.links[name] for name in self.capacity}
        sources = set(self.prefill_dc.values())
        fwd = _reach(sources, [(lk.from_, lk.to) for lk in self.links.values()])
        self.reach_links: dict[str, list[str]] = {}
        self.reach_prefill: dict[str, list[str]] = {}
        for d, dc in self.decode_dc.items():
            back = _reach({dc}, [(lk.to, lk.from_) for lk in self.links.values()])
            self.reach_links[d] = [
                n for n, lk in self.links.items() if lk.from_ in fwd and lk.to in back
            ]
            self.reach_prefill[d] = [k for k, kdc in self.prefill_dc.items() if kdc in back]

    def distances(self, price: Mapping[str, float], target: str) -> dict[str, float]:
        """Cheapest priced path (Σ link price) from every datacenter to ``target``'s."""
        into: dict[str, list[tuple[str, float]]] = {}
        for name, lk in self.links.items():
            into.setdefault(lk.to, []).append((lk.from_, max(price.get(name, 0.0), 0.0)))
        start = self.decode_dc[target]
        dist = {start: 0.0}
        heap = [(0.0, start)]
        while heap:
            du, u = heapq.heappop(heap)
            if du > dist.get(u, math.inf):
                continue
            for v, w in into.get(u, []):
                if du + w < dist.get(v, math.inf):
                    dist[v] = du + w
                    heapq.heappush(heap, (du + w, v))
        return dist

    def solve(
        self,
        commodities: Sequence[Commodity],
        *,
        links: bool = True,
        compute: bool = True,
        offload: bool = False,
        route: bool = False,
    ) -> Routing:
        """Max ``Σ Λ_d`` (``offload``: max ``Σ r_d``); ``route``: then the least-RTT flow.

        A commodity with several points may mix them (time-sharing its pool): the relaxation
        the search rounds from. Flows on links are in GB/s, so requests of different sizes
        share one byte flow per commodity.
        """
        if not commodities:
            return Routing({})
        cols: list[tuple[str, str, str, int]] = []  # (commodity, kind, name, point)
        for c in commodities:
            for i in range(len(c.points)):
                cols.append((c.name, "y", "", i))
                cols += [(c.name, "x", k, i) for k in self.reach_prefill[c.name]]
            cols += [(c.name, "f", e, 0) for e in self.reach_links[c.name]]
            cols.append((c.name, "z", "", 0))
        index = {col: i for i, col in enumerate(cols)}
        eq: tuple[list[int], list[int], list[float]] = ([], [], [])
        eq_rows: dict[tuple[str, str, int], int] = {}
        ub: tuple[list[int], list[int], list[float]] = ([], [], [])
        ub_keys: list[tuple[str, str]] = []
        ub_b: list[float] = []

        def put(key: tuple[str, str, int], col: tuple[str, str, str, int], v: float) -> None:
            eq[0].append(eq_rows.setdefault(key, len(eq_rows)))
            eq[1].append(index[col])
            eq[2].append(v)

        ub_index: dict[tuple[str, str], int] = {}

        def cap(key: tuple[str, str], col: tuple[str, str, str, int], v: float, b: float) -> None:
            if key not in ub_index:
                ub_index[key] = len(ub_keys)
                ub_keys.append(key)
                ub_b.append(b)
            ub[0].append(ub_index[key])
            ub[1].append(index[col])
            ub[2].append(v)

        cost = np.zeros(len(cols))
        for c in commodities:
            for i, pt in enumerate(c.points):
                y = (c.name, "y", "", i)
                cost[index[y]] = -(pt.p if offload else 1.0)
                if math.isfinite(pt.capacity):
                    cap(("c", c.name), y, 1.0 / pt.capacity if pt.capacity > 0 else 1e12, 1.0)
                put((c.name, "p", i), y, -pt.p)
                for k in self.reach_prefill[c.name]:
                    x = (c.name, "x", k, i)
                    put((c.name, "p", i), x, 1.0)
                    put((c.name, self.prefill_dc[k], 0), x, pt.kv_bytes / _GB)
                    if compute:
                        cap(("k", k), x, pt.compute[k], 1.0)
            for e in self.reach_links[c.name]:
                lk, f = self.links[e], (c.name, "f", e, 0)
                put((c.name, lk.to, 0), f, 1.0)
                put((c.name, lk.from_, 0), f, -1.0)
                if links:
                    cap(("l", e), f, 1.0, self.capacity[e] / _GB)
            put((c.name, self.decode_dc[c.name], 0), (c.name, "z", "", 0), -1.0)
        a_eq = coo_matrix((eq[2], (eq[0], eq[1])), shape=(len(eq_rows), len(cols))).tocsr()
        b_eq = np.zeros(len(eq_rows))
        a_ub = coo_matrix((ub[2], (ub[0], ub[1])), shape=(len(ub_keys), len(cols))).tocsr()
        b_ub = np.array(ub_b)
        bounds = [(0.0, None)] * len(cols)
        res = linprog(cost, a_ub, b_ub, a_eq, b_eq, bounds, method="highs")
        if res.status == 3:  # unbounded: a same-datacenter path and no limit on it
            return Routing({c.name: math.inf for c in commodities})
        if res.status != 0:
            return Routing(dict.fromkeys((c.name for c in commodities), 0.0))
        x = res.x
        out = Routing(dict.fromkeys((c.name for c in commodities), 0.0))
        out.mix = {c.name: [0.0] * len(c.points) for c in commodities}
        for (name, kind, _, i), v in zip(cols, x, strict=True):
            if kind == "y":
                out.rate[name] += float(v)
                out.mix[name][i] = float(v)
        for key, m in zip(ub_keys, res.ineqlin.marginals, strict=True):
            if key[0] == "l":
                out.link_price[key[1]] = -float(m)
            elif key[0] == "k":
                out.compute_price[key[1]] = -float(m)
        if route:
            # Second stage: the same Λ_d, least total RTT (the planner's routing preference).
            fixed = [
                (v * (1 - 1e-9), v) if col[1] == "y" else (0.0, None)
                for col, v in zip(cols, x, strict=True)
            ]
            rtt = np.array([1.0 + self.links[n].rtt_ms if k == "f" else 0.0 for _, k, n, _ in cols])
            second = linprog(rtt, a_ub, b_ub, a_eq, b_eq, fixed, method="highs")
            if second.status == 0:
                x = second.x
            self._routes(commodities, cols, x, out)
        return out

    def _routes(
        self,
        commodities: Sequence[Commodity],
        cols: list[tuple[str, str, str, int]],
        x: np.ndarray,
        out: Routing,
    ) -> None:
        """Link bytes/s and a path decomposition per (decode, prefill) pair."""
        flows: dict[str, dict[tuple[str, str], float]] = {c.name: {} for c in commodities}
        sizes = {c.name: c.points for c in commodities}
        for (name, kind, n, i), v in zip(cols, x, strict=True):
            if v <= 1e-12 or kind not in ("x", "f"):
                continue
            if kind == "f":
                out.link_bytes[n] = out.link_bytes.get(n, 0.0) + float(v) * _GB
                flows[name][("f", n)] = float(v)
            else:
                size = sizes[name][i].kv_bytes / _GB
                flows[name][("x", n)] = flows[name].get(("x", n), 0.0) + float(v) * size
                out.pair_rps[(name, n)] = out.pair_rps.get((name, n), 0.0) + float(v)
        for name, fl in flows.items():
            self._decompose(name, fl, out)

    def _decompose(self, d: str, fl: dict[tuple[str, str], float], out: Routing) -> None:
        """The link path of each prefill cluster's bytes to ``d`` (the widest first hop)."""
        sink = self.decode_dc[d]
        for (kind, k), amount in sorted(fl.items()):
            if kind != "x":
                continue
            left = amount
            while left > 1e-12:
                dc, path, seen, width = self.prefill_dc[k], [], {self.prefill_dc[k]}, left
                while dc != sink:
                    nxt = max(
                        (
                            e
                            for e in self.reach_links[d]
                            if self.links[e].from_ == dc
                            and fl.get(("f", e), 0.0) > 1e-12
                            and self.links[e].to not in seen
                        ),
                        key=lambda e: fl[("f", e)],
                        default=None,
                    )
                    if nxt is None:
                        break
                    path.append(nxt)
                    width = min(width, fl[("f", nxt)])
                    dc = self.links[nxt].to
                    seen.add(dc)
                if dc != sink:
                    break
                for e in path:
                    fl[("f", e)] -= width
                left -= width
                out.pairs.setdefault((d, k), path)


def _reach(start: set[str], edges: list[tuple[str, str]]) -> set[str]:
    seen, frontier = set(start), list(start)
    while frontier:
        u = frontier.pop()
        for a, b in edges:
            if a == u and b not in seen:
                seen.add(b)
                frontier.append(b)
    return seen


@dataclass(frozen=True, slots=True)
class ClusterChoice:
    """One decode cluster's threshold, split and rate."""

    split: Split
    local: LocalSplit
    rate: float
    """``Λ_d`` (req/s)."""
    offload_rps: float
    """``r_d = p(t_d) · Λ_d``."""
    kv_bytes: float
    """``S_kv(l_long(t_d))`` per offloaded request (0 when all local)."""

    @property
    def offloading(self) -> bool:
        return self.split.p > 0 and math.isfinite(self.split.threshold)


@dataclass(slots=True)
class MultiResult:
    rate: float
    clusters: dict[str, ClusterChoice]
    routing: Routing
    prefill_rps: dict[str, float]
    """Per PrfaaS cluster: offloaded req/s it serves."""
    bound: float = math.inf
    """``Σ Λ_d`` of the relaxation (clusters time-sharing grid thresholds): an upper bound on
    what any choice of grid thresholds reaches, so ``bound − rate`` measures the rounding."""


class _Search:
    """Per-cluster thresholds on a common grid (the optimiser's grid plus the global ``t``)."""

    def __init__(self, solver: Solver, start: Evaluation) -> None:
        self.solver = solver
        self.lp = RemoteLP(solver.network)
        lo, hi = solver._bounds()
        n = max(solver.grid_points, 3)
        ts = {
            math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1)) for i in range(n)
        }
        if math.isfinite(start.split.threshold):
            ts.add(start.split.threshold)
        self.grid = sorted(ts)
        self.splits = [solver.dist.split(t) for t in self.grid]
        self.local = {
            pool.name: [best_split(pool, s.p, s.l_short) for s in self.splits]
            for pool in solver.local
        }
        self.all_local = solver._all_local
        self.size = [solver.kv_bytes(s.l_long) if s.p > 0 else 0.0 for s in self.splits]
        self.tau = [
            {
                p.name: p.stage(s.l_long) / p.instances if p.instances else 1e9
                for p in solver.prefill
            }
            for s in self.splits
        ]
        self._cache: dict[
            tuple[int | None, ...], tuple[float, Routing, tuple[int | None, ...]]
        ] = {}

    def add(self, t: float) -> int:
        """Index of threshold ``t``, appended off the grid (for the final refinement)."""
        s = self.solver.dist.split(t)
        self.grid.append(t)
        self.splits.append(s)
        for pool in self.solver.local:
            self.local[pool.name].append(best_split(pool, s.p, s.l_short))
        self.size.append(self.solver.kv_bytes(s.l_long) if s.p > 0 else 0.0)
        self.tau.append(
            {
                q.name: q.stage(s.l_long) / q.instances if q.instances else 1e9
                for q in self.solver.prefill
            }
        )
        return len(self.grid) - 1

    def commodity(self, name: str, i: int) -> Commodity:
        return Commodity(name, (self.point(name, i),))

    def point(self, name: str, i: int) -> Point:
        s = self.splits[i]
        return Point(s.p, self.local[name][i].capacity, self.size[i], self.tau[i])

    def evaluate(
        self, choice: tuple[int | None, ...]
    ) -> tuple[float, Routing, tuple[int | None, ...]]:
        """``Σ Λ_d`` at these grid indices (``None``: all local); a cluster whose offload
        does not beat its all-local capacity switches to all-local (no egress for nothing)."""
        if choice in self._cache:
            return self._cache[choice]
        names = [pool.name for pool in self.solver.local]
        cur = list(choice)
        for _ in range(len(names) + 1):
            coms = [self.commodity(n, i) for n, i in zip(names, cur, strict=True) if i is not None]
            routing = self.lp.solve(coms)
            worse = [
                j
                for j, (n, i) in enumerate(zip(names, cur, strict=True))
                if i is not None and routing.rate[n] <= self.all_local[n].capacity * (1 + 1e-9)
            ]
            if not worse:
                break
            for j in worse:
                cur[j] = None
        total = sum(
            routing.rate[n] if i is not None else self.all_local[n].capacity
            for n, i in zip(names, cur, strict=True)
        )
        out = (total, routing, tuple(cur))
        self._cache[choice] = out
        self._cache[tuple(cur)] = out
        return out

    def relaxed(self) -> Routing:
        """Every cluster may time-share all grid thresholds and all-local: an upper bound."""
        none = dict.fromkeys(self.tau[0], 0.0) if self.tau else {}
        coms = [
            Commodity(
                pool.name,
                (
                    *(self.point(pool.name, i) for i in range(len(self.grid))),
                    Point(0.0, self.all_local[pool.name].capacity, 0.0, none),
                ),
            )
            for pool in self.solver.local
        ]
        return self.lp.solve(coms)

    def roundings(self, relaxed: Routing) -> list[tuple[int | None, ...]]:
        """Pure thresholds near the relaxation: its offload fraction, and its heaviest point."""
        by_p: list[int | None] = []
        by_mode: list[int | None] = []
        for pool in self.solver.local:
            mix = relaxed.mix.get(pool.name, [])
            total = sum(mix)
            off = sum(y * s.p for y, s in zip(mix, self.splits, strict=False))
            if total <= 0 or off <= 1e-9 * total:
                by_p.append(None)
                by_mode.append(None)
                continue
            target = off / total
            by_p.append(min(range(len(self.grid)), key=lambda i: abs(self.splits[i].p - target)))
            heaviest = max(range(len(mix)), key=lambda i: mix[i])
            by_mode.append(heaviest if heaviest < len(self.grid) else None)
        return [tuple(by_p), tuple(by_mode)]

    def best_response(self, name: str, routing: Routing) -> int | None:
        """``argmax_t C_d(t)·(1 − p·π_d(t))`` at the LP's prices (ties: the larger ``t``)."""
        dist = self.lp.distances(routing.link_price, name)
        best: tuple[float, int | None] = (self.all_local[name].capacity, None)
        for i in range(len(self.grid) - 1, -1, -1):
            s = self.splits[i]
            if s.p <= 0:
                continue
            price = min(
                (
                    routing.compute_price.get(k, 0.0) * self.tau[i][k]
                    + self.size[i] / _GB * dist.get(self.lp.prefill_dc[k], math.inf)
                    for k in self.lp.reach_prefill[name]
                ),
                default=math.inf,
            )
            profit = self.local[name][i].capacity * (1 - s.p * price)
            if profit > best[0] * (1 + 1e-9):
                best = (profit, i)
        return best[1]


def optimise_thresholds(solver: Solver, start: Evaluation, rounds: int = 3) -> MultiResult:
    """Per-decode-cluster thresholds maximising ``Σ Λ_d``, starting from the global ``start``."""
    search = _Search(solver, start)
    names = [pool.name for pool in solver.local]
    gi = search.grid.index(start.split.threshold) if start.split.threshold in search.grid else None
    init = tuple(gi if start.offloading.get(n) and gi is not None else None for n in names)
    rate, routing, cur = search.evaluate(init)
    relaxed = search.relaxed()
    for trial in search.roundings(relaxed):
        r, rt, c = search.evaluate(trial)
        if r > rate * (1 + 1e-9):
            rate, routing, cur = r, rt, c
    for _ in range(rounds):
        improved = False
        proposal = [search.best_response(n, routing) for n in names]
        trials = [tuple(proposal)]
        trials += [
            tuple(proposal[j] if j == k else cur[j] for j in range(len(names)))
            for k in range(len(names))
            if proposal[k] != cur[k]
        ]
        for trial in trials:
            r, rt, c = search.evaluate(trial)
            if r > rate * (1 + 1e-9):
                rate, routing, cur, improved = r, rt, c, True
        if not improved:
            break
    rate, cur = _pattern(search, rate, cur)
    rate, cur = _refine(search, rate, cur)
    out = _result(search, names, cur)
    out.bound = max(sum(relaxed.rate.values()), out.rate)
    return out


def _pattern(
    search: _Search,
    rate: float,
    cur: tuple[int | None, ...],
    sweeps: int = 4,
    reach: int = 3,
) -> tuple[float, tuple[int | None, ...]]:
    """Pattern search: move each cluster's threshold down or up the grid (all-local enters at
    the top) to the nearest of the next ``reach`` points that raises ``Σ Λ_d``, and keep going
    that way; also try it all-local. Looking past the next point crosses plateaus where an
    integer P/D split has not flipped yet. Then try one cluster leaving while the others
    offload more."""
    top = len(search.grid) - 1
    for _ in range(sweeps):
        improved = False
        for j in range(len(cur)):
            if cur[j] is not None:
                r, _, c = search.evaluate((*cur[:j], None, *cur[j + 1 :]))
                if r > rate * (1 + 1e-9):
                    rate, cur, improved = r, c, True
            for step in (-1, 1):
                moved = True
                while moved:
                    moved = False
                    i = cur[j]
                    if i is None and step > 0:
                        break
                    first = top if i is None else i + step
                    for nxt in range(first, first + step * reach, step):
                        if not 0 <= nxt <= top:
                            break
                        r, _, c = search.evaluate((*cur[:j], nxt, *cur[j + 1 :]))
                        if r > rate * (1 + 1e-9):
                            rate, cur, improved, moved = r, c, True, True
                            break
        # Compound move: one cluster leaves (all-local) and the others take its share of the
        # PrfaaS compute by offloading more (every other offloading t a few points lower).
        for j in range(len(cur)):
            if cur[j] is None:
                continue
            for shift in range(1, reach + 2):
                trial = tuple(
                    None if k == j or i is None else max(i - shift, 0) for k, i in enumerate(cur)
                )
                r, _, c = search.evaluate(trial)
                if r > rate * (1 + 1e-9):
                    rate, cur, improved = r, c, True
                    break
        if not improved:
            break
    return rate, cur


def _refine(
    search: _Search, rate: float, cur: tuple[int | None, ...], tolerance: float = 0.01
) -> tuple[float, tuple[int | None, ...]]:
    """Golden section on each offloading cluster's ``log t`` between its grid neighbours, so
    thresholds are not limited to the grid's resolution (a change is kept only if it helps)."""
    top = len(search.grid) - 1
    inv = (math.sqrt(5.0) - 1.0) / 2.0
    for j in range(len(cur)):
        i = cur[j]
        if i is None or i > top:
            continue
        base = cur
        best = (rate, cur)

        def at(x: float, j: int = j, base: tuple[int | None, ...] = base) -> float:
            nonlocal best
            trial = (*base[:j], search.add(math.exp(x)), *base[j + 1 :])
            r, _, c = search.evaluate(trial)
            if r > best[0]:
                best = (r, c)
            return r

        a = math.log(search.grid[max(i - 1, 0)])
        b = math.log(search.grid[min(i + 1, top)])
        c_, d_ = b - inv * (b - a), a + inv * (b - a)
        fc, fd = at(c_), at(d_)
        while b - a > tolerance:
            if fc >= fd:
                b, d_, fd = d_, c_, fc
                c_ = b - inv * (b - a)
                fc = at(c_)
            else:
                a, c_, fc = c_, d_, fd
                d_ = a + inv * (b - a)
                fd = at(d_)
        if best[0] > rate * (1 + 1e-9):
            rate, cur = best
    return rate, cur


def _result(search: _Search, names: list[str], cur: tuple[int | None, ...]) -> MultiResult:
    coms = [search.commodity(n, i) for n, i in zip(names, cur, strict=True) if i is not None]
    routing = search.lp.solve(coms, route=True)
    clusters: dict[str, ClusterChoice] = {}
    for n, i in zip(names, cur, strict=True):
        if i is None:
            cap = search.all_local[n].capacity
            clusters[n] = ClusterChoice(
                search.solver.dist.split(math.inf), search.all_local[n], cap, 0.0, 0.0
            )
        else:
            s = search.splits[i]
            lam = routing.rate[n]
            clusters[n] = ClusterChoice(s, search.local[n][i], lam, s.p * lam, search.size[i])
    served: dict[str, float] = {}
    for (_, k), v in routing.pair_rps.items():
        served[k] = served.get(k, 0.0) + v
    return MultiResult(sum(c.rate for c in clusters.values()), clusters, routing, served)
