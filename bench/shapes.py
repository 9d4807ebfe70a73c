"""Aggregated or disaggregated: goodput per GPU of each serving shape over TPOT SLOs and prompt
mixes (issue #18), for the PrfaaS case study (hybrid-1t, H200 PrfaaS + H20 PD) and llama-3-8b
on H100 (8 H100 PrfaaS in dc-a, 16 H100 local in dc-b, 100 Gbit/s between).

    .venv/bin/python bench/shapes.py

Each cell plans the problem (``prfaas.planner.solver.plan``) and prints the goodput per GPU
(req/s/GPU, analytic: the planner's SLO rates, not simulated) of ``disaggregated`` (D),
``disaggregated+offload`` (D+o), ``aggregated`` (A) and ``aggregated+offload`` (A+o), and
which is best by goodput per cost (catalog prices, ``planner.shapes.best_option``; ``!`` where
per GPU would pick another); ``*`` marks a cell whose best shape differs from the cell on its
left (looser TPOT SLO) — the crossover. Prompt mixes are lognormal (sigma 1) with the mean
given; outputs as in the sample (case study: 1024) or 256 (llama). A shape the plan did not
evaluate (no offload possible at that point) prints ``-``. Asserts nothing.

The aggregated budget keeps a full step (P90 decode batch + chunks) within the TPOT SLO
(``planner.shapes``). ``--simulate N`` also simulates, per cell, the deployed shape (the plan's
``prfaas-pd``) and each aggregated row (``aggregated_scenarios``) with N requests at 0.8 × its
own planned rate and prints the SLO attainment of each (slow: minutes).

``--trace FILE`` adds a ``trace`` row to each sweep: the problem planned from the trace
(``prfaas plan --trace``: its empirical input and uncached lengths, and rate) at each TPOT; with
``--simulate``, each shape is simulated on the trace itself (its block chains, its arrival
pattern time-scaled to 0.8 × the shape's planned rate), not on lengths sampled from it.

    .venv/bin/python bench/shapes.py --trace bench/data/mooncake-conversation-30min.jsonl.xz
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.plan import Plan
from prfaas.planner.problem import ClusterInput, LinkInput, Problem, SloInput, WorkloadInput
from prfaas.planner.shapes import best_option
from prfaas.planner.sim.arrivals import RequestStream
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[1] / "crds" / "samples" / "case-study.yaml"
SHORT = {
    "disaggregated": "D",
    "disaggregated+offload": "D+o",
    "aggregated": "A",
    "aggregated+offload": "A+o",
}


def case_study() -> Problem:
    (problem,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    return problem


def llama() -> Problem:
    h100 = GPUS["H100"]
    return Problem(
        "llama-3-8b-h100",
        MODELS["llama-3-8b"],
        (
            ClusterInput("prfaas-h100", "dc-a", "prefill", h100, 8),
            ClusterInput("pd-h100", "dc-b", "decode", h100, 16),
        ),
        (LinkInput("a-to-b", "dc-a", "dc-b", 100.0, 5.0),),
        WorkloadInput(LogNormal(8.0, 1.0, 16, 131072), Fixed(256)),
        SloInput(4.0, 0.05),
    )


def with_mix(problem: Problem, mean: float, tpot_s: float) -> Problem:
    """The problem with lognormal prompts of this mean (sigma 1, as the sample) and this TPOT."""
    w = problem.workload
    old = w.input_length
    lower, upper = (old.lower, old.upper) if isinstance(old, LogNormal) else (16.0, 131072.0)
    mix = LogNormal(math.log(mean) - 0.5, 1.0, lower, upper)
    return replace(
        problem,
        workload=replace(w, input_length=mix, uncached_length=None),
        slo=replace(problem.slo, tpot_s=tpot_s),
    )


def simulated(
    problem: Problem, p: Plan, requests: int, stream: RequestStream | None = None
) -> dict[str, float]:
    """SLO attainment of the deployed shape and each aggregated row, each simulated at 0.8 ×
    its own planned rate (on ``stream``, time-scaled to that rate, when given)."""
    from prfaas.planner.sim.scenarios import aggregated_scenarios, run_scenarios, scenarios
    from prfaas.planner.sim.simulator import simulate

    chosen = next(o.shape for o in p.shapes if o.chosen)
    found = [s for s in scenarios(problem, p) if s.name == "prfaas-pd"]
    found += aggregated_scenarios(problem, p, every=True)
    out = {}
    for sc in found:
        rate = 0.8 * sc.planned_rps
        if stream is None:
            (run,) = run_scenarios(problem, [sc], requests=requests, rate=rate)
            result = run.result
        else:
            result = simulate(sc.config, stream.head(requests).scaled(rate / stream.rate))
        label = SHORT[chosen] if sc.name == "prfaas-pd" else SHORT[sc.name]
        out[label] = result.attainment(problem.slo.ttft_s, problem.slo.tpot_s)
    return out


def _cell(p: Plan, last: str | None) -> tuple[str, str | None]:
    """One sweep cell (goodput per GPU of each shape, the best, ``*``/``!`` marks)."""
    if not p.feasible or not p.shapes:
        return f"{'infeasible':<44}", None
    per = {SHORT[o.shape]: o.goodput_per_gpu for o in p.shapes}
    best = SHORT[best_option(p.shapes).shape]
    mark = "*" if last is not None and best != last else " "
    cost = "!" if best != max(per, key=lambda k: per[k]) else " "
    text = " ".join(
        f"{k}={per[k]:.4f}" if k in per else f"{k}={'-':<6}" for k in ("D", "D+o", "A", "A+o")
    )
    return f"{text} {mark}{best:<3}{cost}", best


def sweep(
    problem: Problem,
    means: list[float],
    tpots_ms: list[float],
    requests: int = 0,
    trace: tuple[Path, RequestStream] | None = None,
) -> None:
    print(f"\n== {problem.name} ({problem.model.name}); rows: mean prompt; columns: TPOT SLO")
    print(f"{'mean prompt':>11} | " + " | ".join(f"TPOT {t:>4g} ms{'':>30}" for t in tpots_ms))
    sims: list[str] = []
    rows: list[tuple[str, Problem, RequestStream | None]] = [
        (f"{mean:,.0f}", with_mix(problem, mean, 1.0), None) for mean in means
    ]
    if trace is not None:
        from prfaas.operator.cli.common import plan_from_trace

        (traced,) = plan_from_trace([problem], *trace)
        rows.append(("trace", traced, trace[1]))
    for label, base, stream in rows:
        cells: list[str] = []
        last: str | None = None
        for tpot in tpots_ms:
            problem_at = replace(base, slo=replace(base.slo, tpot_s=tpot / 1e3))
            p = plan(problem_at)
            cell, last = _cell(p, last)
            cells.append(cell)
            if requests and last is not None:
                att = simulated(problem_at, p, requests, stream)
                sims.append(
                    f"{label:>8} {'tokens' if stream is None else ''}, TPOT {tpot:g} ms: "
                    + " ".join(f"{k}={v:.2f}" for k, v in att.items())
                )
        print(f"{label:>11} | " + " | ".join(cells))
    if trace is not None:
        t_path, t_stream = trace
        print(
            f"trace row: {t_path.name}, {len(t_stream):,} requests, mean prompt "
            f"{float(t_stream.input_tokens.mean()):,.0f} tokens; planned from its empirical "
            "input and uncached lengths (unbounded shared cache) and its rate"
        )
    if sims:
        print("simulated SLO attainment, each shape at 0.8 × its planned rate:")
        print("\n".join(sims))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simulate", type=int, default=0, metavar="N", help="requests per run")
    ap.add_argument("--trace", type=Path, help="add a row planned (and simulated) from this trace")
    args = ap.parse_args()
    n = args.simulate
    trace = None
    if args.trace is not None:
        from prfaas.planner.sim.traces import load_trace

        trace = (args.trace, load_trace(args.trace))
    tpots = [15, 25, 40, 70, 120]
    sweep(case_study(), [2_000, 8_000, 27_000, 64_000], tpots, n, trace)
    sweep(llama(), [250, 1_000, 4_000, 16_000], [10, 15, 25, 50, 100], n, trace)


if __name__ == "__main__":
    main()
