"""Planner benchmark: plan time of the PrfaaS case study and of a 10 prefill × 20 decode problem.

    .venv/bin/python bench/planner.py

Targets (DESIGN.md §8): case study < 0.5 s, 10 × 20 clusters < 2 s on a 2-core machine. Prints
the numbers and the case study's Table 6 comparison; asserts nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.distributions import Fixed, LogNormal
from prfaas.planner.latency.catalog import GPUS, MODELS
from prfaas.planner.plan import Plan
from prfaas.planner.problem import ClusterInput, LinkInput, Problem, SloInput, WorkloadInput
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[1] / "crds" / "samples" / "case-study.yaml"


def generated(prefill: int = 10, decode: int = 20) -> Problem:
    """PrfaaS clusters (H200/B200) in their own datacenters, PD clusters (H20/H100) in others,
    a link from every prefill datacenter to two thirds of the decode datacenters."""
    gpus_p = [GPUS["H200"], GPUS["B200"]]
    gpus_d = [GPUS["H20"], GPUS["H100"]]
    clusters = [
        ClusterInput(f"prefill-{i}", f"dc-p{i}", "prefill", gpus_p[i % 2], 16 + 8 * (i % 3))
        for i in range(prefill)
    ]
    clusters += [
        ClusterInput(f"decode-{j}", f"dc-d{j}", "decode", gpus_d[j % 2], 32 + 16 * (j % 4))
        for j in range(decode)
    ]
    links = [
        LinkInput(f"p{i}-d{j}", f"dc-p{i}", f"dc-d{j}", 25.0 + 25 * ((i + j) % 4), 1 + (i * j) % 9)
        for i in range(prefill)
        for j in range(decode)
        if (i + 2 * j) % 3
    ]
    return Problem(
        "generated",
        MODELS["hybrid-1t"],
        tuple(clusters),
        tuple(links),
        WorkloadInput(LogNormal(9.9, 1.0, 128, 131072), Fixed(1024)),
        SloInput(10.0, 0.05),
    )


def timed(fn: Callable[[], Plan], repeats: int) -> tuple[Plan, float, float]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return result, statistics.median(times), max(times)


def main() -> None:
    (case,) = problems_from_manifests(load_manifests(SAMPLE).resources)
    p, med, worst = timed(lambda: plan(case), 5)
    print(f"case study: plan {med * 1e3:.0f} ms median, {worst * 1e3:.0f} ms max (target < 500)")
    base = {b.name: b.throughput_rps for b in p.baselines}
    egress = sum(link.egress_gbps for link in p.links)
    rows = [
        ("Λ_max PrfaaS-PD (req/s)", 3.24, p.throughput_rps),
        ("Λ_max homogeneous PD", 2.11, base["homogeneous-pd"]),
        ("Λ_max naive heterogeneous", 2.45, base["naive-heterogeneous"]),
        ("threshold t (tokens)", 19400, p.threshold_tokens or float("inf")),
        ("offload fraction p", 0.496, p.offload_fraction),
        ("Θ_prfaas", 1.61, p.stages.get("prfaas", 0.0)),
        ("Θ_pd-p", 1.64, p.stages["pdPrefill"]),
        ("Θ_pd-d", 3.91, p.stages["pdDecode"]),
        ("egress (Gbps)", 13.0, egress),
    ]
    print(f"  {'quantity':28s} {'Table 6':>10s} {'planner':>10s} {'error':>8s}")
    for name, paper, ours in rows:
        print(f"  {name:28s} {paper:10.4g} {ours:10.4g} {ours / paper - 1:+8.1%}")
    split = "/".join(
        str(p.instances(n, r))
        for n, r in (("prfaas-h200", "prefill"), ("pd-h20", "prefill"), ("pd-h20", "decode"))
    )
    print(f"  split N_prfaas/N_p/N_d: {split} (Table 6: 4/3/5)")
    from prfaas.planner.latency.profiles import CATALOG_PROFILES, fit_prefill, layer_fits

    print("latency fits (relative error on their own points):")
    _, rep = fit_prefill(CATALOG_PROFILES["hybrid-1t"][0].prefill)
    print(
        f"  Table 5 prefill (hybrid-1t, 8×H200): max {rep.max_rel_error:.1%}, "
        f"rms {rep.rms_rel_error:.1%}"
    )
    for name, fit in layer_fits().items():
        print(
            f"  H200 layer {name}: prefill max {fit.prefill_report.max_rel_error:.1%} rms "
            f"{fit.prefill_report.rms_rel_error:.1%}; decode (CUDA graph) max "
            f"{fit.decode_report.max_rel_error:.1%} rms {fit.decode_report.rms_rel_error:.1%}"
        )
    big = generated()
    q, med, worst = timed(lambda: plan(big), 3)
    print(
        f"10 prefill × 20 decode clusters ({len(big.links)} links): plan {med * 1e3:.0f} ms "
        f"median, {worst * 1e3:.0f} ms max (target < 2000); feasible={q.feasible}, "
        f"Λ_max={q.throughput_rps:.2f} req/s, t={q.threshold_tokens or float('inf'):.0f}"
    )
    per = sorted({r.threshold_tokens for r in q.routers if r.threshold_tokens is not None})
    offloading = sum(r.threshold_tokens is not None for r in q.routers)
    print(
        f"  per-cluster thresholds: {offloading}/{len(q.routers)} decode clusters offload, "
        f"t_d in {{{', '.join(f'{t:,.0f}' for t in per)}}}"
    )
    for note in q.notes:
        if note.startswith("per-cluster thresholds"):
            print("  " + note[note.index("; Λ_max") + 2 :])


if __name__ == "__main__":
    main()
