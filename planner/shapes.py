"""Aggregated or disaggregated: what one chunked-prefill (aggregated) instance sustains.

An aggregated instance runs decodes and prefill chunks in the same steps (vLLM's chunked
prefill, decode-maximal batching). In steady state at ``λ`` requests/s per instance, with
``O`` output tokens per request and a share ``s`` of requests prefilled here (the rest arrive
with their KV from PrfaaS) with mean uncached prompt ``L``, Little's law gives per step of
``τ`` seconds::

    d = λ·O·τ            decodes in the step (every request decodes here)
    c = λ·s·L·τ          prefill tokens in the step (chunks of the local prompts)
    τ = S(d, d·ctx) + λ·s·τ·P([L])    (``latency.mixed``: a step's mean chunk work is the
                                        prompts started per step × their whole prefill)

so ``τ = S/(1 − ρ)`` with ``ρ = λ·s·P([L])`` the prefill utilisation (ctx: mean decode
context). That is a mean: a step carrying a prompt's first chunk is longer than one carrying a
later chunk, which the TPOT percentile (the simulator's job) sees and this mean does not.

``τ`` is the smallest fixed point of that map, found by iterating upwards (the map is
monotone), starting from a one-decode step. The rate is feasible when ``τ`` stays within
the TPOT SLO (every decode lives through such steps: TPOT = mean step,
``mixed.tpot_seconds``), ``d`` within ``max_num_seqs``, the P90 decode batch ``n`` (below)
and one prompt within the KV capacity, and a local prompt's chunked TTFT (``⌈L/c⌉`` steps)
within the TTFT SLO.
The token budget (``max_num_batched_tokens``) is what keeps TPOT within the SLO when the
steps are full: ``n = ⌈d + 1.28·√d⌉`` decodes (the P90 of a Poisson-like count around ``d``)
plus ``k`` chunk tokens, a full step averaging ``S(n, n·ctx) + (k/L)·P([L])`` over a prompt's
chunks (``P([L])``: the mean prefill over the lengths, ``mean_prefill_seconds``, since prefill
is convex in the length), so ``k`` is the largest with that
within the TPOT SLO and the budget is ``n + k`` rounded *down* to whole KV blocks. A rate is
feasible only if that budget also carries the prefill demand (``c ≤ budget − n``; else the
prompt queue grows without bound). The largest feasible ``λ`` is found by bisection, like
``Λ_max`` a saturation rate; a burst of prompts then lengthens TTFT (queueing), not TPOT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prfaas.planner.distributions import LengthDistribution, Split
from prfaas.planner.latency.mixed import chunk_plan, chunk_seconds, mixed_step_seconds
from prfaas.planner.latency.model import LatencyModel
from prfaas.planner.plan import ShapeOption
from prfaas.planner.problem import Candidate, Problem
from prfaas.planner.throughput import Solver

__all__ = [
    "AGGREGATED_SHAPES",
    "KV_BLOCK_TOKENS",
    "AggregatedPoint",
    "aggregated_instance",
    "best_option",
    "compare_shapes",
    "mean_prefill_seconds",
    "per_unit",
]

AGGREGATED_SHAPES = ("aggregated", "aggregated+offload")
"""The ``ShapeOption.shape`` values served by one aggregated (chunked-prefill) pool."""

KV_BLOCK_TOKENS = 16
"""vLLM's default KV block size: the smallest sensible token budget and its rounding unit."""


@dataclass(frozen=True, slots=True)
class AggregatedPoint:
    """The most one aggregated instance sustains within the SLOs, and its engine numbers."""

    rate_rps: float
    token_budget: int
    step_s: float
    """Mean step time at ``rate_rps`` (the predicted TPOT)."""
    decode_batch: float
    ttft_s: float
    """Chunked prefill time of a mean local prompt at that rate (queueing not included)."""
    limit: str
    """What stops a higher rate: ``tpot``, ``ttft``, ``kv``, ``max-num-seqs`` or ``unstable``."""


@dataclass(frozen=True, slots=True)
class _State:
    step_s: float
    decodes: float
    chunk_tokens: float
    ttft_s: float
    limit: str  # "" when feasible
    budget: int = 0


def _steady(
    lat: LatencyModel,
    rate: float,
    prompt: float,
    local_share: float,
    output: float,
    context: float,
    tpot_s: float,
    ttft_s: float,
    kv_tokens: float,
    max_seqs: int,
    block: int,
    per_prompt: float,
    max_budget: float = math.inf,
) -> _State:
    tau = mixed_step_seconds(lat, 1, context)  # a loaded instance always has a step to run
    for _ in range(200):
        d = rate * output * tau
        n = max(1, math.ceil(d))
        nxt = lat.decode_step_seconds(n, n * context) + rate * local_share * tau * per_prompt
        if nxt > tpot_s:
            return _State(nxt, d, rate * local_share * prompt * nxt, math.inf, "tpot")
        if abs(nxt - tau) <= 1e-9 * max(nxt, 1e-12):
            tau = nxt
            break
        tau = nxt
    else:
        return _State(tau, 0.0, 0.0, math.inf, "unstable")
    d, c = rate * output * tau, rate * local_share * prompt * tau
    if d > max_seqs:
        return _State(tau, d, c, math.inf, "max-num-seqs")
    # Decodes in flight are Poisson-like around d (M/G/∞): size the step and the KV for their
    # P90, beside one partly prefilled prompt.
    n = max(1, math.ceil(d + 1.2816 * math.sqrt(d)))
    if n * (context + output / 2.0) + local_share * prompt > kv_tokens:
        return _State(tau, d, c, math.inf, "kv")
    room = 0.0  # prompt tokens a full step may carry beside the n decodes
    if per_prompt > 0:
        room = (tpot_s - lat.decode_step_seconds(n, n * context)) * prompt / per_prompt
    budget = max(math.ceil(n / block), math.floor((n + room) / block)) * block
    if budget > max_budget:  # vLLM's budget stays within the model length (whole blocks)
        budget = max(block, math.floor(max_budget / block) * block)
    if c > budget - n:
        return _State(tau, d, c, math.inf, "tpot", budget)
    ttft = math.ceil(prompt / c) * tau if c > 0 else 0.0
    if ttft > ttft_s:
        return _State(tau, d, c, ttft, "ttft", budget)
    return _State(tau, d, c, ttft, "", budget)


def aggregated_instance(
    lat: LatencyModel,
    prompt: float,
    output: float,
    context: float,
    tpot_s: float,
    ttft_s: float,
    kv_tokens: float,
    max_seqs: int,
    local_share: float = 1.0,
    block: int = KV_BLOCK_TOKENS,
    prefill_s: float | None = None,
    max_budget: float = math.inf,
) -> AggregatedPoint:
    """The highest rate one aggregated instance sustains (module docstring).

    ``prompt``: mean uncached length of the prompts prefilled here; ``local_share``: the
    fraction of requests prefilled here (``1 - p`` with offload); ``context``: mean KV context
    of a decoding sequence; ``kv_tokens``: the instance's KV capacity; ``prefill_s``: the mean
    prefill time of those prompts (``mean_prefill_seconds``; default ``P([prompt])``, exact
    for one length); ``max_budget``: the largest token budget the engine may run (the model
    length, as ``spec.engine.maxNumBatchedTokens`` is bounded).
    """
    if output <= 0:
        raise ValueError(f"output must be > 0 tokens (got {output})")
    per_prompt = prefill_s
    if per_prompt is None:
        per_prompt = sum(chunk_seconds(lat, c) for c in chunk_plan(prompt, max(prompt, 1.0)))

    def at(rate: float) -> _State:
        return _steady(
            lat,
            rate,
            prompt,
            local_share,
            output,
            context,
            tpot_s,
            ttft_s,
            kv_tokens,
            max_seqs,
            block,
            per_prompt,
            max_budget,
        )

    lo, hi = 0.0, 1.0
    first = at(hi)
    while not first.limit and hi < 1e9:
        lo, hi = hi, hi * 2.0
        first = at(hi)
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if at(mid).limit:
            hi = mid
        else:
            lo = mid
    best, above = at(lo), at(hi)
    budget = best.budget or block
    return AggregatedPoint(
        lo, budget, best.step_s, best.decodes, best.ttft_s, above.limit or "tpot"
    )


def mean_prefill_seconds(
    lat: LatencyModel, dist: LengthDistribution, upper: float = math.inf, points: int = 32
) -> float:
    """Mean prefill time ``E[P([L]) | L ≤ upper]`` on a quantile grid of ``dist``: prefill is
    convex in the length, so the time at the mean length would understate the chunk work a
    step carries (and the budget that keeps TPOT would come out too large)."""
    top = dist.cdf(upper) if math.isfinite(upper) else 1.0
    if top <= 0:
        return 0.0
    qs = ((i + 0.5) / points * top for i in range(points))
    return sum(lat.prefill_seconds((max(dist.quantile(q), 1.0),)) for q in qs) / points


def _prfaas_gpus_per_rps(problem: Problem, solver: Solver, l_long: float) -> float:
    """PrfaaS GPUs one offloaded request/s keeps busy at ``l_long`` (all PrfaaS clusters)."""
    cap = sum(pool.instances / pool.stage(l_long) for pool in solver.prefill)
    gpus = sum(c.count for c in problem.prefill_clusters)
    return gpus / cap if cap > 0 else 0.0


def _per_gpu(rate: float, gpus: float) -> float:
    return rate / gpus if gpus > 0 else 0.0


def _prfaas_price(problem: Problem) -> float:
    """USD per PrfaaS GPU-hour: the prefill clusters' catalog prices, weighted by GPU count
    (0 when any is missing)."""
    clusters = problem.prefill_clusters
    gpus = sum(c.count for c in clusters)
    if not clusters or gpus <= 0 or any(c.gpu.price_per_hour <= 0 for c in clusters):
        return 0.0
    return sum(c.gpu.price_per_hour * c.count for c in clusters) / gpus


def _costed(
    option: ShapeOption, local_gpus: float, local_price: float, extra: float, prfaas_price: float
) -> ShapeOption:
    """``option`` with its cost per hour and goodput per cost (left 0 without prices)."""
    if local_price <= 0 or (extra > 0 and prfaas_price <= 0):
        return option
    cost = local_gpus * local_price + extra * prfaas_price
    option.cost_per_hour = cost
    option.goodput_per_cost = option.goodput_rps / cost if cost > 0 else 0.0
    return option


def per_unit(option: ShapeOption) -> str:
    """An option's goodput per GPU, and per USD/h where priced (for notes and reasons)."""
    text = f"{option.goodput_per_gpu:.4g} req/s per GPU"
    if option.cost_per_hour > 0:
        text += f", {option.goodput_per_cost:.4g} per USD/h"
    return text


def best_option(options: Sequence[ShapeOption]) -> ShapeOption:
    """The option with the most goodput per cost where every option has a price, else per
    GPU (ties: the earlier option)."""
    if not options:
        raise ValueError("no shape options to choose from")
    if all(o.cost_per_hour > 0 for o in options):
        return max(options, key=lambda o: o.goodput_per_cost)
    return max(options, key=lambda o: o.goodput_per_gpu)


def _offloaded(
    problem: Problem, solver: Solver, name: str, t: float, local_rate: Callable[[Split], float]
) -> tuple[float, float, Split]:
    """Rate and busy PrfaaS GPUs of cluster ``name`` offloading above ``t``, its local pool
    sustaining ``local_rate(split)`` (other decode clusters not asking: an advisory bound)."""
    sp = solver.dist.split(t)
    local = local_rate(sp)
    if sp.p <= 0:
        return local, 0.0, sp
    caps = {pool.name: pool.instances / pool.stage(sp.l_long) for pool in solver.prefill}
    demand = {pool.name: 0.0 for pool in solver.local}
    demand[name] = sp.p * local
    served = solver.network.max_offload(caps, demand, solver.kv_bytes(sp.l_long))[name]
    rate = min(local, served / sp.p)
    return rate, sp.p * rate * _prfaas_gpus_per_rps(problem, solver, sp.l_long), sp


def _best_t(
    problem: Problem,
    solver: Solver,
    name: str,
    local_rate: Callable[[Split], float],
    value: Callable[[float, float], float],
) -> tuple[float, float, Split] | None:
    """The threshold on a quantile grid with the highest ``value(rate, PrfaaS GPUs)``
    (goodput per cost or per GPU; ``None``: nothing can be offloaded). ``offload.mode: fixed``
    evaluates its ``thresholdTokens`` only (what the router will apply)."""
    if not solver.prefill or problem.offload.mode == "off":
        return None
    fixed = problem.offload.threshold_tokens
    if problem.offload.mode == "fixed" and fixed is not None:
        grid = [float(fixed)]
    else:
        grid = [solver.dist.quantile(q / 24.0) for q in range(1, 24)]
    best: tuple[float, float, Split] | None = None
    for t in grid:
        rate, extra, sp = _offloaded(problem, solver, name, t, local_rate)
        if sp.p <= 0 or rate <= 0:
            continue
        if best is None or value(rate, extra) > value(best[0], best[1]):
            best = (rate, extra, sp)
    return best


def compare_shapes(
    problem: Problem,
    solver: Solver,
    decode: Mapping[str, Candidate],
    thresholds: Mapping[str, float | None],
) -> list[ShapeOption]:
    """Aggregated and disaggregated, each with and without offload, for every decode cluster.

    The disaggregated options are the throughput model's (``Solver``); ``thresholds`` are the
    plan's per-cluster ``t`` (``None``: the plan keeps that cluster all-local), and the option
    the plan deploys is ``chosen`` (the solver moves the mark where it deploys an aggregated
    row). An aggregated pool uses the cluster's PD-D instance shape (``decode``), every
    instance both prefilling and decoding. With several decode clusters the aggregated rows
    are ``deployable=False`` (advisory): each row's offload assumes the shared PrfaaS pools and
    links to itself, which the multi-cluster LP does not reconcile with aggregated pools yet.
    """
    w = problem.workload
    out_len = w.output_length.mean
    context = w.prompt_mean + out_len / 2.0
    m = problem.model
    options: list[ShapeOption] = []
    prfaas_price = _prfaas_price(problem)
    single = len(solver.local) == 1
    all_local = solver.evaluate(math.inf)
    for pool in solver.local:
        name = pool.name
        cluster = next(c for c in problem.decode_clusters if c.name == name)
        split = all_local.local[name]
        pd_gpus = split.n_p * pool.prefill_gpus + split.n_d * pool.decode_gpus
        price = cluster.gpu.price_per_hour
        rows: list[ShapeOption] = [
            _costed(
                ShapeOption(
                    name,
                    "disaggregated",
                    split.n_p + split.n_d,
                    pd_gpus,
                    split.capacity,
                    _per_gpu(split.capacity, pd_gpus),
                    chosen=thresholds.get(name) is None,
                ),
                pd_gpus,
                price,
                0.0,
                prfaas_price,
            )
        ]
        t_plan = thresholds.get(name)
        if t_plan is not None:
            ev = solver.evaluate(t_plan)
            sp_plan = ev.split
            loc = ev.local[name]
            rate = min(loc.capacity, ev.served.get(name, 0.0) / sp_plan.p)
            extra = sp_plan.p * rate * _prfaas_gpus_per_rps(problem, solver, sp_plan.l_long)
            used = loc.n_p * pool.prefill_gpus + loc.n_d * pool.decode_gpus
            rows.append(
                _costed(
                    ShapeOption(
                        name,
                        "disaggregated+offload",
                        loc.n_p + loc.n_d,
                        round(used + extra),
                        rate,
                        _per_gpu(rate, used + extra),
                        threshold_tokens=t_plan,
                        chosen=True,
                    ),
                    used,
                    price,
                    extra,
                    prfaas_price,
                )
            )
        cand = decode[name]
        n = cluster.count // cand.gpus
        kv_tokens = cand.kv_capacity_bytes / max(m.kv_bytes_per_token, 1)

        def agg(
            share: float,
            prompt: float,
            upper: float = math.inf,
            cand: Candidate = cand,
            kv_tokens: float = kv_tokens,
        ) -> AggregatedPoint:
            return aggregated_instance(
                cand.latency,
                prompt,
                out_len,
                context,
                problem.slo.tpot_s,
                problem.slo.ttft_s,
                kv_tokens,
                problem.max_batch_size,
                local_share=share,
                block=problem.block_tokens,
                prefill_s=mean_prefill_seconds(cand.latency, w.uncached, upper),
                max_budget=m.max_context,
            )

        whole = agg(1.0, w.uncached.mean)
        rows.append(
            _costed(
                ShapeOption(
                    name,
                    "aggregated",
                    n,
                    n * cand.gpus,
                    n * whole.rate_rps,
                    _per_gpu(n * whole.rate_rps, n * cand.gpus),
                    token_budget=whole.token_budget,
                    deployable=single,
                    limit=whole.limit,
                ),
                n * cand.gpus,
                price,
                0.0,
                prfaas_price,
            )
        )
        points: dict[float, AggregatedPoint] = {}

        def local_rate(
            sp: Split, n: int = n, points: dict[float, AggregatedPoint] = points
        ) -> float:
            pt = (
                agg(1.0 - sp.p, sp.l_short, sp.threshold) if sp.l_short > 0 else agg(1e-9, 1.0, 1.0)
            )
            points[sp.threshold] = pt
            return n * pt.rate_rps

        def value(
            rate: float, extra: float, gpus: int = n * cand.gpus, price: float = price
        ) -> float:
            """Goodput per cost where priced, else per GPU (as ``best_option`` ranks)."""
            if price > 0 and prfaas_price > 0:
                return rate / (gpus * price + extra * prfaas_price)
            return _per_gpu(rate, gpus + extra)

        best = _best_t(problem, solver, name, local_rate, value)
        if best is not None:
            rate, extra, sp = best
            pt = points[sp.threshold]
            rows.append(
                _costed(
                    ShapeOption(
                        name,
                        "aggregated+offload",
                        n,
                        round(n * cand.gpus + extra),
                        rate,
                        _per_gpu(rate, n * cand.gpus + extra),
                        token_budget=pt.token_budget,
                        threshold_tokens=sp.threshold,
                        deployable=single,
                        limit=pt.limit,
                    ),
                    n * cand.gpus,
                    price,
                    extra,
                    prfaas_price,
                )
            )
        options += rows
    return options
