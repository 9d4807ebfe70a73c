"""Multi-cluster simulation benchmark: the generated 10 prefill × 20 decode plan, 100k requests.

    .venv/bin/python -P bench/multicluster_sim.py [--requests 100000] [--load 0.8]

Plans ``bench/planner.py``'s generated problem (a threshold per decode cluster, shared PrfaaS
clusters and links), then simulates the plan's configuration in one event loop: every decode
cluster's router with its own ``t``, arrivals split by the planned ``Λ_d``. Prints wall and CPU
seconds of the simulation (target: 100k requests < 30 s), events per second, and the result per
decode cluster and per link. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from prfaas.planner.sim.arrivals import synthetic_stream
from prfaas.planner.sim.scenarios import PRFAAS, scenarios
from prfaas.planner.sim.simulator import simulate
from prfaas.planner.solver import plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planner import generated  # bench/planner.py: the generated problem

TARGET_S = 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--load", type=float, default=0.8, help="rate as a fraction of Λ_max")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    problem = generated()
    wall, cpu = time.perf_counter(), time.process_time()
    pl = plan(problem)
    print(
        f"plan: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU; "
        f"Λ_max {pl.throughput_rps:.2f} req/s, {len(problem.links)} links"
    )
    (ours,) = [s for s in scenarios(problem, pl) if s.name == PRFAAS]
    cfg = ours.config
    offloading = sum(bool(c.remotes) for c in cfg.clusters)
    print(
        f"configuration: {len(cfg.clusters)} decode clusters ({offloading} offload), "
        f"{sum(p.instances for p in cfg.prefill)} prefill instances in {len(cfg.prefill)} pools, "
        f"{sum(c.decode.instances for c in cfg.clusters)} decode instances"
    )
    rate = args.load * pl.throughput_rps
    w = problem.workload
    stream = synthetic_stream(
        args.requests, rate, w.input_length, w.output_length, seed=args.seed
    )
    wall, cpu = time.perf_counter(), time.process_time()
    res = simulate(cfg, stream, seed=args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"simulate {len(res):,} requests at {rate:.1f} req/s ({args.load:g} × Λ_max): "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU (target < {TARGET_S:g} s); {res.events:,} events, "
        f"{len(res) / cpu:,.0f} requests per CPU-second"
    )
    slo = problem.slo
    rows = res.cluster_summaries(slo.ttft_s, slo.tpot_s)
    print(f"  {'cluster':10s} {'req/s':>7s} {'offload':>8s} {'t':>8s} {'TTFT P90':>9s} "
          f"{'TPOT P90':>9s} {'attain':>7s}")  # fmt: skip
    for row in rows:
        t = row["thresholdP50"]
        print(
            f"  {row['name']:10s} {row['rateRps']:7.2f} {row['offloadFraction']:8.1%} "
            f"{t if np.isfinite(t) else float('inf'):8.0f} {row['ttftP90S']:8.2f}s "
            f"{row['tpotP90S'] * 1e3:7.1f}ms {row['attainment']:7.1%}"
        )
    print(
        f"  {'all':10s} {len(res) / float(res.arrival_s[-1]):7.2f} {res.offload_fraction:8.1%} "
        f"{'':8s} {np.percentile(res.ttft, 90):8.2f}s {np.percentile(res.tpot, 90) * 1e3:7.1f}ms "
        f"{res.attainment(slo.ttft_s, slo.tpot_s):7.1%}"
    )
    used = [name for name, (t, _) in res.offered.items() if len(t)]
    egress = {name: res.mean_egress_bps(name) / 1e9 for name in used}
    planned = {lk.name: lk.egress_gbps for lk in pl.links}
    busiest = sorted(egress, key=lambda n: -egress[n])[:5]
    print(
        f"links: {len(used)} of {len(res.links)} carried KV, {sum(egress.values()):.1f} Gbps in "
        f"all (planned at Λ_max: {sum(planned.values()):.1f}); busiest: "
        + ", ".join(f"{n} {egress[n]:.2f}" for n in busiest)
    )


if __name__ == "__main__":
    main()
