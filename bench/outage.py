"""The README's outage with the online re-plan: P90 TTFT over time, three configurations.

    .venv/bin/python -P bench/outage.py [--schedule "0:100,3000:5,6000:100"] [--load 0.8 0.7]
        [--interval 60] [--switch-delay 0] [--window 60] [--seed 1]

The case study (``crds/samples/case-study.yaml``): its link drops from 100 to 5 Gbps at 3000 s
and comes back at 6000 s. Three configurations over the same Poisson requests (9000 s of
arrivals): PrfaaS-PD with the online re-plan (every ``--interval`` s the solver re-plans on the
measured link; PD-P/PD-D roles change with drain, ``planner/sim/online.py``), PrfaaS-PD with
the plan fixed (only the router's threshold loop reacts), and homogeneous PD (no link). For
each rate (``--load`` × the Λ_max the solver plans at the degraded bandwidth; 0.8 × the
smallest planned Λ_max at full bandwidth is ``prfaas simulate``'s default rate) it prints the
role changes, P90 TTFT before / during / after the drop, the number of ``--window`` windows of
the outage whose P90 exceeds the SLO, the recovery (``online.recovery_s``) and the windowed
P90 series around the drop and the return. Asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from prfaas.operator.api.manifests import read_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.planner.sim.arrivals import synthetic_stream
from prfaas.planner.sim.links import parse_schedule
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.online import (
    OnlineSpec,
    outage_window,
    phase_p90,
    recovery_s,
    settled_s,
    simulate_online,
    solver_replan,
    windowed_p90,
)
from prfaas.planner.sim.scenarios import HOMOGENEOUS, PRFAAS, common_rate, scenarios
from prfaas.planner.sim.simulator import simulate
from prfaas.planner.solver import plan

SAMPLE = Path(__file__).resolve().parents[1] / "crds" / "samples" / "case-study.yaml"


def _series(starts: np.ndarray, p90: np.ndarray, a: float, b: float) -> str:
    m = (starts >= a) & (starts < b)
    return " ".join(f"{v:5.1f}" for v in p90[m])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedule", default="0:100,3000:5,6000:100")
    ap.add_argument("--span", type=float, default=9000.0, help="seconds of arrivals")
    ap.add_argument(
        "--load",
        type=float,
        nargs="*",
        default=[0.7],
        help="rates as fractions of the degraded Λ_max (besides the default rate)",
    )
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--switch-delay", type=float, default=0.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    schedule = parse_schedule(args.schedule)
    nominal = problem.links[0].bandwidth_gbps
    window = outage_window(schedule, nominal)
    if window is None:
        raise SystemExit(f"--schedule {args.schedule!r} never drops below {nominal:g} Gbps")
    drop, up = window
    low = min(g for _, g in schedule)
    found = scenarios(problem, plan(problem), schedule=schedule)
    static = next(s.config for s in found if s.name == PRFAAS)
    homogeneous = next(s.config for s in found if s.name == HOMOGENEOUS)
    degraded = plan(replace(problem, links=(replace(problem.links[0], bandwidth_gbps=low),)))
    slo = problem.slo.ttft_s
    w = problem.workload
    rates = [("prfaas simulate's default", common_rate(problem, found))] + [
        (f"{x:g} × Λ_max at {low:g} Gbps", x * degraded.throughput_rps) for x in args.load
    ]
    print(
        f"case study, link {nominal:g} → {low:g} Gbps at {drop:g} s, back at {up:g} s; "
        f"SLO P90 TTFT {slo:g} s; re-plan every {args.interval:g} s, switch delay "
        f"{args.switch_delay:g} s; planned Λ_max {found[0].planned_rps:.2f} req/s at "
        f"{nominal:g} Gbps, {degraded.throughput_rps:.2f} at {low:g} Gbps"
    )
    for label, rate in rates:
        stream = synthetic_stream(
            int(rate * args.span), rate, w.input_length, w.output_length, seed=args.seed
        )
        wall = time.perf_counter()
        spec = OnlineSpec(solver_replan(problem), args.interval, args.switch_delay)
        online = simulate_online(static, stream, spec, seed=args.seed)
        runs: list[tuple[str, SimResult]] = [
            ("prfaas-pd, online re-plan", online.result),
            ("prfaas-pd, plan fixed", simulate(static, stream, seed=args.seed)),
            ("homogeneous-pd", simulate(homogeneous, stream, seed=args.seed)),
        ]
        wall = time.perf_counter() - wall
        print(f"\n{label}: {rate:.3g} req/s, {len(stream):,} requests ({wall:.1f} s to simulate)")
        for c in online.changes:
            frm = "decode" if c.to == "prefill" else "prefill"
            print(
                f"  role change asked at {c.asked_s:7.1f} s: instance {c.instance} {frm} → "
                f"{c.to}, drained {c.drained_s - c.asked_s:5.1f} s later, serving from "
                f"{c.joined_s:7.1f} s"
            )
        print(f"  roles follow the re-plan {settled_s(online, drop, up):.1f} s after the drop")
        head = f"  {'configuration':<28}{'before':>9}{'during':>9}{'after':>9}"
        print(f"{head}  windows over SLO (of outage)  recovery")
        n_out = int((up - drop) // args.window)
        for name, res in runs:
            before, during, after = phase_p90(res, drop, up)
            starts, p90 = windowed_p90(res, args.window)
            inside = (starts >= drop) & (starts + args.window <= up)
            over = int(np.sum(~(p90[inside] <= slo)))
            rec = recovery_s(res, slo, drop, up, args.window)
            print(
                f"  {name:<28}{before:8.2f}s{during:8.2f}s{after:8.2f}s"
                f"  {over:>4} of {n_out:<22}{'never' if math.isinf(rec) else f'{rec:.0f} s':>8}"
            )
        print(f"  P90 TTFT per {args.window:g} s window (s), from {drop - 2 * args.window:g} s:")
        for name, res in runs:
            starts, p90 = windowed_p90(res, args.window)
            a = drop - 2 * args.window
            print(f"    {name:<28}{_series(starts, p90, a, a + 14 * args.window)}")
        print(f"  ... and from {up - 2 * args.window:g} s (the link returns at {up:g} s):")
        for name, res in runs:
            starts, p90 = windowed_p90(res, args.window)
            a = up - 2 * args.window
            print(f"    {name:<28}{_series(starts, p90, a, a + 8 * args.window)}")


if __name__ == "__main__":
    main()
