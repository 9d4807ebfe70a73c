"""What a request trace says about the workload: uncached lengths, summary statistics, and the
planner's ``WorkloadInput`` taken from it.

**Uncached lengths.** By default every request is matched against one *unbounded* cache shared
by all instances that holds every block seen before it (``shared_cache_uncached``): the most a
prefix cache can save on this trace, its upper bound. ``replayed_uncached`` instead replays the
trace through ``instances`` LRU caches of ``cache_blocks`` blocks under the router's placement
rule (``RoutingCore``: affinity, then load, then rotation; a request's blocks go to the
instance it was placed on). A cached length is ``held blocks × block_tokens`` capped at the
prompt (``Chains``); a fully cached prompt still counts 1 token (the engine computes the last
token's logits).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from prfaas.planner.distributions import LengthDistribution, Trace
from prfaas.planner.problem import SharingSample, WorkloadInput
from prfaas.planner.routing.policy import Link, RoutingCore, Target
from prfaas.planner.routing.prefix import PrefixCache
from prfaas.planner.sharing import ConversationSharing, Sharing
from prfaas.planner.sim.arrivals import RequestStream, synthetic_stream

__all__ = [
    "DEFAULT_THRESHOLDS",
    "SHARED_CACHE_NOTE",
    "SHARING_SAMPLE",
    "TraceStats",
    "quantile_buckets",
    "replayed_uncached",
    "shared_cache_uncached",
    "sharing_uncached",
    "trace_stats",
    "trace_workload",
    "with_sharing",
]

DEFAULT_THRESHOLDS = (1024, 4096, 8192, 16384, 32768)
"""Thresholds ``trace stats`` reports when none are given (tokens)."""

SHARED_CACHE_NOTE = (
    "uncached lengths assume one unbounded prefix cache shared by all instances "
    "(the trace's own upper bound on prefix reuse)"
)


def shared_cache_uncached(stream: RequestStream) -> npt.NDArray[np.int64]:
    """Each request's prompt minus the longest prefix of its chain seen in any earlier request."""
    chains = stream.block_chains
    bs = chains.block_tokens
    ids, off = chains.ids.tolist(), chains.offsets.tolist()
    lengths = stream.input_tokens.tolist()
    seen: set[int] = set()
    out = np.empty(len(lengths), dtype=np.int64)
    for r, n in enumerate(lengths):
        chain = ids[off[r] : off[r + 1]]
        held = 0
        for b in chain:
            if b not in seen:
                break
            held += 1
        out[r] = max(1, n - min(n, held * bs))
        seen.update(chain)
    return out


SHARING_SAMPLE = 20_000
"""Requests ``sharing_uncached`` draws from a ``workload.sharing`` pattern to plan from."""


@functools.lru_cache(maxsize=16)
def sharing_uncached(
    sharing: Sharing,
    input_length: LengthDistribution,
    output_length: LengthDistribution,
    *,
    requests: int = SHARING_SAMPLE,
    seed: int = 0,
) -> SharingSample:
    """Uncached lengths of ``requests`` requests drawn as the simulator draws them
    (``synthetic_stream`` with ``sharing``, seeded), under ``trace stats``' rule: one unbounded
    cache shared by all instances (``shared_cache_uncached``), the pattern's upper bound on
    prefix reuse. The plan's ``p``, ``l_long`` and ``l_short`` are computed over them."""
    stream = synthetic_stream(
        requests, 1.0, input_length, output_length, seed=seed, sharing=sharing
    )
    uncached = shared_cache_uncached(stream)
    if isinstance(sharing, ConversationSharing):
        kind = f"conversations (concurrent {sharing.concurrent}, turns {sharing.turns})"
    else:
        kind = f"documents ({sharing.documents} documents, zipf {sharing.zipf:g})"
    return SharingSample(
        uncached=Trace(tuple(uncached.astype(float).tolist())),
        requests=requests,
        hit_ratio=1.0 - float(uncached.sum()) / float(stream.input_tokens.sum()),
        kind=f"{kind}, {sharing.block_tokens}-token blocks",
        prompt_mean=float(stream.input_tokens.mean()),
    )


def with_sharing(workload: WorkloadInput, sharing: Sharing | None) -> WorkloadInput:
    """``workload`` with ``sharing`` and, where the plan takes its uncached lengths from it (no
    ``uncached_length``), the seeded sample of its requests (``sharing_uncached``)."""
    sample = None
    if sharing is not None and workload.uncached_length is None:
        sample = sharing_uncached(sharing, workload.input_length, workload.output_length)
    return replace(workload, sharing=sharing, sharing_sample=sample)


def replayed_uncached(
    stream: RequestStream, *, cache_blocks: int, instances: int
) -> npt.NDArray[np.int64]:
    """Uncached lengths through ``instances`` LRU caches of ``cache_blocks`` blocks (of the
    trace's block size) each, placed by the router's rule; requests complete before the next
    arrives (no load imbalance), so placement is affinity, then rotation."""
    if cache_blocks < 1 or instances < 1:
        raise ValueError(
            f"cache_blocks ({cache_blocks}) and instances ({instances}) must be at least 1"
        )
    chains = stream.block_chains
    pool = [Target(PrefixCache(cache_blocks)) for _ in range(instances)]
    core: RoutingCore[Target, Link] = RoutingCore(
        block_size=chains.block_tokens, decode=pool, always_available=True
    )
    out = np.empty(len(stream), dtype=np.int64)
    for r, n in enumerate(stream.input_tokens.tolist()):
        chain = chains.chain(r)
        d = core.decide(chain, n, float(stream.arrival_s[r]))
        out[r] = max(1, d.uncached_tokens)
        assert d.decode is not None
        d.decode.cache.insert(chain)
    return out


BUCKET_QUANTILES = (*(q / 20 for q in range(1, 20)), 0.99, 0.999, 1.0)
"""Upper bounds of the emitted histogram: every 5%, then the tail at P99, P99.9 and the max."""


def quantile_buckets(
    values: npt.NDArray[Any], quantiles: Sequence[float] = BUCKET_QUANTILES
) -> list[tuple[int, float]]:
    """A histogram of ``values`` as ``(upTo, weight)`` buckets at their quantiles (integer
    bounds, strictly increasing, each weight the share of values in ``(previous, upTo]``):
    the ServingPlan's empirical distribution, so a plan can be made without the trace."""
    v = np.sort(np.asarray(values, dtype=np.int64))
    edges = np.unique(np.ceil(np.quantile(v, quantiles)).astype(np.int64))
    counts = np.diff(np.concatenate([[0], np.searchsorted(v, edges, side="right")]))
    return [(int(e), float(c) / len(v)) for e, c in zip(edges, counts, strict=True) if c > 0]


def _summary(values: npt.NDArray[Any]) -> dict[str, float]:
    v = values.astype(np.float64)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


@dataclass(frozen=True, slots=True)
class TraceStats:
    """``prfaas trace stats``' numbers (``to_json`` gives the documented keys)."""

    requests: int
    duration_s: float
    rate_mean_per_min: float
    rate_peak_per_min: int
    input_tokens: dict[str, float]
    uncached_tokens: dict[str, float]
    prefix_hit_ratio: float
    thresholds: tuple[tuple[int, float, float], ...]
    """(tokens, share of requests above, share of uncached prefill tokens above)."""
    cache_model: str

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "durationSeconds": self.duration_s,
            "arrivalsPerMinute": {"mean": self.rate_mean_per_min, "peak": self.rate_peak_per_min},
            "inputTokens": self.input_tokens,
            "uncachedTokens": self.uncached_tokens,
            "prefixHitRatio": self.prefix_hit_ratio,
            "thresholds": [
                {"tokens": t, "requestShare": rs, "uncachedTokenShare": us}
                for t, rs, us in self.thresholds
            ],
            "cacheModel": self.cache_model,
        }


def trace_stats(
    stream: RequestStream,
    uncached: npt.NDArray[np.int64],
    thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
    *,
    cache_model: str = SHARED_CACHE_NOTE,
) -> TraceStats:
    """Requests, duration, arrivals per minute, length percentiles (numpy's linear
    interpolation), token prefix-hit ratio, and the share above each threshold."""
    t = stream.arrival_s
    duration = float(t[-1] - t[0])
    minutes = np.floor((t - t[0]) / 60.0).astype(np.int64)
    per_min = np.bincount(minutes)
    total_in = float(stream.input_tokens.sum())
    total_unc = float(uncached.sum())
    rows = []
    for thr in sorted(set(int(x) for x in thresholds)):
        above = uncached > thr
        rows.append((thr, float(above.mean()), float(uncached[above].sum()) / total_unc))
    return TraceStats(
        requests=len(stream),
        duration_s=duration,
        rate_mean_per_min=len(stream) / max(len(per_min), 1),
        rate_peak_per_min=int(per_min.max()),
        input_tokens=_summary(stream.input_tokens),
        uncached_tokens=_summary(uncached),
        prefix_hit_ratio=1.0 - total_unc / total_in,
        thresholds=tuple(rows),
        cache_model=cache_model,
    )


def trace_workload(
    stream: RequestStream, uncached: npt.NDArray[np.int64], base: WorkloadInput
) -> WorkloadInput:
    """``base`` with lengths, rate and uncached lengths from the trace (empirical: ``p``,
    ``l_long`` and ``l_short`` are then computed over the trace's requests)."""
    duration = float(stream.arrival_s[-1] - stream.arrival_s[0])
    rate = (len(stream) - 1) / duration if duration > 0 and len(stream) > 1 else None
    if rate is not None and not math.isfinite(rate):
        rate = None
    return WorkloadInput(
        input_length=Trace(tuple(stream.input_tokens.astype(float).tolist())),
        output_length=Trace(tuple(stream.output_tokens.astype(float).tolist())),
        requests_per_second=rate if rate is not None else base.requests_per_second,
        prefix_cache_hit_rate=0.0,
        uncached_length=Trace(tuple(uncached.astype(float).tolist())),
    )
