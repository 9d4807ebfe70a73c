"""What a simulation run reports: per-request times as arrays, summaries, step-function series.

The run appends to flat arrays while it goes and builds a ``SimResult`` once at the end;
nothing here is touched by the event loop's hot path. Latencies are what the router measures
(``engine_images/router/metrics.py``), so simulated and measured numbers are the same quantity:

* TTFT: arrival → the first token the client receives. On vLLM's NIXL P/D path prefill's own
  token is dropped and the decode instance emits token 1 at the end of its first step with the
  request (which computes the last prompt position over the pulled KV): prefill queueing and
  compute, KV transfer, any wait for a decode slot or KV blocks, and that first step. Without a
  decode pool (prefill-only runs) it ends at prefill end.
* TTFT at prefill end (``ttft_prefill_end``): arrival → prefill end, the definition of
  DistServe and most papers, as a second column for comparison.
* TPOT: (finish − first token) / (output tokens − 1), 0 for one-token outputs: the router's
  ``(last event − first event) / (events − 1)`` over a stream of one token per event.
* E2E: arrival → last token.

SLO attainment counts a request only if TTFT *and* TPOT are both met (DistServe's code checks
them separately; the issue asks for jointly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "LatencyStats",
    "SimResult",
    "StepSeries",
    "binned_mean",
    "time_average",
]

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Mean and percentiles of one latency, seconds."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Floats) -> LatencyStats:
        if len(values) == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(float(values.mean()), float(p50), float(p90), float(p99))


@dataclass(frozen=True, slots=True)
class StepSeries:
    """A step function: from ``t[i]`` on the value is ``v[i]`` (until ``t[i+1]``)."""

    t: Floats
    v: Floats

    @classmethod
    def of(cls, t: Sequence[float], v: Sequence[float]) -> StepSeries:
        return cls(np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64))

    def value_at(self, when: float) -> float:
        i = int(np.searchsorted(self.t, when, side="right")) - 1
        return float(self.v[i]) if i >= 0 else float("nan")


def time_average(series: StepSeries, start: float, end: float) -> float:
    """Time average of a step function over ``[start, end)`` (0 before its first point)."""
    if end <= start:
        return 0.0
    t = np.clip(np.append(series.t, end), start, end)
    widths = np.diff(t)
    return float(np.dot(widths, series.v) / (end - start))


def binned_mean(series: StepSeries, end: float, bin_s: float) -> tuple[Floats, Floats]:
    """Mean of a step function over consecutive bins of ``bin_s`` seconds: (bin starts, means)."""
    if end <= 0 or bin_s <= 0:
        return np.zeros(0), np.zeros(0)
    edges = np.arange(0.0, end + bin_s, bin_s, dtype=np.float64)
    # Integral of the step function up to each edge, by interpolating its cumulative area.
    t = np.append(series.t, max(end, float(series.t[-1]) if len(series.t) else end))
    area = np.concatenate(([0.0], np.cumsum(np.diff(t) * series.v)))
    cum = np.interp(edges, t, area, left=0.0)
    # np.interp is linear between knots, which is exact for the integral of a step function.
    means = np.diff(cum) / bin_s
    return edges[:-1], means


@dataclass(frozen=True)
class SimResult:
    """One run: per-request columns (seconds since start), series, and the event count."""

    name: str
    arrival_s: Floats
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    uncached_tokens: npt.NDArray[np.int64]
    remote: npt.NDArray[np.bool_]
    prefill_queued_s: Floats
    """When the request joined its prefill instance's queue (after routing)."""
    prefill_start_s: Floats
    prefill_end_s: Floats
    kv_ready_s: Floats
    """When the request's KV reached the decode side (prefill end plus transfer)."""
    decode_start_s: Floats
    """When the request (first) joined a decode batch; its wait for a slot or KV ends here."""
    first_token_s: Floats
    """When the client got the first token: the end of the request's first decode step."""
    finish_s: Floats
    links: dict[str, StepSeries] = field(default_factory=dict)
    """Egress (bit/s) per link."""
    link_capacity: dict[str, StepSeries] = field(default_factory=dict)
    """Capacity (bit/s) per link."""
    offered: dict[str, tuple[Floats, Floats]] = field(default_factory=dict)
    """Per link: (routing time, KV bytes) of each transfer sent over it."""
    thresholds: dict[str, StepSeries] = field(default_factory=dict)
    """Offload threshold ``t`` (tokens; inf = no offload) per link over time."""
    queues: dict[str, StepSeries] = field(default_factory=dict)
    """Requests waiting (not yet in service) per pool over time."""
    events: int = 0
    preemptions: int = 0
    """Decode sequences preempted (recompute) because the KV cache ran out."""
    clusters: tuple[str, ...] = ()
    """Decode clusters of a multi-cluster run, in order (empty: one cluster)."""
    cluster: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    """Per request: the index in ``clusters`` of the decode cluster it arrived at (empty with
    one cluster)."""

    def __len__(self) -> int:
        return len(self.arrival_s)

    def of_cluster(self, name: str) -> SimResult:
        """The requests of decode cluster ``name`` (per-request columns only; the series,
        which are per link and per pool, stay whole)."""
        if name not in self.clusters:
            raise KeyError(f"no decode cluster {name!r} in this run; it has {list(self.clusters)}")
        keep = self.cluster == self.clusters.index(name)
        columns = {
            f.name: getattr(self, f.name)[keep]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return replace(self, name=f"{self.name}/{name}", **columns)

    @property
    def ttft(self) -> Floats:
        return self.first_token_s - self.arrival_s

    @property
    def ttft_prefill_end(self) -> Floats:
        """Arrival → prefill end (DistServe's and most papers' TTFT)."""
        return self.prefill_end_s - self.arrival_s

    @property
    def e2e(self) -> Floats:
        return self.finish_s - self.arrival_s

    @property
    def tpot(self) -> Floats:
        steps = np.maximum(self.output_tokens - 1, 1)
        out = (self.finish_s - self.first_token_s) / steps
        out[self.output_tokens <= 1] = 0.0
        return out

    @property
    def end_s(self) -> float:
        return float(self.finish_s.max()) if len(self) else 0.0

    @property
    def throughput_rps(self) -> float:
        """Completed requests per second from the first arrival to the last completion."""
        if len(self) == 0:
            return 0.0
        span = self.end_s - float(self.arrival_s[0])
        return len(self) / span if span > 0 else float("inf")

    @property
    def offload_fraction(self) -> float:
        return float(self.remote.mean()) if len(self) else 0.0

    def attainment(self, ttft_s: float, tpot_s: float, *, last: float = 1.0) -> float:
        """Fraction of requests meeting the TTFT and the TPOT objective together; ``last`` < 1
        counts only that fraction of the latest arrivals."""
        if len(self) == 0:
            return 0.0
        start = min(int(len(self) * (1.0 - last)), len(self) - 1)
        ok = (self.ttft[start:] <= ttft_s) & (self.tpot[start:] <= tpot_s)
        return float(ok.mean())

    def mean_egress_bps(self, link: str, start: float = 0.0, end: float | None = None) -> float:
        stop = self.end_s if end is None else end
        return time_average(self.links[link], start, stop)

    def cluster_summaries(self, ttft_s: float, tpot_s: float) -> list[dict[str, Any]]:
        """One row per decode cluster (empty with one cluster): its arrival rate over the
        run's arrival span, offloaded share, P90 TTFT/TPOT, joint SLO attainment and the
        median of its routers' ``t`` over time."""
        if not self.clusters:
            return []
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0
        rows = []
        for name in self.clusters:
            part = self.of_cluster(name)
            n = len(part)
            ts = [s.v for k, s in self.thresholds.items() if k.startswith(f"{name}/") and len(s.v)]
            t = float(np.median(np.concatenate(ts))) if ts else float("inf")
            rows.append(
                {
                    "name": name,
                    "requests": n,
                    "rateRps": n / span if span > 0 else float("nan"),
                    "offloadFraction": part.offload_fraction,
                    "thresholdP50": t,
                    "ttftP90S": float(np.percentile(part.ttft, 90)) if n else float("nan"),
                    "tpotP90S": float(np.percentile(part.tpot, 90)) if n else float("nan"),
                    "attainment": part.attainment(ttft_s, tpot_s),
                }
            )
        return rows

    def summary(self, ttft_s: float | None = None, tpot_s: float | None = None) -> dict[str, Any]:
        """Plain numbers for tables and JSON."""
        out: dict[str, Any] = {
            "name": self.name,
            "requests": len(self),
            "throughputRps": self.throughput_rps,
            "offloadFraction": self.offload_fraction,
            "ttft": LatencyStats.of(self.ttft),
            "ttftPrefillEnd": LatencyStats.of(self.ttft_prefill_end),
            "tpot": LatencyStats.of(self.tpot),
            "e2e": LatencyStats.of(self.e2e),
            "egressGbps": {k: self.mean_egress_bps(k) / 1e9 for k in self.links},
            "preemptions": self.preemptions,
        }
        if ttft_s is not None and tpot_s is not None:
            out["attainment"] = self.attainment(ttft_s, tpot_s)
        return out
