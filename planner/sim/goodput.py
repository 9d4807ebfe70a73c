"""Goodput: the highest arrival rate whose SLO attainment meets the target (DistServe §2.1).

``goodput`` bisects the rate as DistServe's ``search_binary.py`` does, but counts a request
as good only when TTFT *and* TPOT are both met, and requires the latest arrivals to meet the
target too (``TAIL``), which rejects rates a short run survives only because its backlog has
not built up yet. Each probe replays the same requests (one
stream drawn at rate 1 and compressed in time), so attainment moves smoothly with the rate
instead of jumping with a fresh sample at every probe.

``simulated_prefill_goodput`` and ``simulated_decode_goodput`` are the hooks for the parallelism
search (DistServe
Algorithm 1's ``simu_prefill`` / ``simu_decode``): the goodput of *one* instance of a TP×PP
configuration, found by simulation instead of the M/D/1 closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from prfaas.planner.latency.model import LatencyModel
from prfaas.planner.sim.arrivals import (
    ArrivalKind,
    FixedLengths,
    LengthSampler,
    RequestStream,
    synthetic_stream,
)
from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.simulator import DecodePool, PrefillPool, SimConfig, simulate

__all__ = [
    "TAIL",
    "GoodputResult",
    "SloTarget",
    "config_goodput",
    "goodput",
    "simulated_decode_goodput",
    "simulated_prefill_goodput",
]

TAIL = 0.25
"""A rate passes only if the latest quarter of arrivals also meets the target: above capacity
a finite run's backlog grows steadily, so its last requests fail even when the average (which
the early, unqueued requests dominate) would pass."""


@dataclass(frozen=True, slots=True)
class SloTarget:
    """Latency objectives met jointly by at least ``attainment`` of the requests."""

    ttft_s: float
    tpot_s: float
    attainment: float = 0.9


@dataclass(frozen=True, slots=True)
class GoodputResult:
    """The highest passing rate (req/s; 0 if none passes) and every probe made."""

    rate: float
    attainment: float
    probes: tuple[tuple[float, float], ...]
    """(rate, attainment) in the order tried."""


def goodput(
    attainment_at: Callable[[float], float],
    target: float,
    *,
    guess: float = 1.0,
    rel_tol: float = 0.02,
    max_probes: int = 40,
) -> GoodputResult:
    """Bisect the rate at which ``attainment_at(rate) >= target`` stops holding.

    Doubles (or halves) from ``guess`` to bracket the edge, then bisects until the bracket is
    within ``rel_tol`` of the rate. Assumes attainment falls as the rate rises.
    """
    if not guess > 0:
        raise SimulatorError(f"goodput search needs a positive starting rate, got {guess}")
    probes: list[tuple[float, float]] = []

    def ok(rate: float) -> bool:
        att = attainment_at(rate)
        probes.append((rate, att))
        return att >= target

    lo, hi = 0.0, guess
    lo_att = math.nan
    if ok(guess):
        lo, lo_att = guess, probes[-1][1]
        hi = guess * 2.0
        while len(probes) < max_probes and ok(hi):
            lo, lo_att = hi, probes[-1][1]
            hi *= 2.0
    else:
        hi = guess
        probe = guess / 2.0
        while len(probes) < max_probes and probe > guess * 1e-6:
            if ok(probe):
                lo, lo_att = probe, probes[-1][1]
                break
            hi = probe
            probe /= 2.0
        if lo == 0.0:
            return GoodputResult(0.0, probes[-1][1], tuple(probes))
    while len(probes) < max_probes and hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo, lo_att = mid, probes[-1][1]
        else:
            hi = mid
    return GoodputResult(lo, lo_att, tuple(probes))


def config_goodput(
    config: SimConfig,
    inputs: LengthSampler,
    outputs: LengthSampler,
    slo: SloTarget,
    *,
    requests: int = 2000,
    seed: int = 0,
    guess: float = 1.0,
    rel_tol: float = 0.02,
    kind: ArrivalKind = "poisson",
    cv: float = 1.0,
    on_probe: Callable[[float, SimResult], None] | None = None,
    cover_s: float = 0.0,
) -> GoodputResult:
    """Goodput of a whole configuration over ``requests`` sampled requests per probe.

    ``cover_s``: every probe's arrivals span at least this many seconds (a probe at ``r`` req/s
    gets about ``max(requests, r · cover_s)`` requests), so a bandwidth schedule's drop inside that
    window is part of every probe; 0: ``requests`` per probe, whatever time they span.
    """

    def stream(n: int) -> RequestStream:
        return synthetic_stream(n, 1.0, inputs, outputs, seed=seed, kind=kind, cv=cv)

    streams = _Streams(stream, requests, cover_s)
    return goodput(
        _attainment_fn(config, streams.at, slo, seed, on_probe),
        slo.attainment,
        guess=guess,
        rel_tol=rel_tol,
    )


class _Streams:
    """The request stream of each probe rate: ``requests`` requests at rate 1 scaled to the
    rate, or, when that would end before ``cover_s``, as many more as reach it."""

    def __init__(self, make: Callable[[int], RequestStream], requests: int, cover_s: float):
        self.make, self.requests, self.cover_s = make, requests, cover_s
        self.base = make(requests)

    def at(self, rate: float) -> RequestStream:
        need = self.cover_s * rate  # the window in the base stream's time (rate 1)
        n = self.requests
        if need > 0:
            while self.base.arrival_s[-1] < need:
                self.base = self.make(2 * len(self.base))
            n = max(n, int(np.searchsorted(self.base.arrival_s, need)) + 1)
        return self.base.head(n).scaled(rate)


def _attainment_fn(
    config: SimConfig,
    stream_at: Callable[[float], RequestStream],
    slo: SloTarget,
    seed: int,
    on_probe: Callable[[float, SimResult], None] | None,
) -> Callable[[float], float]:
    def attainment_at(rate: float) -> float:
        res = simulate(config, stream_at(rate), seed=seed)
        if on_probe is not None:
            on_probe(rate, res)
        overall = res.attainment(slo.ttft_s, slo.tpot_s)
        return min(overall, res.attainment(slo.ttft_s, slo.tpot_s, last=TAIL))

    return attainment_at


def simulated_prefill_goodput(
    latency: LatencyModel,
    inputs: LengthSampler,
    ttft_s: float,
    attainment: float = 0.9,
    *,
    pipeline_stages: int = 1,
    token_budget: int = 0,
    requests: int = 1000,
    seed: int = 0,
) -> float:
    """Goodput (req/s) of one prefill instance against a TTFT objective (``simu_prefill``)."""
    pool = PrefillPool("prefill", "dc", 1, latency, token_budget, pipeline_stages)
    config = SimConfig("prefill-instance", (pool,), None)
    probe = inputs.sample(np.random.default_rng(seed), 64)
    unloaded = latency.prefill_seconds([float(probe.mean())])
    guess = 0.5 * pipeline_stages / max(unloaded, 1e-9)
    return config_goodput(
        config,
        inputs,
        FixedLengths(1),
        SloTarget(ttft_s, math.inf, attainment),
        requests=requests,
        seed=seed,
        guess=guess,
    ).rate


def simulated_decode_goodput(
    latency: LatencyModel,
    inputs: LengthSampler,
    outputs: LengthSampler,
    tpot_s: float,
    attainment: float = 0.9,
    *,
    ttft_s: float = math.inf,
    max_batch: int = 256,
    requests: int = 1000,
    seed: int = 0,
) -> float:
    """Goodput (req/s) of one decode instance against a TPOT objective (``simu_decode``);
    ``ttft_s`` bounds the wait for a batch slot (it is part of TTFT)."""
    pool = DecodePool("decode", "dc", 1, latency, max_batch)
    config = SimConfig("decode-instance", (), pool)
    rng = np.random.default_rng(seed)
    mean_in = float(np.mean(inputs.sample(rng, 64)))
    mean_out = float(np.mean(outputs.sample(rng, 64)))
    step = latency.decode_step_seconds(max_batch, max_batch * (mean_in + mean_out / 2))
    guess = 0.5 * max_batch / max(step * mean_out, 1e-9)
    return config_goodput(
        config,
        inputs,
        outputs,
        SloTarget(ttft_s, tpot_s, attainment),
        requests=requests,
        seed=seed,
        guess=guess,
    ).rate
