"""The case study planned from a trace's scalar hit rate vs from its uncached-length distribution
(prints numbers side by side, asserts nothing).

    .venv/bin/python -P bench/trace_plan.py [--trace PATH]   # default: the committed subset
    .venv/bin/python -P bench/trace_plan.py --sharing documents   # or conversations

Both plans take the trace's input/output lengths and arrival rate (``plan --trace``). *scalar*
scales every input length by ``1 − h`` with ``h`` the trace's own token prefix-hit ratio (what
``prefixCacheHitRate`` gives a new user); *trace* uses the empirical uncached lengths (an
unbounded cache shared by all instances). Printed per plan: threshold ``t``, offload fraction
``p``, ``l_long``/``l_short``, the PrfaaS cluster's load (offloaded requests/s and uncached
prefill tokens/s at the trace's rate, instances sized for it), link egress, and the share of
the trace's real requests and uncached prefill tokens above each plan's ``t``, with the real
offloaded tokens/s and egress that ``t`` gives on the trace (what the plan should have
predicted).

``--sharing conversations|documents`` compares instead the case study planned from a
``workload.sharing`` pattern (its messages/questions from the case study's ``inputLength``;
uncached lengths of the planner's 20,000-request sample) with the case study whose input lengths
are the sample's prompts scaled by the sample's own hit ratio (*scalar*). No rate is set, so
each plan serves its own highest rate (``throughput_rps``), which the load columns use.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    ap.add_argument("--sharing", choices=["conversations", "documents"])
    args = ap.parse_args()
    problem = problems_from_manifests(read_manifests([SAMPLE]).resources)[0]
    if args.sharing:
        label, uncached, hit, scalar, measured = _sharing_workloads(problem, args.sharing)
        fixed_rate = None
    else:
        stream = load_trace(args.trace)
        uncached = shared_cache_uncached(stream)
        hit = 1.0 - float(uncached.sum()) / float(stream.input_tokens.sum())
        measured = trace_workload(stream, uncached, problem.workload)
        scalar = replace(measured, uncached_length=None, prefix_cache_hit_rate=hit)
        fixed_rate = measured.requests_per_second
        assert fixed_rate is not None
        label = f"{args.trace.name}: {len(stream)} requests at {fixed_rate:.2f} req/s"
    print(f"{label}; token prefix-hit ratio h = {hit:.3f}")
    rows = []
    name2 = "sharing" if args.sharing else "trace"
    for name, w in (("scalar h", scalar), (name2, measured)):
        pl = plan(replace(problem, workload=w))
        if not pl.feasible:
            print(f"{name}: infeasible — {pl.reason}")
            continue
        rate = fixed_rate if fixed_rate is not None else pl.throughput_rps
        t = pl.threshold_tokens if pl.threshold_tokens is not None else float("inf")
        p = pl.offload_fraction
        prfaas = sum(
            c.instances for c in pl.clusters if c.role == "prefill" and c.name == "prfaas-h200"
        )
        above = uncached > t
        real_share = float(uncached[above].sum()) / float(uncached.sum())
        kv = pl.kv_bytes_per_token * uncached[above].astype(float) + pl.kv_fixed_bytes
        real_egress = 8.0 * rate * float(kv.sum()) / len(uncached) / 1e9
        real_tok = rate * float(uncached[above].sum()) / len(uncached)
        egress = sum(lk.egress_gbps for lk in pl.links)
        rows.append(
            (
                f"{name} {rate:.2f}/s",
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
        f"{'plan':<17} {'t':>8} {'p':>6} {'l_long':>8} {'l_short':>8} {'PrfaaS req/s':>12} "
        f"{'PrfaaS tok/s':>12} {'PrfaaS inst':>11} {'egress Gbps':>11} "
        f"{'real req>t':>10} {'real tok>t':>10} {'real tok/s':>10} {'real Gbps':>9}"
    )
    for r in rows:
        print(
            f"{r[0]:<17} {r[1]:>8,.0f} {r[2]:>6.3f} {r[3]:>8,.0f} {r[4]:>8,.0f} {r[5]:>12.3f} "
            f"{r[6]:>12,.0f} {r[7]:>11} {r[8]:>11.2f} {r[9]:>10.1%} {r[10]:>10.1%} "
            f"{r[11]:>10,.0f} {r[12]:>9.2f}"
        )
    if len(rows) == 2:
        s, tr = rows
        print(
            f"{name2} / scalar: p {tr[2] / s[2]:.2f}×, PrfaaS tokens/s {tr[6] / s[6]:.2f}×, "
            f"egress {tr[8] / s[8]:.2f}×"
        )


def _sharing_workloads(problem: Any, kind: str) -> tuple[str, Any, float, Any, Any]:
    """The case study with a sharing pattern, and its scalar twin (the sample's prompts as
    input lengths, scaled by the sample's hit ratio); the sample's uncached lengths."""
    from prfaas.planner.distributions import LogNormal, Trace
    from prfaas.planner.sharing import ConversationSharing, DocumentSharing
    from prfaas.planner.sim.arrivals import synthetic_stream
    from prfaas.planner.trace_workload import SHARING_SAMPLE, with_sharing

    w = problem.workload
    if kind == "conversations":
        sharing: Any = ConversationSharing(concurrent=32, turns=4)
    else:
        sharing = DocumentSharing(documents=200, length=LogNormal(9.9, 1.0, 128.0, 65536.0))
    shared = with_sharing(w, sharing)
    sample = shared.sharing_sample
    assert sample is not None
    stream = synthetic_stream(
        SHARING_SAMPLE, 1.0, w.input_length, w.output_length, seed=0, sharing=sharing
    )
    prompts = Trace(tuple(stream.input_tokens.astype(float).tolist()))
    scalar = replace(w, input_length=prompts, prefix_cache_hit_rate=sample.hit_ratio)
    uncached = np.asarray(sample.uncached.values)  # sorted; the columns need no order
    return f"case study, {sample.note}", uncached, sample.hit_ratio, scalar, shared


if __name__ == "__main__":
    main()
