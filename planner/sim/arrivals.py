"""Requests for the simulator: arrival times and lengths, synthetic or from a trace file.

A ``RequestStream`` is columns (numpy arrays), one row per request, sorted by arrival:

* ``arrival_s``: arrival time, seconds from the start;
* ``input_tokens`` / ``output_tokens``: prompt and generated lengths (output >= 1);
* ``prefix_id``: requests that share an id share their leading tokens up to the shorter
  prompt (a conversation whose turns extend each other, or one document asked about many
  times); ``-1`` means no shared prefix, so the prefix cache is never consulted.

Arrivals are Poisson, or Gamma inter-arrivals with a coefficient of variation ``cv`` (bursty
when ``cv > 1``; ``cv = 1`` is Poisson). Length samplers are any object with
``sample(rng, n) -> array`` (the planner's distributions satisfy it).

``chains`` holds each request's block chain (``prfaas.planner.routing.Chains``), the prefix
model the router and the simulator share; a stream built from ``prefix_id`` alone gets chains
made from the ids at ``DEFAULTS.block_size`` tokens per block. Trace files are read by
``prfaas.planner.sim.traces``; ``synthetic_stream(sharing=...)`` generates chains from a
described sharing pattern (``prfaas.planner.sharing``: conversations, documents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from prfaas.planner.routing.prefix import Chains
from prfaas.planner.routing.threshold import DEFAULTS
from prfaas.planner.sharing import LengthSampler, Sharing
from prfaas.planner.sim.errors import SimulatorError

__all__ = [
    "ArrivalKind",
    "FixedLengths",
    "LengthSampler",
    "RequestStream",
    "arrival_times",
    "synthetic_stream",
]

ArrivalKind = Literal["poisson", "gamma"]


@dataclass(frozen=True, slots=True)
class FixedLengths:
    """Every request has ``value`` tokens."""

    value: int

    def sample(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class RequestStream:
    """The requests of one run, as columns sorted by ``arrival_s``."""

    arrival_s: npt.NDArray[np.float64]
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    prefix_id: npt.NDArray[np.int64]
    chains: Chains | None = None
    """Block chains; ``None``: made from ``prefix_id`` (see the module docstring)."""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if not (len(self.input_tokens) == len(self.output_tokens) == len(self.prefix_id) == n):
            raise SimulatorError("request columns must all have one entry per request")
        if self.chains is None:
            chains = Chains.from_prefix_ids(self.prefix_id, self.input_tokens, DEFAULTS.block_size)
            object.__setattr__(self, "chains", chains)
        elif len(self.chains) != n:
            raise SimulatorError("chains must have one entry per request")
        if n and (np.any(np.diff(self.arrival_s) < 0) or self.arrival_s[0] < 0):
            raise SimulatorError("arrival times must be >= 0 and sorted; sort the trace by time")
        if n and (self.input_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise SimulatorError("every request needs input_tokens >= 1 and output_tokens >= 1")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def rate(self) -> float:
        """Mean arrival rate (requests per second) over the stream."""
        n = len(self)
        if n < 2 or self.arrival_s[-1] <= 0:
            return 0.0
        return float(n / self.arrival_s[-1])

    def scaled(self, factor: float) -> RequestStream:
        """The same requests arriving ``factor`` times faster (times divided by ``factor``)."""
        if factor <= 0:
            raise SimulatorError(f"rate scale must be > 0, got {factor}")
        return RequestStream(
            self.arrival_s / factor,
            self.input_tokens,
            self.output_tokens,
            self.prefix_id,
            self.chains,
        )

    def head(self, n: int) -> RequestStream:
        assert self.chains is not None
        return RequestStream(
            self.arrival_s[:n],
            self.input_tokens[:n],
            self.output_tokens[:n],
            self.prefix_id[:n],
            self.chains.take(slice(0, n)),
        )

    @property
    def block_chains(self) -> Chains:
        """``chains``, typed as always present (``__post_init__`` fills it)."""
        assert self.chains is not None
        return self.chains


def arrival_times(
    rng: np.random.Generator, n: int, rate: float, *, kind: ArrivalKind = "poisson", cv: float = 1.0
) -> npt.NDArray[np.float64]:
    """``n`` arrival times at mean ``rate`` per second (the first one after one gap)."""
    if rate <= 0:
        raise SimulatorError(f"arrival rate must be > 0 requests/s, got {rate}")
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif kind == "gamma":
        if cv <= 0:
            raise SimulatorError(f"gamma arrivals need cv > 0, got {cv}")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise SimulatorError(f"unknown arrival kind {kind!r}; use 'poisson' or 'gamma'")
    return np.cumsum(gaps)


def synthetic_stream(
    n: int,
    rate: float,
    inputs: LengthSampler,
    outputs: LengthSampler,
    *,
    seed: int = 0,
    kind: ArrivalKind = "poisson",
    cv: float = 1.0,
    sharing: Sharing | None = None,
) -> RequestStream:
    """``n`` requests with sampled lengths; the same ``seed`` gives the same stream.
    ``sharing``: prompts share prefixes as it describes (``prfaas.planner.sharing``; the
    sampled input lengths are then each turn's new message, or each document's question);
    ``None``: no prompt shares anything."""
    if n < 1:
        raise SimulatorError(f"need at least one request, got {n}")
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, n, rate, kind=kind, cv=cv)
    ins = np.maximum(np.rint(np.asarray(inputs.sample(rng, n))).astype(np.int64), 1)
    outs = np.maximum(np.rint(np.asarray(outputs.sample(rng, n))).astype(np.int64), 1)
    none = np.full(n, -1, dtype=np.int64)
    if sharing is None:
        return RequestStream(times, ins, outs, none)
    try:
        prompts, chains = sharing.generate(rng, ins, outs)
    except ValueError as exc:
        raise SimulatorError(f"workload sharing: {exc}") from exc
    return RequestStream(times, prompts, outs, none, chains)
