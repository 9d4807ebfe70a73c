"""Simulator speed and memory on the PrfaaS case-study workload (prints numbers, asserts nothing).

    .venv/bin/python bench/simulator.py                 # 10k and 100k requests, 3 repeats
    .venv/bin/python bench/simulator.py --sizes 100000 --repeat 1 --profile
    .venv/bin/python bench/simulator.py --sizes 100000 --repeat 5 --compare   # chains' cost

``--compare`` runs each size without and with ``--chains`` in alternation (a shared host's load
then weighs on both alike) and prints the median CPU seconds of each and their ratio: the
issue-20 target is chains within 1.2x of the chain-less run. ``--against ROOT`` adds, in each
round, a chain run importing ``prfaas`` from another checkout's import root (e.g. a copy of
main with its ``build/typecheck``): a change's effect on the same host load, run by run.

Each size runs in a fresh subprocess so that its peak RSS (``resource.getrusage``) is its own.
The configuration is the case study's PrfaaS-PD plan (4×H200 PrfaaS + 3 PD-P + 5 PD-D H20
instances, 100 Gbps link, log-normal prompts, 1024 output tokens) at 0.8 × the homogeneous
baseline's Λ_max, as ``prfaas simulate`` runs it. Anchors (issue 4, same kind of 2-core
machine, matched synthetic workload, no KV transfer or links modelled): DistServe's simpy
simulator ≈ 330 req/s at 10k and ≈ 230 req/s at 100k (9.6 GB RSS); Vidur ≈ 180 req/s at 10k.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "crds" / "samples" / "case-study.yaml"
DISTSERVE = {10_000: 330.0, 100_000: 230.0}
VIDUR_10K = 180.0


def _one(n: int, profile: bool, chains: bool) -> dict[str, float]:
    from prfaas.operator.api.manifests import read_manifests
    from prfaas.operator.api.translate import problems_from_manifests
    from prfaas.planner.sim.arrivals import synthetic_stream
    from prfaas.planner.sim.scenarios import common_rate, scenarios
    from prfaas.planner.sim.simulator import simulate
    from prfaas.planner.solver import plan

    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    found = scenarios(problem, plan(problem))
    config = found[0].config
    rate = common_rate(problem, found)
    w = problem.workload
    t0 = time.perf_counter()
    stream = synthetic_stream(n, rate, w.input_length, w.output_length, seed=1)
    if chains:  # 512-token chains, each request one of n/8 conversations' prefixes
        from dataclasses import replace

        import numpy as np
        from prfaas.planner.routing.prefix import Chains

        pid = np.random.default_rng(2).integers(0, max(n // 8, 1), n)
        stream = replace(
            stream, prefix_id=pid, chains=Chains.from_prefix_ids(pid, stream.input_tokens, 512)
        )
    t1 = time.perf_counter()
    c1 = time.process_time()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile(time.process_time)  # CPU time: a shared host's waits mislead
        prof.enable()
        res = simulate(config, stream, seed=1)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    else:
        res = simulate(config, stream, seed=1)
    t2 = time.perf_counter()
    c2 = time.process_time()
    summary = res.summary(problem.slo.ttft_s, problem.slo.tpot_s)
    return {
        "requests": n,
        "rate": rate,
        "sample_s": t1 - t0,
        "simulate_s": t2 - t1,
        "cpu_s": c2 - c1,
        "events": res.events,
        "ttft_p90_s": summary["ttft"].p90,
        "chain_blocks": float(stream.block_chains.lengths().mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _run(n: int, chains: bool, root: str | None = None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--one", str(n)] + (["--chains"] if chains else [])
    env = None if root is None else {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    row: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def _compare(sizes: list[int], repeat: int, against: str | None) -> None:
    print(
        f"{'requests':>9} {'CPU s':>7} {'chains':>7} {'ratio':>6}  "
        f"(medians of {repeat}; target 1.2)"
    )
    for n in sizes:
        plain: list[float] = []
        chained: list[float] = []
        other: list[float] = []
        blocks = 0.0
        for _ in range(repeat):
            plain.append(_run(n, False)["cpu_s"])
            row = _run(n, True)
            chained.append(row["cpu_s"])
            blocks = row["chain_blocks"]
            if against is not None:
                other.append(_run(n, True, against)["cpu_s"])
        a, b = statistics.median(plain), statistics.median(chained)
        pairs = " ".join(f"{c / p:.2f}" for p, c in zip(plain, chained, strict=True))
        print(
            f"{n:>9,} {a:>7.2f} {b:>7.2f} {b / a:>6.2f}  (runs {sorted(plain)} / {sorted(chained)} "
            f"s; pairwise {pairs}; {blocks:.1f} chain blocks per request)"
        )
        if against is not None:
            c = statistics.median(other)
            diffs = " ".join(f"{x - y:+.2f}" for x, y in zip(chained, other, strict=True))
            print(
                f"{'':>9} {'':>7} {c:>7.2f} {c / a:>6.2f}  (chains importing {against}; "
                f"this tree minus it, run by run: {diffs} s)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile the (last) run")
    ap.add_argument(
        "--chains",
        action="store_true",
        help="give requests 512-token block chains (shared by conversation) and prefix caches",
    )
    ap.add_argument(
        "--compare",
        action="store_true",
        help="alternate runs without and with --chains; print median CPU seconds and the ratio",
    )
    ap.add_argument(
        "--against",
        metavar="ROOT",
        help="with --compare: also time chains importing prfaas from ROOT (another checkout)",
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.profile, args.chains)))
        return
    if args.compare:
        _compare(args.sizes, args.repeat, args.against)
        return
    print(
        f"{'requests':>9} {'sim s':>7} {'req/s':>9} {'events/s':>10} {'RSS MB':>7} "
        f"{'vs DistServe':>12} {'vs Vidur':>9}  (best of {args.repeat}; median)"
    )
    for n in args.sizes:
        rows = []
        for i in range(args.repeat):
            cmd = [sys.executable, __file__, "--one", str(n)]
            if args.chains:
                cmd.append("--chains")
            if args.profile and i == args.repeat - 1:
                cmd.append("--profile")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            if args.profile and i == args.repeat - 1:
                sys.stderr.write(out.stderr)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = min(rows, key=lambda r: r["simulate_s"])
        med = statistics.median(r["simulate_s"] for r in rows)
        rps = n / best["simulate_s"]
        anchor = DISTSERVE.get(n, DISTSERVE[100_000])
        rss = max(r["peak_rss_mb"] for r in rows)
        print(
            f"{n:>9,} {best['simulate_s']:>7.2f} {rps:>9,.0f} "
            f"{best['events'] / best['simulate_s']:>10,.0f} {rss:>7.0f} "
            f"{rps / anchor:>11.0f}× {rps / VIDUR_10K:>8.0f}×  "
            f"(median {med:.2f} s = {n / med:,.0f} req/s; CPU {best['cpu_s']:.2f} s; "
            f"sampling {best['sample_s']:.2f} s; "
            f"P90 TTFT {best['ttft_p90_s']:.2f} s at {best['rate']:.2f} req/s; "
            f"{best['chain_blocks']:.1f} chain blocks per request)"
        )


if __name__ == "__main__":
    main()
