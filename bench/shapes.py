"""Aggregated or disaggregated: goodput per GPU of each serving shape over TPOT SLOs and prompt
mixes (issue #18), for the PrfaaS case study (hybrid-1t, H200 PrfaaS + H20 PD) and llama-3-8b
on H100 (8 H100 PrfaaS in dc-a, 16 H100 local in dc-b, 100 Gbit/s between).

    .venv/bin/python bench/shapes.py

Each cell plans the problem (``prfaas.planner.solver.plan``) and prints the goodput per GPU
(req/s/GPU, analytic: the planner's SLO rates, not simulated) of ``disaggregated`` (D),
``disaggregated+offload`` (D+o), ``aggregated`` (A) and ``aggregated+offload`` (A+o), and
which is best; ``*`` marks a cell whose best shape differs from the cell on its left (looser
TPOT SLO) — the crossover. Prompt mixes are lognormal (sigma 1) with the mean given; outputs
as in the sample (case study: 1024) or 256 (llama). A shape the plan did not evaluate (no
offload possible at that point) prints ``-``. Asserts nothing.

The aggregated numbers use the *mean* mixed step as TPOT (``planner.shapes``); the P90 TPOT
spikes of steps carrying long chunks are the simulator's to add (issue #18 item 3), so these
aggregated numbers are optimistic for long prompts.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.problem import ClusterInput, LinkInput, Problem, SloInput, WorkloadInput
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


def sweep(problem: Problem, means: list[float], tpots_ms: list[float]) -> None:
    print(f"\n== {problem.name} ({problem.model.name}); rows: mean prompt; columns: TPOT SLO")
    print(f"{'mean prompt':>11} | " + " | ".join(f"TPOT {t:>4g} ms{'':>30}" for t in tpots_ms))
    for mean in means:
        cells, last = [], None
        for tpot in tpots_ms:
            p = plan(with_mix(problem, mean, tpot / 1e3))
            if not p.feasible or not p.shapes:
                cells.append(f"{'infeasible':<44}")
                last = None
                continue
            per = {SHORT[o.shape]: o.goodput_per_gpu for o in p.shapes}
            best = max(per, key=lambda k: per[k])
            mark = "*" if last is not None and best != last else " "
            last = best
            text = " ".join(
                f"{k}={per[k]:.4f}" if k in per else f"{k}={'-':<6}"
                for k in ("D", "D+o", "A", "A+o")
            )
            cells.append(f"{text} {mark}{best:<3}")
        print(f"{mean:>11,.0f} | " + " | ".join(cells))


def main() -> None:
    tpots = [15, 25, 40, 70, 120]
    sweep(case_study(), [2_000, 8_000, 27_000, 64_000], tpots)
    sweep(llama(), [250, 1_000, 4_000, 16_000], [10, 15, 25, 50, 100])


if __name__ == "__main__":
    main()
