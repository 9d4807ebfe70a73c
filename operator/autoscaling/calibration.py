"""Calibration while running: the engines' own latency histograms against the latency model.

Every poll reads, per cluster and role (the ``prfaas_io_cluster``/``prfaas_io_role`` labels the
PodMonitor copies onto the engines' series), what vLLM measured over the query window:

- prefill role, phase ``prefill``: ``vllm:request_prefill_time_seconds`` (time in the PREFILL
  phase per request) and ``vllm:request_prefill_kv_computed_tokens`` (uncached prompt tokens);
- decode role, phase ``decode``: ``vllm:inter_token_latency_seconds`` (one decode step per
  token; vLLM < 0.11 called it ``time_per_output_token_seconds``), the running batch
  ``vllm:num_requests_running`` and the context from ``vllm:request_prompt_tokens`` plus half of
  ``vllm:request_generation_tokens``.

The latency model of that role, at the plan's GPU and TP×PP, predicts the same quantity at the
observed length (or batch and context), plus, for prefill, the mean idle wake of the measured
profile at the observed requests per engine (``vllm:num_requests_running`` series counted);
``observed / predicted`` moves a correction factor per (cluster, role, phase). As Dynamo's SLA
planner (``components/planner``: ``p_correction_factor = observed TTFT / expected``,
``d_correction_factor = observed ITL / expected``), the factor multiplies the model the next
plan uses. Unlike it, the factor here is

- **smoothed**: ``f ← f · (r / f)^α`` (a geometric step of weight ``α`` toward the ratio ``r``),
- **bounded**: ``r`` and ``f`` stay within ``[1/bound, bound]``,
- **moved only with enough samples** in the window (``min_samples`` requests or tokens), and
- **never moved by missing metrics**: no series, a zero count or a non-finite value leaves the
  factor where it is.

A move of more than ``warn_change`` (20%) is reported as a Warning Event by the reconciler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prfaas.operator.api import models as api
from prfaas.operator.api.labels import LABEL_CLUSTER, LABEL_ROLE
from prfaas.operator.autoscaling.prometheus import Sample
from prfaas.planner.errors import PlannerError
from prfaas.planner.latency.measured import IdleWake
from prfaas.planner.latency.model import LatencyModel

__all__ = [
    "CALIBRATION_QUERIES",
    "Calibration",
    "CalibrationSettings",
    "EngineObservation",
    "FactorMove",
    "calibration_queries",
    "observe_engines",
    "plan_predictor",
    "spec_wake",
]

Phase = Literal["prefill", "decode"]
Key = tuple[str, str, str]
"""``(cluster, role, phase)``."""

_METRICS = {
    "prefill_s_sum": "vllm:request_prefill_time_seconds_sum",
    "prefill_s_count": "vllm:request_prefill_time_seconds_count",
    "prefill_tokens_sum": "vllm:request_prefill_kv_computed_tokens_sum",
    "prefill_tokens_count": "vllm:request_prefill_kv_computed_tokens_count",
    "itl_sum": "vllm:inter_token_latency_seconds_sum",
    "itl_count": "vllm:inter_token_latency_seconds_count",
    "prompt_sum": "vllm:request_prompt_tokens_sum",
    "prompt_count": "vllm:request_prompt_tokens_count",
    "generation_sum": "vllm:request_generation_tokens_sum",
    "generation_count": "vllm:request_generation_tokens_count",
}
CALIBRATION_QUERIES = (*_METRICS, "running", "engines")
"""The keys of ``calibration_queries()``."""


def calibration_queries(selector: str, window_s: float) -> dict[str, str]:
    """PromQL per key: window increases of the engines' histograms (and the mean running batch
    per engine), by cluster and role. ``selector``: ``{prfaas_io_plan="...",...}``."""
    by = f"by ({_prom(LABEL_CLUSTER)}, {_prom(LABEL_ROLE)})"
    w = f"{max(1, round(window_s))}s"
    out = {k: f"sum {by} (increase({m}{selector}[{w}]))" for k, m in _METRICS.items()}
    out["running"] = f"avg {by} (avg_over_time(vllm:num_requests_running{selector}[{w}]))"
    out["engines"] = f"count {by} (vllm:num_requests_running{selector})"
    return out


def _prom(label: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in label)


@dataclass(frozen=True, slots=True)
class EngineObservation:
    """What one (cluster, role, phase)'s engines measured over the window."""

    seconds: float
    """Mean prefill time per request, or mean decode step (inter-token latency)."""
    samples: float
    """Requests (prefill) or tokens (decode) behind ``seconds``."""
    tokens: float = 0.0
    """Prefill: mean uncached prompt tokens. Decode: mean context per sequence."""
    batch: float = 1.0
    """Decode: mean running sequences per engine."""
    rate: float = 0.0
    """Prefill: requests per second per engine over the window (0: unknown); what an idle wake
    costs on average depends on it."""


def _by_pool(samples: list[Sample] | None) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for s in samples or []:
        cluster, role = s.labels.get(_prom(LABEL_CLUSTER)), s.labels.get(_prom(LABEL_ROLE))
        if cluster and role and math.isfinite(s.value):
            out[(cluster, role)] = out.get((cluster, role), 0.0) + s.value
    return out


def _mean(
    sums: Mapping[tuple[str, str], float], counts: Mapping[tuple[str, str], float]
) -> dict[tuple[str, str], tuple[float, float]]:
    return {k: (sums[k] / n, n) for k, n in counts.items() if n > 0 and k in sums}


def observe_engines(
    results: Mapping[str, list[Sample]], window_s: float = 0.0
) -> dict[Key, EngineObservation]:
    """The observations behind ``calibration_queries()`` answers over a ``window_s`` window;
    pools without data are left out (a missing metric never becomes a zero)."""
    r = {k: _by_pool(results.get(k)) for k in CALIBRATION_QUERIES}
    out: dict[Key, EngineObservation] = {}
    prefill = _mean(r["prefill_s_sum"], r["prefill_s_count"])
    prefill_tokens = _mean(r["prefill_tokens_sum"], r["prefill_tokens_count"])
    for (cluster, role), (seconds, n) in prefill.items():
        if role == "prefill" and (cluster, role) in prefill_tokens and seconds > 0:
            tokens = prefill_tokens[(cluster, role)][0]
            engines = r["engines"].get((cluster, role), 0.0)
            rate = n / window_s / engines if window_s > 0 and engines > 0 else 0.0
            out[(cluster, role, "prefill")] = EngineObservation(seconds, n, tokens, rate=rate)
    itl = _mean(r["itl_sum"], r["itl_count"])
    prompt = _mean(r["prompt_sum"], r["prompt_count"])
    generation = _mean(r["generation_sum"], r["generation_count"])
    for (cluster, role), (seconds, n) in itl.items():
        pool = (cluster, role)
        batch = r["running"].get(pool)
        # A convertible pool's kv_both engines (role label ``both``) calibrate decode: only
        # decode-role requests have inter-token steps (prefill-role ones make one token); their
        # batch and context means include the prefill-role requests' short share.
        if role not in ("decode", "both") or pool not in prompt or not batch or batch <= 0:
            continue
        if seconds <= 0:
            continue
        context = prompt[pool][0] + generation.get(pool, (0.0, 0.0))[0] / 2
        out[(cluster, "decode", "decode")] = EngineObservation(seconds, n, context, batch)
    return out


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    smoothing: float = 0.5
    """``α``: weight of a new ratio (1 = jump to it, 0 = never move)."""
    bound: float = 4.0
    """Factors and ratios stay within ``[1/bound, bound]``."""
    min_prefill_requests: float = 10
    min_decode_tokens: float = 100
    warn_change: float = 0.2
    """A factor moving by more than this (relative) is a Warning Event."""


@dataclass(frozen=True, slots=True)
class FactorMove:
    """One factor's update: where, from what to what, and on what evidence."""

    key: Key
    before: float
    after: float
    predicted_s: float
    observed_s: float
    samples: float

    @property
    def change(self) -> float:
        return self.after / self.before - 1.0

    def message(self) -> str:
        cluster, role, phase = self.key
        return (
            f"{cluster}/{role} {phase}: the engines measured {self.observed_s * 1e3:.3g} ms, the "
            f"latency model predicted {self.predicted_s * 1e3:.3g} ms "
            f"({self.samples:.0f} samples); correction factor {self.before:.3g} → {self.after:.3g}"
        )


Predictor = Callable[[str, str], LatencyModel | None]
"""``(cluster, role)`` → the uncorrected latency model of one instance, ``None`` if unknown."""


@dataclass
class Calibration:
    """Correction factors of one plan and the last comparison behind each."""

    settings: CalibrationSettings = field(default_factory=CalibrationSettings)
    factors: dict[Key, float] = field(default_factory=dict)
    last: dict[Key, FactorMove] = field(default_factory=dict)

    def _predict(
        self, key: Key, obs: EngineObservation, predictor: Predictor, wake: IdleWake | None
    ) -> float | None:
        cluster, role, phase = key
        model = predictor(cluster, role)
        if model is None:
            return None
        if phase == "prefill":
            seconds = model.prefill_seconds([obs.tokens])
            if wake is not None:  # the engines' histogram includes what idle engines add
                seconds += wake.expected_prefill_engine(obs.rate, seconds)
            return seconds
        batch = max(1, round(obs.batch))
        return model.decode_step_seconds(batch, batch * obs.tokens)

    def update(
        self,
        observations: Mapping[Key, EngineObservation],
        predictor: Predictor,
        wake: IdleWake | None = None,
    ) -> list[FactorMove]:
        """Move the factors the observations support; the moves made (for events/status).
        ``wake``: the measured profile's idle wake, predicted beside the model's prefill at the
        observed rate (``IdleWake.expected_prefill_engine``), so that a host where idle engines
        are slower is not read as a slower engine."""
        s = self.settings
        moves = []
        for key, obs in sorted(observations.items()):
            enough = s.min_prefill_requests if key[2] == "prefill" else s.min_decode_tokens
            if obs.samples < enough:
                continue
            predicted = self._predict(key, obs, predictor, wake)
            if predicted is None or not predicted > 0 or not math.isfinite(obs.seconds):
                continue
            ratio = min(max(obs.seconds / predicted, 1 / s.bound), s.bound)
            before = self.factors.get(key, 1.0)
            after = before * (ratio / before) ** s.smoothing
            after = min(max(after, 1 / s.bound), s.bound)
            self.factors[key] = after
            move = FactorMove(key, before, after, predicted, obs.seconds, obs.samples)
            self.last[key] = move
            moves.append(move)
        return moves

    def corrections(self) -> tuple[tuple[str, str, str, float], ...]:
        """``(cluster, role, phase, factor)`` for the planner (factors of exactly 1 left out)."""
        return tuple((*k, f) for k, f in sorted(self.factors.items()) if f != 1.0)

    def to_status(self) -> list[dict[str, object]]:
        """``status.calibration``: predicted vs observed and the factor, per key."""
        return [
            {
                "cluster": k[0],
                "role": k[1],
                "phase": k[2],
                "predictedSeconds": round(m.predicted_s, 6),
                "observedSeconds": round(m.observed_s, 6),
                "samples": round(m.samples, 1),
                "factor": round(self.factors.get(k, 1.0), 4),
            }
            for k, m in sorted(self.last.items())
        ]


def plan_predictor(spec: api.ServingPlanSpec, plan: Mapping[str, Any] | None) -> Predictor:
    """The uncorrected latency model of each (cluster, role) of ``plan`` (``status.plan``: the
    GPU and TP×PP that run now), from the ServingPlan's model and profiles."""
    from prfaas.operator.api.translate import model_from_spec, spec_profiles
    from prfaas.planner.latency.catalog import gpu_spec
    from prfaas.planner.latency.estimator import latency_model

    shapes: dict[tuple[str, str], tuple[str, int, int]] = {}
    for c in (plan or {}).get("clusters") or []:
        try:
            shapes[(str(c["name"]), str(c["role"]))] = (
                str(c["accelerator"]),
                int(c.get("tensorParallel", 1)),
                int(c.get("pipelineParallel", 1)),
            )
        except (KeyError, TypeError, ValueError):
            continue
    try:
        model = model_from_spec(spec.model)
        profiles = spec_profiles(spec.model, model, "ServingPlan")
    except PlannerError:
        return lambda _cluster, _role: None

    def predict(cluster: str, role: str) -> LatencyModel | None:
        shape = shapes.get((cluster, role))
        if shape is None:
            return None
        try:
            return latency_model(model, gpu_spec(shape[0]), shape[1], shape[2], profiles)
        except PlannerError:
            return None

    return predict


def spec_wake(spec: api.ServingPlanSpec) -> IdleWake | None:
    """The ServingPlan's measured idle wake (its inline profile's ``idleWake``), or ``None``
    (none, or malformed: the plan's own validation reports that)."""
    from prfaas.operator.api.translate import spec_idle_wake

    try:
        return spec_idle_wake(spec.model, "ServingPlan")
    except PlannerError:
        return None
