"""Autoscaling decisions, free of I/O: Prometheus answers → observed load → replicas.

The operator (not an HPA) owns ``Deployment.spec.replicas``: every ``interval`` it reads the
routers' metrics back from Prometheus, re-plans with the observed arrival rate and prompt length
(when ``workload.observe``), and then this module decides how many instances each role really
gets:

- **Observed workload.** Arrival rate = ``increase(prfaas_router_requests_total[w]) / w``; mean
  uncached prompt = ``increase(..._uncached_tokens_sum[w]) / increase(..._count[w])``. The
  planner's input distribution keeps its *shape* and is scaled so that its uncached mean (after
  ``prefixCacheHitRate``) equals the observed one: log-normal ``mu += ln s`` (truncation bounds
  kept, they are physical limits), empirical bucket bounds ``× s``, fixed value ``× s``. The
  routers do not see output lengths, so the output distribution stays as declared.
- **Dead band.** A new observation replaces the one in force only when rate or mean moved by
  more than ``tolerance``, so noise does not re-plan (and roll routers with a new ``t``).
- **Measured links.** ``increase(prfaas_router_kv_bytes_total[w]) × 8 /
  increase(prfaas_router_kv_transfer_seconds_total[w])`` per link: the throughput achieved while
  a transfer was under way; published only with enough busy time to mean something.
- **Stabilisation.** Scale up at once; scale down to the highest recommendation of the last
  ``window`` seconds, so a lower target must hold for a whole window (HPA's behaviour). A role
  the plan uses never drops below ``max(1, minReplicas)``; nothing exceeds ``maxReplicas``.
- **Missing data never scales down**: no router series (or Prometheus down) → no observation →
  the last one in force (or the spec's own workload) keeps planning.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from prfaas.operator.api import models as api
from prfaas.operator.api.labels import LABEL_PLAN, LABEL_PLAN_NAMESPACE, label_value
from prfaas.operator.autoscaling.prometheus import Sample
from prfaas.planner.plan import Plan

__all__ = [
    "QUERY_NAMES",
    "Observation",
    "Stabilizer",
    "clamp",
    "observe",
    "observed_workload",
    "prom_label",
    "queries",
    "settle",
    "stabilise_plan",
]

QUERY_NAMES = ("requests", "uncached_sum", "uncached_count", "kv_bytes", "kv_seconds")
"""The keys of ``queries()`` (and of the results ``observe()`` reads)."""

MIN_RATE_RPS = 0.001
"""An idle plan is planned for this rate (the API wants a positive rate): its minimum size."""


def prom_label(k8s_label: str) -> str:
    """The Prometheus label a PodMonitor's ``podTargetLabels`` makes of a pod label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", k8s_label)


def queries(plan: str, namespace: str, window_s: float) -> dict[str, str]:
    """The PromQL instant queries for one plan's routers (selected by the labels the operator's
    PodMonitor copies from the router pods: ``prfaas_io_plan``, ``prfaas_io_plan_namespace``)."""
    sel = (
        f'{{{prom_label(LABEL_PLAN)}="{label_value(plan)}",'
        f'{prom_label(LABEL_PLAN_NAMESPACE)}="{label_value(namespace)}"}}'
    )
    w = f"{max(1, round(window_s))}s"
    return {
        "requests": f"sum(increase(prfaas_router_requests_total{sel}[{w}]))",
        "uncached_sum": f"sum(increase(prfaas_router_uncached_tokens_sum{sel}[{w}]))",
        "uncached_count": f"sum(increase(prfaas_router_uncached_tokens_count{sel}[{w}]))",
        "kv_bytes": f"sum by (link) (increase(prfaas_router_kv_bytes_total{sel}[{w}]))",
        "kv_seconds": (
            f"sum by (link) (increase(prfaas_router_kv_transfer_seconds_total{sel}[{w}]))"
        ),
    }


@dataclass(frozen=True, slots=True)
class Observation:
    """What the routers saw over ``window_s`` seconds up to ``at``."""

    at: _dt.datetime
    window_s: float
    rate_rps: float | None
    """Arrivals per second; ``None``: no router series at all (nothing to go by)."""
    mean_uncached_tokens: float | None
    """Mean prompt tokens no prefix cache held; ``None`` without requests in the window."""
    link_gbps: dict[str, float] = field(default_factory=dict)
    """Achieved KV throughput per InterDCLink name, Gbit/s (links with enough busy time)."""

    def to_status(self) -> dict[str, object]:
        """The ``status.observed`` form (camelCase, RFC 3339 time)."""
        return {
            "rateRps": None if self.rate_rps is None else round(self.rate_rps, 4),
            "meanInputTokens": (
                None if self.mean_uncached_tokens is None else round(self.mean_uncached_tokens, 1)
            ),
            "windowSeconds": self.window_s,
            "at": self.at.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _total(samples: list[Sample] | None) -> float | None:
    if not samples:
        return None
    values = [s.value for s in samples if math.isfinite(s.value)]
    return sum(values) if values else None


def _by_link(samples: list[Sample] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples or []:
        link = s.labels.get("link")
        if link and math.isfinite(s.value):
            out[link] = out.get(link, 0.0) + s.value
    return out


def observe(
    results: Mapping[str, list[Sample]],
    window_s: float,
    at: _dt.datetime,
    *,
    min_transfer_seconds: float = 5.0,
) -> Observation:
    """The observation behind query ``results`` (keyed like ``queries()``)."""
    requests = _total(results.get("requests"))
    rate = None if requests is None else max(0.0, requests) / window_s
    tokens, count = _total(results.get("uncached_sum")), _total(results.get("uncached_count"))
    mean = tokens / count if tokens is not None and count else None
    seconds = _by_link(results.get("kv_seconds"))
    shipped = _by_link(results.get("kv_bytes"))
    gbps = {
        link: 8.0 * shipped[link] / s / 1e9
        for link, s in seconds.items()
        if s >= min_transfer_seconds and shipped.get(link, 0.0) > 0
    }
    return Observation(at, window_s, rate, mean, gbps)


def _moved(old: float | None, new: float | None, tolerance: float) -> bool:
    if new is None:
        return False  # missing data never replaces what is in force
    if old is None:
        return True
    return abs(new - old) > tolerance * max(abs(old), 1e-9)


def settle(in_force: Observation | None, new: Observation, tolerance: float = 0.1) -> Observation:
    """The observation to plan with: ``new`` where rate or mean moved by more than
    ``tolerance`` (relative), else the one in force (links always take the newest values)."""
    if in_force is None:
        return new
    rate = new.rate_rps if _moved(in_force.rate_rps, new.rate_rps, tolerance) else None
    mean = (
        new.mean_uncached_tokens
        if _moved(in_force.mean_uncached_tokens, new.mean_uncached_tokens, tolerance)
        else None
    )
    if rate is None and mean is None:
        return Observation(
            in_force.at,
            in_force.window_s,
            in_force.rate_rps,
            in_force.mean_uncached_tokens,
            {**in_force.link_gbps, **new.link_gbps},
        )
    return Observation(
        new.at,
        new.window_s,
        rate if rate is not None else in_force.rate_rps,
        mean if mean is not None else in_force.mean_uncached_tokens,
        {**in_force.link_gbps, **new.link_gbps},
    )


def _scaled_length(dist: api.Distribution, factor: float) -> api.Distribution:
    if isinstance(dist, api.LogNormalDistribution):
        return dist.model_copy(update={"mu": dist.mu + math.log(factor)})
    if isinstance(dist, api.EmpiricalDistribution):
        buckets, last = [], 0
        for b in dist.buckets:
            up = max(last + 1, round(b.up_to * factor))
            buckets.append(b.model_copy(update={"up_to": up}))
            last = up
        return dist.model_copy(update={"buckets": buckets})
    return dist.model_copy(update={"value": max(1, round(dist.value * factor))})


def observed_workload(
    workload: api.Workload, obs: Observation, *, max_factor: float = 20.0
) -> tuple[api.Workload, list[str]]:
    """``workload`` with the observed rate and (shape kept, scaled) prompt lengths, and notes
    saying what was replaced. The length factor is clamped to ``[1/max_factor, max_factor]``."""
    from prfaas.operator.api.translate import distribution

    update: dict[str, object] = {}
    notes = []
    if obs.rate_rps is not None:
        update["requests_per_second"] = max(MIN_RATE_RPS, obs.rate_rps)
        notes.append(f"autoscaling: planned for the observed {obs.rate_rps:.3g} req/s")
    if obs.mean_uncached_tokens is not None and obs.mean_uncached_tokens > 0:
        if workload.uncached_length is not None:
            declared = distribution(workload.uncached_length)
        else:
            declared = distribution(workload.input_length).uncached(workload.prefix_cache_hit_rate)
        factor = obs.mean_uncached_tokens / declared.mean
        factor = min(max_factor, max(1.0 / max_factor, factor))
        update["input_length"] = _scaled_length(workload.input_length, factor)
        if workload.uncached_length is not None:
            update["uncached_length"] = _scaled_length(workload.uncached_length, factor)
        notes.append(
            f"autoscaling: prompt lengths scaled ×{factor:.3g} to the observed mean of "
            f"{obs.mean_uncached_tokens:.0f} uncached tokens (shape kept)"
        )
    return workload.model_copy(update=update), notes


def clamp(planned: int, min_replicas: int, max_replicas: int) -> int:
    """``planned`` within ``[max(1, min), max]``; a role the plan does not use stays at 0."""
    if planned <= 0:
        return 0
    return min(max_replicas, max(1, min_replicas, planned))


Key = tuple[str, str, str]
"""(plan ``namespace/name``, cluster, role)."""


@dataclass
class Stabilizer:
    """Scale up at once, down only to the highest recommendation of the last ``window_s``."""

    window_s: float
    _history: dict[Key, list[tuple[float, int]]] = field(default_factory=dict)

    def decide(self, key: Key, recommended: int, current: int | None, now: float) -> int:
        """Replicas to apply for ``key`` at monotonic time ``now``. ``current``: what runs now
        (seeds the history after a restart, so a restart never skips the window)."""
        if key not in self._history and current is not None and current > recommended:
            self._history[key] = [(now, current)]  # first sight (a restart): hold what runs
        history = [(t, r) for t, r in self._history.get(key, []) if now - t < self.window_s]
        history.append((now, recommended))
        self._history[key] = history
        return max(r for _, r in history)

    def forget(self, plan: str) -> None:
        """Drop the history of a deleted plan."""
        for key in [k for k in self._history if k[0] == plan]:
            del self._history[key]


def stabilise_plan(
    plan: Plan,
    plan_key: str,
    scaling: api.Autoscaling,
    current: Mapping[tuple[str, str], int],
    stabilizer: Stabilizer,
    now: float,
) -> list[tuple[str, str, int, int]]:
    """Clamp and stabilise ``plan``'s instances in place; returns ``(cluster, role, planned,
    applied)`` per role and notes each role held above (or clamped away from) its plan."""
    out: list[tuple[str, str, int, int]] = []
    for cp in plan.clusters:
        planned = cp.instances
        if cp.pinned:  # spec.pins: the user's count, never clamped or stabilised
            out.append((cp.name, cp.role, planned, planned))
            continue
        target = clamp(planned, scaling.min_replicas, scaling.max_replicas)
        applied = stabilizer.decide(
            (plan_key, cp.name, cp.role), target, current.get((cp.name, cp.role)), now
        )
        if applied != planned:
            lo, hi = scaling.min_replicas, scaling.max_replicas
            why = (
                "until the scale-down window passes"
                if applied > target
                else f"within minReplicas..maxReplicas {lo}..{hi}"
            )
            plan.notes.append(
                f"autoscaling: {cp.name}/{cp.role} at {applied} (planned {planned}) {why}"
            )
        cp.instances = applied
        out.append((cp.name, cp.role, planned, applied))
    return out
