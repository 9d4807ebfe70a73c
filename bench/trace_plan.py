"""The case study planned from a trace's scalar hit rate vs from its uncached-length distribution
(prints numbers side by side, asserts nothing).

    .venv/bin/python -P bench/trace_plan.py [--trace PATH]   # default: the committed subset

Both plans take the trace's input/output lengths and arrival rate (``plan --trace``). *scalar*
scales every input length by ``1 − h`` with ``h`` the trace's own token prefix-hit ratio (what
``prefixCacheHitRate`` gives a new user); *trace* uses the empirical uncached lengths (an
unbounded cache shared by all instances). Printed per plan: threshold ``t``, offload fraction
``p``, ``l_long``/``l_short``, the PrfaaS cluster's load (offloaded requests/s and uncached
prefill tokens/s at the trace's rate, instances sized for it), link egress, and the share of
the trace's real requests and uncached prefill tokens above each plan's ``t``, with the real
offloaded tokens/s and egress that ``t`` gives on the trace (what the plan should have
predicted).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "crds" / "samples" / "case-study.yaml"
SUBSET = ROOT / "bench" / "data" / "mooncake-conversation-30min.jsonl.xz"


def main() -> None:
    from prfaas.operator.api.manifests import read_manifests
    from prfaas.operator.api.translate import problems_from_manifests
    from prfaas.planner.sim.traces import load_trace
    from prfaas.planner.solver import plan
    from prfaas.planner.trace_workload import shared_cache_uncached, trace_workload

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", type=Path, default=SUBSET)
    args = ap.parse_args()
    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    stream = load_trace(args.trace)
    uncached = shared_cache_uncached(stream)
    hit = 1.0 - float(uncached.sum()) / float(stream.input_tokens.sum())
    from_trace = trace_workload(stream, uncached, problem.workload)
    scalar = replace(from_trace, uncached_length=None, prefix_cache_hit_rate=hit)
    rate = from_trace.requests_per_second
    assert rate is not None
    print(
        f"{args.trace.name}: {len(stream)} requests at {rate:.2f} req/s; token prefix-hit "
        f"ratio h = {hit:.3f}"
    )
    rows = []
    for name, w in (("scalar h", scalar), ("trace", from_trace)):
        pl = plan(replace(problem, workload=w))
        if not pl.feasible:
            print(f"{name}: infeasible — {pl.reason}")
            continue
        t = pl.threshold_tokens if pl.threshold_tokens is not None else float("inf")
        p = pl.offload_fraction
        prfaas = sum(
            c.instances for c in pl.clusters if c.role == "prefill" and c.name == "prfaas-h200"
        )
        above = uncached > t
        real_share = float(uncached[above].sum()) / float(uncached.sum())
        kv = pl.kv_bytes_per_token * uncached[above].astype(float) + pl.kv_fixed_bytes
        real_egress = 8.0 * rate * float(kv.sum()) / len(stream) / 1e9
        real_tok = rate * float(uncached[above].sum()) / len(stream)
        egress = sum(lk.egress_gbps for lk in pl.links)
        rows.append(
            (
                name,
                t,
                p,
                pl.l_long,
                pl.l_short,
                p * rate,
                p * rate * pl.l_long,
                prfaas,
                egress,
                float(np.mean(above)),
                real_share,
                real_tok,
                real_egress,
            )
        )
    print(
        f"{'plan':<9} {'t':>8} {'p':>6} {'l_long':>8} {'l_short':>8} {'PrfaaS req/s':>12} "
        f"{'PrfaaS tok/s':>12} {'PrfaaS inst':>11} {'egress Gbps':>11} "
        f"{'real req>t':>10} {'real tok>t':>10} {'real tok/s':>10} {'real Gbps':>9}"
    )
    for r in rows:
        print(
            f"{r[0]:<9} {r[1]:>8,.0f} {r[2]:>6.3f} {r[3]:>8,.0f} {r[4]:>8,.0f} {r[5]:>12.3f} "
            f"{r[6]:>12,.0f} {r[7]:>11} {r[8]:>11.2f} {r[9]:>10.1%} {r[10]:>10.1%} "
            f"{r[11]:>10,.0f} {r[12]:>9.2f}"
        )
    if len(rows) == 2:
        s, tr = rows
        print(
            f"trace / scalar: p {tr[2] / s[2]:.2f}×, PrfaaS tokens/s {tr[6] / s[6]:.2f}×, "
            f"egress {tr[8] / s[8]:.2f}×"
        )


if __name__ == "__main__":
    main()
