"""Parallelism search: DistServe Algorithm 1 (papers.md §2.3) with the §2.2 queueing forms.

For one role on one GPU type, ``candidates`` enumerates TP×PP instances that divide the heads
(TP) and layers (PP), keep TP inside a node, and hold the weights plus the role's KV in
``memory_utilization`` of their memory. ``search`` keeps the candidate with the highest goodput
*per GPU*:

* prefill — the largest Poisson rate whose mean TTFT under M/D/1 (Eq. 1, with the pipeline form
  of Eq. 2: ``TTFT = D + R·D_m² / (2(1 − R·D_m))``, ``D`` the whole latency, ``D_m`` the slowest
  stage) meets the TTFT SLO;
* decode — the largest batch whose step time meets the TPOT SLO and whose KV fits, giving
  ``PP · batch / (T_decode · L_out)`` requests per second.

``PlannerSettings.goodput`` replaces both with another function (the simulator's). With a target
rate, ``choose_for_rate`` picks the candidate with the lowest mean TTFT when the same GPU budget
serves that rate — DistServe's reading of Eqs. 2-3: intra-op wins at low rate, inter-op at high.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prfaas.planner.latency.catalog import GpuSpec, ModelArch
from prfaas.planner.latency.estimator import latency_model
from prfaas.planner.latency.profiles import ProfileData
from prfaas.planner.problem import Candidate, GoodputFn, PlannerSettings, RoleLoad

__all__ = [
    "candidates",
    "choose_for_rate",
    "decode_batch",
    "decode_goodput",
    "max_rate_for_ttft",
    "mdl_ttft",
    "prefill_goodput",
    "search",
    "ttft_inter_2way",
    "ttft_intra_2way",
]


def mdl_ttft(rate: float, latency_s: float, stage_s: float | None = None) -> float:
    """Mean TTFT of an M/D/1 prefill server (DistServe Eq. 1; Eq. 2 when ``stage_s`` < latency).

    ``inf`` when the server is saturated (``rate · stage ≥ 1``).
    """
    d_m = latency_s if stage_s is None else stage_s
    load = rate * d_m
    if load >= 1.0:
        return math.inf
    return latency_s + rate * d_m * d_m / (2.0 * (1.0 - load))


def ttft_inter_2way(rate: float, d: float) -> float:
    """DistServe Eq. 2: two-stage pipeline, ``D_s = D``, ``D_m = D/2``."""
    if rate * d >= 2.0:
        return math.inf
    return d + rate * d * d / (4.0 * (2.0 - rate * d))


def ttft_intra_2way(rate: float, d: float, k: float) -> float:
    """DistServe Eq. 3: two-way tensor parallelism with speed-up ``1 < K < 2``."""
    if rate * d >= k:
        return math.inf
    return d / k + rate * d * d / (2.0 * k * (k - rate * d))


def max_rate_for_ttft(slo_s: float, latency_s: float, stage_s: float | None = None) -> float:
    """Largest rate with ``mdl_ttft(rate) ≤ slo_s`` (closed form; 0 if the SLO < latency)."""
    d_m = latency_s if stage_s is None else stage_s
    slack = slo_s - latency_s
    if slack <= 0:
        return 0.0
    # D + R·Dm²/(2(1−R·Dm)) ≤ S  ⇔  x = R·Dm ≤ 2·slack / (Dm + 2·slack)
    return 2.0 * slack / (d_m * (d_m + 2.0 * slack))


def candidates(
    model: ModelArch,
    gpu: GpuSpec,
    count: int,
    per_node: int,
    need_bytes: float,
    settings: PlannerSettings,
    profiles: Sequence[ProfileData] = (),
) -> list[Candidate]:
    """TP×PP shapes for ``model`` on ``count`` GPUs of ``gpu``, ``per_node`` to a node, whose
    memory holds the weights plus ``need_bytes`` of KV (Alg. 1's ``G.size/(inter·intra) < C``)."""
    usable = gpu.memory_bytes * settings.memory_utilization
    max_gpus = min(count, per_node * settings.max_nodes_per_instance)
    out: list[Candidate] = []
    for tp in range(1, min(per_node, count) + 1):
        if model.heads % tp:
            continue
        for pp in range(1, max_gpus // tp + 1):
            if model.layers % pp:
                continue
            free = tp * pp * usable - model.weight_bytes
            if free < need_bytes or model.weight_bytes / (tp * pp) > usable:
                continue
            lat = latency_model(model, gpu, tp, pp, profiles, settings.roofline)
            out.append(Candidate(tp, pp, lat, free))
    return out


def prefill_goodput(c: Candidate, load: RoleLoad) -> float:
    """Requests/s one instance prefills within the TTFT SLO (M/D/1 mean, pipeline stages)."""
    d = c.latency.prefill_seconds([load.length])
    d_m = c.latency.prefill_stage_seconds([load.length])
    return max_rate_for_ttft(load.ttft_s, d, d_m)


def decode_batch(c: Candidate, load: RoleLoad) -> tuple[int, float]:
    """Largest batch (≤ ``max_batch_size``) whose step meets the TPOT SLO and whose KV fits,
    with its step time; ``(0, inf)`` if even one sequence misses the SLO or does not fit."""
    by_memory = int(c.kv_capacity_bytes // max(c.pp * load.kv_bytes_per_sequence, 1.0))
    hi = min(load.max_batch_size, by_memory)

    def step(b: int) -> float:
        return c.latency.decode_step_seconds(b, b * load.length)

    limit = load.tpot_s * (1.0 + 1e-9)
    if hi < 1 or step(1) > limit:
        return 0, math.inf
    lo = 1
    while lo < hi:  # step time grows with the batch: bisect the largest feasible batch
        mid = (lo + hi + 1) // 2
        if step(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo, step(lo)


def decode_goodput(c: Candidate, load: RoleLoad) -> float:
    """Requests/s one decode instance completes: ``PP · batch / (T_decode · L_out)``."""
    batch, t = decode_batch(c, load)
    if batch == 0:
        return 0.0
    return c.pp * batch / (t * load.output_tokens)


def _goodput(c: Candidate, load: RoleLoad, goodput: GoodputFn | None) -> float:
    if goodput is not None:
        return goodput(c, load)
    return prefill_goodput(c, load) if load.role == "prefill" else decode_goodput(c, load)


def search(
    cands: Sequence[Candidate], load: RoleLoad, goodput: GoodputFn | None = None
) -> Candidate | None:
    """Algorithm 1: the candidate with the highest goodput per GPU (ties: fewer GPUs, less TP);
    ``None`` when no candidate meets the SLO at any rate."""
    best: Candidate | None = None
    best_key = (0.0, 0, 0)
    for c in cands:
        per_gpu = _goodput(c, load, goodput) / c.gpus
        key = (per_gpu, -c.gpus, -c.tp)
        if per_gpu > 0 and (best is None or key > best_key):
            best, best_key = c, key
    return best


def choose_for_rate(
    cands: Sequence[Candidate], load: RoleLoad, rate: float, gpu_budget: int
) -> Candidate | None:
    """The prefill candidate with the lowest mean TTFT when ``gpu_budget`` GPUs of it share
    ``rate`` evenly (replicas replace R by R/N, §2.2)."""
    best: Candidate | None = None
    best_ttft = math.inf
    for c in cands:
        replicas = gpu_budget // c.gpus
        if replicas < 1:
            continue
        d = c.latency.prefill_seconds([load.length])
        d_m = c.latency.prefill_stage_seconds([load.length])
        ttft = mdl_ttft(rate / replicas, d, d_m)
        if ttft < best_ttft:
            best, best_ttft = c, ttft
    return best
