"""The PrfaaS throughput model (papers.md §1.5, Eqs. 1-8) and its optimiser.

Per threshold ``t`` (``p``, ``l_short``, ``l_long`` from the uncached length distribution):

* Eq. 3  ``Θ_prfaas = min(N_prfaas / T_prefill(l_long), B_out / S_kv(l_long))`` — generalised to
  many prefill clusters and links as a maximum flow (``topology``);
* Eq. 4  ``Θ_pd-p = N_p / T_prefill(l_short)``;  Eq. 5  ``Θ_pd-d = N_d · BS_max / (T_dec · L_out)``;
* Eq. 6  ``Λ_max = min(Θ_prfaas / p, Θ_pd-p / (1 − p), Θ_pd-d)``.

For a given ``t`` the best P/D split of each decode cluster is exact: the PD-P term grows and the
PD-D term falls with ``N_p``, so the integer optimum sits at their crossing (bisection). Over
``t`` the optimiser scans a log-spaced grid and refines the best bracket by golden section
(Eq. 7's balance point), then takes the largest ``t`` that keeps the optimum (least egress). A
decode cluster that gains nothing from offload runs all-local (its router gets ``t = ∞``).
``multicluster`` starts from this one-``t`` optimum to give each decode cluster its own ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prfaas.planner.distributions import LengthDistribution, Split
from prfaas.planner.topology import Network

__all__ = [
    "Evaluation",
    "LocalPool",
    "LocalSplit",
    "PrfaasPool",
    "Solver",
    "best_split",
    "kv_throughput",
    "lambda_max",
    "theta_pd_decode",
    "theta_pd_prefill",
    "theta_prfaas",
]


def kv_throughput(s_kv_bytes: float, t_prefill_s: float) -> float:
    """Eq. 1: ``Φ_kv(l) = S_kv(l) / T_prefill(l)`` in bytes per second."""
    return s_kv_bytes / t_prefill_s


def theta_prfaas(n: float, t_prefill_s: float, b_out_bytes_s: float, s_kv_bytes: float) -> float:
    """Eq. 3: the PrfaaS cluster's rate, compute-bound or egress-bound."""
    compute = n / t_prefill_s if t_prefill_s > 0 else math.inf
    bandwidth = b_out_bytes_s / s_kv_bytes if s_kv_bytes > 0 else math.inf
    return min(compute, bandwidth)


def theta_pd_prefill(n_p: float, t_prefill_s: float) -> float:
    """Eq. 4."""
    return n_p / t_prefill_s


def theta_pd_decode(n_d: float, batch: float, t_decode_s: float, l_out: float) -> float:
    """Eq. 5."""
    return n_d * batch / (t_decode_s * l_out)


def lambda_max(theta_prfaas_: float, theta_pdp: float, theta_pdd: float, p: float) -> float:
    """Eq. 6 (a path that carries no traffic does not bound the rate)."""
    bounds = [theta_pdd]
    if p > 0:
        bounds.append(theta_prfaas_ / p)
    if p < 1:
        bounds.append(theta_pdp / (1.0 - p))
    return min(bounds)


@dataclass(frozen=True, slots=True)
class PrfaasPool:
    """A PrfaaS cluster: ``instances`` prefill-only instances; ``stage(l)`` seconds per request."""

    name: str
    instances: int
    stage: Callable[[float], float]


@dataclass(frozen=True, slots=True)
class LocalPool:
    """A local PD cluster of ``gpus`` GPUs split into PD-P and PD-D instances."""

    name: str
    gpus: int
    prefill_gpus: int
    """GPUs per PD-P instance (0: this cluster cannot prefill)."""
    decode_gpus: int
    prefill_stage: Callable[[float], float]
    decode_rate: float
    """Requests/s one PD-D instance completes (Eq. 5 per instance)."""
    colocated_prefill_stage: Callable[[float], float] | None = None
    """Prefill time on a *decode* instance. Used only when the pool is too small to hold one
    PD-P and one PD-D instance: its decode instances then also prefill short prompts, time-shared
    (``1/Λ = (1 − p)·T_prefill(l_short) + 1/Θ_decode`` per instance)."""
    pin_prefill: int | None = None
    """PD-P instances fixed by the user (``None``: chosen)."""
    pin_decode: int | None = None
    """PD-D instances fixed by the user (``None``: chosen)."""

    @property
    def colocated(self) -> bool:
        return self.gpus < self.prefill_gpus + self.decode_gpus or not self.prefill_gpus


@dataclass(frozen=True, slots=True)
class LocalSplit:
    n_p: int
    n_d: int
    theta_p: float
    theta_d: float
    capacity: float
    """``min(Θ_pd-p / (1 − p), Θ_pd-d)``: the rate this cluster sustains given enough offload."""


def best_split(pool: LocalPool, p: float, l_short: float, all_decode: bool = False) -> LocalSplit:
    """The integer PD-P/PD-D split maximising ``min(Θ_pd-p/(1−p), Θ_pd-d)`` at this ``p``."""
    t_short = pool.prefill_stage(l_short) if p < 1 and pool.prefill_gpus else math.inf

    def make(n_p: int) -> LocalSplit:
        n_d = (pool.gpus - n_p * pool.prefill_gpus) // pool.decode_gpus if pool.decode_gpus else 0
        if pool.pin_decode is not None:
            n_d = pool.pin_decode
        th_p = n_p / t_short if math.isfinite(t_short) else 0.0
        th_d = n_d * pool.decode_rate
        pre = th_p / (1.0 - p) if p < 1 else math.inf
        return LocalSplit(n_p, n_d, th_p, th_d, min(pre, th_d))

    if pool.pin_prefill is not None and not all_decode:
        return make(pool.pin_prefill)
    if all_decode or p >= 1:
        return make(0)
    if pool.colocated:
        n_d = pool.gpus // pool.decode_gpus if pool.decode_gpus else 0
        if pool.pin_decode is not None:
            n_d = pool.pin_decode
        stage = pool.colocated_prefill_stage
        if stage is None or n_d == 0 or pool.decode_rate <= 0:
            return make(0)
        per = 1.0 / ((1.0 - p) * stage(l_short) + 1.0 / pool.decode_rate)
        cap = n_d * per
        return LocalSplit(0, n_d, cap * (1.0 - p), cap, cap)
    free = pool.gpus - (pool.pin_decode or 0) * pool.decode_gpus
    top = (free if pool.pin_decode is not None else pool.gpus) // pool.prefill_gpus
    lo, hi = 0, top  # smallest n_p whose prefill bound reaches the decode bound
    while lo < hi:
        mid = (lo + hi) // 2
        s = make(mid)
        if s.theta_p / (1.0 - p) >= s.theta_d:
            hi = mid
        else:
            lo = mid + 1
    options = [make(n) for n in {max(lo - 1, 0), lo, min(lo + 1, top)}]
    return max(options, key=lambda s: (s.capacity, -s.n_p))


@dataclass(slots=True)
class Evaluation:
    """The model at one threshold."""

    split: Split
    rate: float
    """``Λ``: total sustainable requests/s."""
    local: dict[str, LocalSplit]
    offloading: dict[str, bool]
    """Per decode cluster: does it offload (``False``: all local, ``t = ∞`` for its router)."""
    served: dict[str, float] = field(default_factory=dict)
    """Offloaded req/s each decode cluster gets from PrfaaS clusters."""
    prefill_rps: dict[str, float] = field(default_factory=dict)
    """Eq. 3 compute bound of each PrfaaS cluster at ``l_long``."""


class Solver:
    """Evaluate and optimise ``Λ(t)`` for fixed instance shapes."""

    def __init__(
        self,
        dist: LengthDistribution,
        prefill: Sequence[PrfaasPool],
        local: Sequence[LocalPool],
        network: Network,
        kv_bytes: Callable[[float], float],
        grid_points: int = 48,
        tolerance: float = 1e-6,
    ) -> None:
        self.dist = dist
        self.prefill = list(prefill)
        self.local = list(local)
        self.network = network
        self.kv_bytes = kv_bytes
        self.grid_points = grid_points
        self.tolerance = tolerance
        base = dist.split(math.inf)
        self._all_local = {pool.name: best_split(pool, 0.0, base.l_short) for pool in self.local}

    def evaluate(self, t: float, all_decode: bool = False) -> Evaluation:
        """``Λ`` at threshold ``t`` (``all_decode``: the naive layout, no local prefill)."""
        sp = self.dist.split(t)
        if sp.p <= 0.0 or not self.prefill:
            local = (
                {name: s for name, s in self._all_local.items()}
                if sp.p <= 0
                else {
                    pool.name: best_split(pool, sp.p, sp.l_short, all_decode) for pool in self.local
                }
            )
            rate = sum(s.capacity for s in local.values()) if sp.p <= 0 else 0.0
            return Evaluation(sp, rate, local, dict.fromkeys(local, False))
        local = {pool.name: best_split(pool, sp.p, sp.l_short, all_decode) for pool in self.local}
        caps = {p.name: p.instances / p.stage(sp.l_long) for p in self.prefill}
        size = self.kv_bytes(sp.l_long)
        # Offload only where it can pay: a cluster whose capacity with full offload does not
        # beat its all-local capacity keeps t = ∞.
        offloading = {
            name: all_decode or s.capacity > self._all_local[name].capacity * (1 + 1e-12)
            for name, s in local.items()
        }
        served: dict[str, float] = {}
        for _ in range(2):  # second pass: clusters better off all-local stop asking for offload
            demand = {n: sp.p * s.capacity if offloading[n] else 0.0 for n, s in local.items()}
            served = self.network.max_offload(caps, demand, size)
            changed = False
            for name, _s in local.items():
                fallback = 0.0 if all_decode else self._all_local[name].capacity
                if offloading[name] and served[name] / sp.p < fallback * (1 - 1e-12):
                    offloading[name] = False
                    changed = True
            if not changed:
                break
        rate = 0.0
        for name in local:
            if offloading[name]:
                rate += min(local[name].capacity, served[name] / sp.p)
            else:
                local[name] = self._all_local[name]
                rate += 0.0 if all_decode else local[name].capacity
        return Evaluation(sp, rate, local, offloading, served, caps)

    # -- optimisation over t ------------------------------------------------------------------

    def _bounds(self) -> tuple[float, float]:
        lo = max(self.dist.quantile(1e-4), 1.0)
        hi = max(self.dist.quantile(1.0 - 1e-4), lo * (1 + 1e-9))
        return lo, hi

    def _golden(self, a: float, b: float) -> float:
        """Maximise ``Λ(exp(x))`` on ``[a, b]`` (log-thresholds) by golden-section search."""
        inv = (math.sqrt(5.0) - 1.0) / 2.0
        c, d = b - inv * (b - a), a + inv * (b - a)
        fc, fd = self.evaluate(math.exp(c)).rate, self.evaluate(math.exp(d)).rate
        while b - a > self.tolerance:
            if fc >= fd:
                b, d, fd = d, c, fc
                c = b - inv * (b - a)
                fc = self.evaluate(math.exp(c)).rate
            else:
                a, c, fc = c, d, fd
                d = a + inv * (b - a)
                fd = self.evaluate(math.exp(d)).rate
        return math.exp((a + b) / 2.0)

    def optimise(self) -> Evaluation:
        """The threshold with the highest ``Λ`` (ties: the largest such ``t``, ``∞`` included)."""
        best = self.evaluate(math.inf)
        if not self.prefill:
            return best
        lo, hi = self._bounds()
        n = max(self.grid_points, 3)
        xs = [math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1) for i in range(n)]
        evals = [self.evaluate(math.exp(x)) for x in xs]
        i = max(range(n), key=lambda k: (evals[k].rate, k))
        x_star = math.log(self._golden(xs[max(i - 1, 0)], xs[min(i + 1, n - 1)]))
        cand = self.evaluate(math.exp(x_star))
        if evals[i].rate > cand.rate:
            cand, x_star = evals[i], xs[i]
        # Largest t keeping the optimum: bisect towards the next grid point on the right.
        right = xs[min(i + 1, n - 1)]
        if right > x_star:
            target = cand.rate * (1.0 - self.tolerance)
            a, b = x_star, right
            if self.evaluate(math.exp(b)).rate >= target:
                a = b
            while b - a > self.tolerance:
                mid = (a + b) / 2.0
                if self.evaluate(math.exp(mid)).rate >= target:
                    a = mid
                else:
                    b = mid
            cand = self.evaluate(math.exp(a))
        pool = [*evals, cand, best, self.evaluate(0.0)]  # t = 0: offload everything
        top = max(e.rate for e in pool)
        near = [e for e in pool if e.rate >= top * (1.0 - self.tolerance)]
        return max(near, key=lambda e: e.split.threshold)
