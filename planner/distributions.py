"""Length distributions: what the throughput model integrates and what the simulator samples.

The PrfaaS model (papers.md §1.5) needs three numbers of the *uncached* input length ``L`` at a
threshold ``t``: ``p = P(L > t)``, ``l_short = E[L | L ≤ t]`` and ``l_long = E[L | L > t]``.
Every distribution here gives them exactly, from its CDF and its partial first moment
``E[L; L ≤ x]`` (closed forms, no sampling), and ``sample(rng, n)`` draws lengths for the
simulator. A prefix-cache hit rate ``h`` scales lengths by ``1 - h`` (``uncached(h)``).

    >>> d = LogNormal(mu=9.90, sigma=1.00, lower=128, upper=131072)
    >>> round(d.split(19400).p, 3)
    0.496
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Empirical",
    "Fixed",
    "LengthDistribution",
    "LogNormal",
    "Scaled",
    "Split",
    "Trace",
]


def _phi(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _generator(rng: np.random.Generator | random.Random | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


@dataclass(frozen=True, slots=True)
class Split:
    """A length distribution cut at threshold ``t``: ``p = P(L > t)`` and both conditional means.

    ``l_short`` is 0 when no mass lies at or below ``t``; ``l_long`` is 0 when ``p == 0``.
    """

    threshold: float
    p: float
    l_short: float
    l_long: float


class LengthDistribution(ABC):
    """Token lengths ``L`` (continuous approximation of integer lengths)."""

    @property
    @abstractmethod
    def low(self) -> float:
        """Smallest possible length."""

    @property
    @abstractmethod
    def high(self) -> float:
        """Largest possible length."""

    @abstractmethod
    def cdf(self, x: float) -> float:
        """``P(L ≤ x)``."""

    @abstractmethod
    def partial_mean(self, x: float) -> float:
        """``E[L; L ≤ x]`` = ``E[L · 1(L ≤ x)]``."""

    @abstractmethod
    def sample(self, rng: np.random.Generator | random.Random | int | None, n: int) -> np.ndarray:
        """``n`` lengths as a float array; ``rng`` is a numpy Generator, a ``random.Random``
        (its state seeds a Generator) or a seed."""

    @property
    def mean(self) -> float:
        return self.partial_mean(self.high)

    def quantile(self, q: float) -> float:
        """Smallest ``x`` with ``P(L ≤ x) ≥ q`` (bisection on the CDF)."""
        lo, hi = self.low, self.high
        if self.cdf(lo) >= q:
            return lo
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if self.cdf(mid) >= q:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-9 * max(1.0, hi):
                break
        return hi

    def split(self, t: float) -> Split:
        """``p``, ``l_short`` and ``l_long`` at threshold ``t`` (``t = inf``: nothing offloaded)."""
        if math.isinf(t):
            return Split(t, 0.0, self.mean, 0.0)
        below = min(1.0, max(0.0, self.cdf(t)))
        m_below = self.partial_mean(t)
        total = self.mean
        p = 1.0 - below
        l_short = m_below / below if below > 1e-15 else 0.0
        l_long = (total - m_below) / p if p > 1e-15 else 0.0
        if p <= 1e-15:
            p = 0.0
        return Split(t, p, l_short, l_long)

    def uncached(self, hit_rate: float) -> LengthDistribution:
        """Lengths left to prefill when a fraction ``hit_rate`` of prompt tokens hit the cache."""
        if not 0.0 <= hit_rate < 1.0:
            raise ValueError(f"prefix-cache hit rate must be in [0, 1), got {hit_rate}")
        return self if hit_rate == 0.0 else Scaled(self, 1.0 - hit_rate)


@dataclass(frozen=True)
class LogNormal(LengthDistribution):
    """``exp(N(mu, sigma²))`` conditioned on ``[lower, upper]`` (truncation renormalises)."""

    mu: float
    sigma: float
    lower: float = 1.0
    upper: float = math.inf

    def __post_init__(self) -> None:
        if self.sigma <= 0 or self.lower <= 0 or self.upper <= self.lower:
            raise ValueError(
                "need sigma > 0 and 0 < lower < upper, got "
                f"sigma={self.sigma}, lower={self.lower}, upper={self.upper}"
            )

    @property
    def low(self) -> float:
        return float(self.lower)

    @property
    def high(self) -> float:
        return float(self.upper)

    def _raw_cdf(self, x: float) -> float:
        if x <= 0:
            return 0.0
        if math.isinf(x):
            return 1.0
        return _phi((math.log(x) - self.mu) / self.sigma)

    def _raw_partial(self, x: float) -> float:
        if x <= 0:
            return 0.0
        scale = math.exp(self.mu + 0.5 * self.sigma**2)
        if math.isinf(x):
            return scale
        return scale * _phi((math.log(x) - self.mu - self.sigma**2) / self.sigma)

    @property
    def _mass(self) -> float:
        return self._raw_cdf(self.high) - self._raw_cdf(self.low)

    def cdf(self, x: float) -> float:
        x = min(max(x, self.low), self.high)
        return (self._raw_cdf(x) - self._raw_cdf(self.low)) / self._mass

    def partial_mean(self, x: float) -> float:
        x = min(max(x, self.low), self.high)
        return (self._raw_partial(x) - self._raw_partial(self.low)) / self._mass

    def sample(self, rng: np.random.Generator | random.Random | int | None, n: int) -> np.ndarray:
        gen = _generator(rng)
        out = np.empty(0)
        lo, hi = math.log(self.low), math.log(self.high) if math.isfinite(self.high) else math.inf
        while out.size < n:
            need = n - out.size
            draw = gen.normal(self.mu, self.sigma, size=int(need / max(self._mass, 1e-3)) + 16)
            draw = draw[(draw >= lo) & (draw <= hi)]
            out = np.concatenate([out, np.exp(draw[:need])])
        return out


@dataclass(frozen=True)
class Empirical(LengthDistribution):
    """A histogram: bucket ``i`` holds lengths uniform on ``(edges[i], edges[i+1]]`` with
    probability ``weights[i] / sum(weights)``. ``edges[0]`` defaults to 0 (the API's buckets give
    only upper bounds)."""

    edges: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.weights) + 1 or not self.weights:
            raise ValueError("need len(edges) == len(weights) + 1 and at least one bucket")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"bucket edges must increase, got {self.edges}")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("bucket weights must be non-negative and not all zero")

    @classmethod
    def from_buckets(cls, upper: Sequence[float], weights: Sequence[float]) -> Empirical:
        return cls((0.0, *map(float, upper)), tuple(map(float, weights)))

    @property
    def low(self) -> float:
        return self.edges[0]

    @property
    def high(self) -> float:
        return self.edges[-1]

    def _probs(self) -> list[float]:
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def cdf(self, x: float) -> float:
        acc = 0.0
        for a, b, w in zip(self.edges, self.edges[1:], self._probs(), strict=False):
            if x >= b:
                acc += w
            elif x > a:
                acc += w * (x - a) / (b - a)
        return acc

    def partial_mean(self, x: float) -> float:
        acc = 0.0
        for a, b, w in zip(self.edges, self.edges[1:], self._probs(), strict=False):
            top = min(x, b)
            if top > a:
                # density w/(b-a) on (a, b]: ∫_a^top l dl = (top² - a²) / 2
                acc += w * (top * top - a * a) / (2.0 * (b - a))
        return acc

    def sample(self, rng: np.random.Generator | random.Random | int | None, n: int) -> np.ndarray:
        gen = _generator(rng)
        idx = gen.choice(len(self.weights), size=n, p=self._probs())
        lo = np.asarray(self.edges[:-1])[idx]
        hi = np.asarray(self.edges[1:])[idx]
        return lo + (hi - lo) * gen.random(n)


@dataclass(frozen=True)
class Fixed(LengthDistribution):
    """Every request has the same length."""

    value: float

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"a fixed length must be positive, got {self.value}")

    @property
    def low(self) -> float:
        return self.value

    @property
    def high(self) -> float:
        return self.value

    def cdf(self, x: float) -> float:
        return 1.0 if x >= self.value else 0.0

    def partial_mean(self, x: float) -> float:
        return self.value if x >= self.value else 0.0

    def sample(self, rng: np.random.Generator | random.Random | int | None, n: int) -> np.ndarray:
        return np.full(n, float(self.value))


@dataclass(frozen=True)
class Trace(LengthDistribution):
    """The empirical distribution of recorded lengths (each value equally likely)."""

    values: tuple[float, ...]
    _sorted: np.ndarray = field(init=False, repr=False, compare=False)
    """``values`` as an array, and below their running sums (``_sums[k]``: the first ``k``),
    so that ``cdf`` and ``partial_mean`` cost a binary search, not a pass over the values (the
    solver asks thousands of times; a trace or a sharing sample holds tens of thousands)."""
    _sums: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.values or min(self.values) <= 0:
            raise ValueError("a trace needs at least one positive length")
        object.__setattr__(self, "values", tuple(sorted(float(v) for v in self.values)))
        arr = np.asarray(self.values, dtype=np.float64)
        object.__setattr__(self, "_sorted", arr)
        object.__setattr__(self, "_sums", np.concatenate(([0.0], np.cumsum(arr))))

    @property
    def low(self) -> float:
        return self.values[0]

    @property
    def high(self) -> float:
        return self.values[-1]

    def cdf(self, x: float) -> float:
        return float(np.searchsorted(self._sorted, x, side="right")) / len(self.values)

    def partial_mean(self, x: float) -> float:
        k = int(np.searchsorted(self._sorted, x, side="right"))
        return float(self._sums[k]) / len(self.values)

    def sample(self, rng: np.random.Generator | random.Random | int | None, n: int) -> np.ndarray:
        return _generator(rng).choice(self._sorted, size=n)


@dataclass(frozen=True)
class Scaled(LengthDistribution):
    """``factor · L`` for a base distribution (prefix-cache hits shorten every prompt)."""

    base: LengthDistribution
    factor: float

    @property
    def low(self) -> float:
        return self.base.low * self.factor

    @property
    def high(self) -> float:
        return self.base.high * self.factor

    def cdf(self, x: float) -> float:
        return self.base.cdf(x / self.factor)

    def partial_mean(self, x: float) -> float:
        return self.factor * self.base.partial_mean(x / self.factor)

    def sample(self, rng: np.random.Generator | random.Random | int | None, n: int) -> np.ndarray:
        return self.factor * self.base.sample(rng, n)
