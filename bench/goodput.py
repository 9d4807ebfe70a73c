"""Goodput of the prfaas router against vllm-router and homogeneous PD on an emulated cluster.

The case study (``crds/samples/case-study.yaml``: 4 PrfaaS H200 prefill instances in ``dc-a``,
3 PD-P and 5 PD-D H20 instances in ``dc-b``, a 100 Gbps link) runs as *emulated engines*
(``prfaas.engine.router.emulation`` behind ``FakeEngine``): each takes the plan's latency-model
time for its prefill batch and decode steps, and a decode pulls the request's real KV size
(× ``--byte-scale``) from the prefill engine over TCP. ``dc-a`` and ``dc-b`` are two network
namespaces joined by a ``tc tbf``-shaped veth (``prfaas.engine.local.netns``), so KV from the
PrfaaS cluster crosses the shaped link and KV from PD-P stays inside ``dc-b``.

Time runs ``--time-scale`` times faster than planned and bytes are ``--byte-scale`` of the
planned ones; the link is shaped at ``100 Gbps × time-scale × byte-scale``, so the ratio of KV
transfer time to prefill time is the planned one. Every number printed is in planned units.

One Poisson trace with the case study's lengths (input lognormal, output 1024) is replayed at
several loads through:

* ``prfaas``: the prfaas router with the plan (``t``, link, PD-P and PrfaaS pools);
* ``vllm-router cache_aware`` / ``round_robin``: vllm-router's PD mode on the same engines, every
  prefill to the prefill pool (PrfaaS + PD-P), decode on PD-D;
* ``homogeneous-pd``: the planner's homogeneous baseline (the same GPU count of H20 as one PD
  cluster, its P/D split), behind the prfaas router with no link.

Printed per system and load: SLO attainment (TTFT and TPOT both met), goodput (requests/s
meeting the SLO), P50/P90 TTFT and TPOT, link utilisation; then ratios to each peer and
``prfaas simulate``'s prediction of the same trace (``planner.sim.simulate`` on the scenario's
``SimConfig``) beside the measurement, with the range of simulated P90 TTFT when the requests
that share an arrival instant (a coarse trace's bursts) come in other orders (``--orderings``):
the router takes them in the order their connections land. Needs root (network namespaces)::

    flock /tmp/prfaas-e2e.lock python -P bench/goodput.py
    flock /tmp/prfaas-e2e.lock python -P bench/goodput.py \
        --trace bench/data/mooncake-conversation-30min.jsonl.xz

``--trace FILE`` replays a trace instead (``planner.sim.traces``: its lengths, arrival pattern
and block chains, time-scaled to each load) against the case study planned from that trace
(``prfaas plan --trace``: empirical input and uncached lengths). Prompts share text exactly
where their chains share blocks (each block's text is made from its id; a run's tag starts
every prompt, so runs never hit each other's caches), so the routers' and engines' prefix
caches see the trace's reuse; the rest of a prompt is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
ENGINE_PORT = 8100
PRFAAS = "prfaas"
VR_CACHE = "vllm-router cache_aware"
VR_RR = "vllm-router round_robin"
HOMOG = "homogeneous-pd"


# ---------------------------------------------------------------------- the case study
@dataclass(slots=True)
class CaseStudy:
    problem: Any
    plan: Any
    scenarios: dict[str, Any]
    """Scenario name (``prfaas-pd``, ``homogeneous-pd``) → ``Scenario``."""


def load_case(manifest: Path, trace_file: Path | None = None, stream: Any = None) -> CaseStudy:
    from prfaas.operator.api.manifests import read_manifests
    from prfaas.operator.api.translate import problems_from_manifests
    from prfaas.operator.cli.common import plan_from_trace
    from prfaas.planner.sim.scenarios import scenarios
    from prfaas.planner.solver import plan

    m = read_manifests([manifest])
    if m.problems:
        raise SystemExit(f"{manifest}: " + "; ".join(map(str, m.problems)))
    problem = problems_from_manifests(m.resources)[0]
    if trace_file is not None:
        problem = plan_from_trace([problem], trace_file, stream)[0]
    planned = plan(problem)
    if not planned.feasible:
        raise SystemExit(f"{manifest}: the plan is infeasible: {planned.reason}")
    found = {s.name: s for s in scenarios(problem, planned)}
    return CaseStudy(problem, planned, found)


def timing_of(case: CaseStudy, scenario: str, pool: str, args: argparse.Namespace) -> Any:
    from prfaas.engine.router.emulation import EmulatedTiming, Scale

    cfg = case.scenarios[scenario].config
    scale = Scale(args.time_scale, args.byte_scale)
    common = {
        "scale": scale,
        "kv_bytes_per_token": cfg.kv_bytes_per_token,
        "kv_fixed_bytes": cfg.kv_fixed_bytes,
        "block_tokens": cfg.block_tokens,
        "emit_interval_s": args.emit_interval,
    }
    if cfg.decode is not None and cfg.decode.name == pool:
        return EmulatedTiming(cfg.decode.latency, max_batch=cfg.decode.max_batch, **common)
    for p in cfg.prefill:
        if p.name == pool:
            if p.pipeline_stages != 1:
                raise SystemExit(f"{pool}: pipeline-parallel prefill is not emulated")
            return EmulatedTiming(
                p.latency, token_budget=p.token_budget, cache_blocks=p.cache_blocks, **common
            )
    raise SystemExit(f"scenario {scenario} has no pool {pool!r}")


# ---------------------------------------------------------------------- engine host (child)
async def serve_engines(spec_path: Path) -> None:
    """Inside one namespace: start the spec's emulated engines, write the ready file, wait."""
    from prfaas.engine.router.emulation import EngineEmulation
    from prfaas.engine.router.fakes import FakeEngine

    spec = json.loads(spec_path.read_text())
    args = argparse.Namespace(**spec["scale"])
    trace_file = Path(spec["trace"]) if spec.get("trace") else None
    if trace_file is not None:
        from prfaas.planner.sim.traces import load_trace

        case = load_case(Path(spec["manifest"]), trace_file, load_trace(trace_file))
    else:
        case = load_case(Path(spec["manifest"]))
    engines = []
    for e in spec["engines"]:
        timing = timing_of(case, spec["scenario"], e["pool"], args)
        em = EngineEmulation(timing, kv_host="0.0.0.0", kv_advertise=spec["kv_advertise"])
        engines.append(
            FakeEngine(e["role"], name=e["name"], host="0.0.0.0", port=e["port"], record=False,
                       emulation=em)
        )
    for eng in engines:
        await eng.start()
    Path(spec["ready"]).write_text("ready")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for eng in engines:
        await eng.stop()


# ---------------------------------------------------------------------- the cluster (parent)
@dataclass(slots=True)
class Layout:
    """Engines of one system: URLs as the host reaches them, by pool."""

    prefill: dict[str, list[str]] = field(default_factory=dict)
    decode: list[str] = field(default_factory=list)
    procs: list[Any] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [u for us in self.prefill.values() for u in us] + self.decode


def start_engines(
    case: CaseStudy,
    scenario: str,
    net: Any,
    args: argparse.Namespace,
    tmp: Path,
) -> Layout:
    from prfaas.engine.local.processes import spawn, wait_healthy

    cfg = case.scenarios[scenario].config
    home = cfg.decode.datacenter
    by_dc: dict[str, list[dict[str, Any]]] = {}
    out = Layout()
    dcs = {net.prefill.datacenter: net.prefill, net.decode.datacenter: net.decode}
    pools = [(p.name, p.datacenter, "prefill", p.instances) for p in cfg.prefill]
    pools.append((cfg.decode.name, home, "decode", cfg.decode.instances))
    for pool, dc, role, n in pools:
        if dc not in dcs:
            raise SystemExit(f"pool {pool} is in {dc}, which the emulated network lacks")
        entries = by_dc.setdefault(dc, [])
        for i in range(n):
            port = ENGINE_PORT + len(entries)
            entries.append({"name": f"{pool}-{i}", "pool": pool, "role": role, "port": port})
            url = f"http://{dcs[dc].access_address}:{port}"
            if role == "decode":
                out.decode.append(url)
            else:
                out.prefill.setdefault(pool, []).append(url)
    env = dict(os.environ)
    for dc, entries in by_dc.items():
        ns = dcs[dc]
        ready = tmp / f"{scenario}-{dc}.ready"
        spec = {
            "manifest": str(args.manifest),
            "trace": None if args.trace is None else str(args.trace),
            "scenario": scenario,
            "kv_advertise": ns.link_address if dc != home else "127.0.0.1",
            "engines": entries,
            "ready": str(ready),
            "scale": {
                "time_scale": args.time_scale,
                "byte_scale": args.byte_scale,
                "emit_interval": args.emit_interval,
            },
        }
        spec_path = tmp / f"{scenario}-{dc}.json"
        spec_path.write_text(json.dumps(spec))
        argv = [*ns.exec_prefix(), sys.executable, "-P", str(Path(__file__).resolve()),
                "--serve-engines", str(spec_path)]
        out.procs.append(spawn(f"engines-{scenario}-{dc}", argv, env, tmp))
    for p in out.procs:
        deadline = time.monotonic() + 120
        ready = tmp / f"{p.name.removeprefix('engines-')}.ready"
        while not ready.exists():
            if not p.alive() or time.monotonic() > deadline:
                raise SystemExit(f"{p.name} did not start; log {p.log_path}:\n{p.log_tail()}")
            time.sleep(0.2)
    for url in out.urls:
        wait_healthy(url, out.procs, timeout_s=60)
    return out


def prfaas_router_config(
    case: CaseStudy, scenario: str, layout: Layout, args: argparse.Namespace
) -> Any:
    from prfaas.engine.router.config import (
        ControllerSettings,
        DatacenterEndpoints,
        LinkSettings,
        RouterConfig,
        Timeouts,
    )
    from prfaas.engine.router.emulation import Scale

    cfg = case.scenarios[scenario].config
    scale = Scale(args.time_scale, args.byte_scale)
    home = cfg.decode.datacenter
    # The router models each engine's prefix cache at the engine's own capacity: a prefill
    # engine's is the scenario's ``cache_blocks`` (``timing_of``), an emulated decode keeps none.
    dcs: dict[str, dict[str, Any]] = {
        home: {"prefill": [], "decode": layout.decode, "cache_blocks": {"decode": 0}}
    }
    for p in cfg.prefill:
        eps = dcs.setdefault(p.datacenter, {"prefill": [], "decode": [], "cache_blocks": {}})
        eps["prefill"] += layout.prefill[p.name]
        eps["cache_blocks"]["prefill"] = p.cache_blocks
    links = {
        ln.from_dc: LinkSettings(
            name=ln.name,
            capacity_gbps=scale.wire_bps(ln.capacity_gbps * 1e9) / 1e9,
            headroom=cfg.routing.headroom,
        )
        for ln in cfg.links
    }
    r = cfg.routing
    return RouterConfig(
        model=case.plan.model,
        local_datacenter=home,
        datacenters={dc: DatacenterEndpoints(**p) for dc, p in dcs.items()},
        links=links,
        threshold_tokens=r.threshold_tokens,
        kv_bytes_per_token=cfg.kv_bytes_per_token * args.byte_scale,
        kv_fixed_bytes=cfg.kv_fixed_bytes * args.byte_scale,
        block_size=cfg.block_tokens,
        timeouts=Timeouts(prefill_s=600, decode_s=900, first_byte_s=600),
        controller=ControllerSettings(
            window_s=scale.wall_s(r.meter_window_s),
            interval_s=scale.wall_s(r.controller_interval_s),
        ),
    )


def start_router(
    system: str, case: CaseStudy, scenario: str, layout: Layout, args: argparse.Namespace,
    tmp: Path,
) -> Any:
    from prfaas.engine.local.processes import free_port, spawn, wait_healthy
    from prfaas.engine.router.config import dump_router_config

    port = free_port()
    if system in (PRFAAS, HOMOG):
        path = tmp / f"router-{scenario}.yaml"
        path.write_text(dump_router_config(prfaas_router_config(case, scenario, layout, args)))
        argv = [sys.executable, "-P", "-m", "prfaas", "router", "--config", str(path),
                "--host", "127.0.0.1", "--port", str(port)]
    else:
        exe = Path(sys.executable).parent / "vllm-router"
        argv = [str(exe), "--vllm-pd-disaggregation"]
        for url in (u for us in layout.prefill.values() for u in us):
            argv += ["--prefill", url]
        for url in layout.decode:
            argv += ["--decode", url]
        argv += ["--policy", "cache_aware" if system == VR_CACHE else "round_robin",
                 "--kv-connector", "nixl", "--host", "127.0.0.1", "--port", str(port),
                 "--prometheus-port", str(free_port()), "--max-concurrent-requests", "4096",
                 "--queue-size", "4096", "--request-timeout-secs", "900",
                 "--log-level", "warning", "--disable-retries"]
    proc = spawn(f"router-{system.replace(' ', '-')}", argv, dict(os.environ), tmp)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, [proc], timeout_s=60)
    return proc, url


# ---------------------------------------------------------------------- load
@dataclass(slots=True)
class Sample:
    sent: float
    first: float = float("nan")
    last: float = float("nan")
    ok: bool = False


def prompt_text(stream: Any, i: int, tag: str, shared: bool) -> str:
    """Request ``i``'s prompt, one byte per token (the routers' and engines' byte tokenizer).
    ``shared``: its chain's blocks first, each block's text made from its id (equal ids, equal
    text), then text of its own; else all its own (no prefix shared with anything)."""
    n_in = int(stream.input_tokens[i])
    own = f"{i}:{tag}:"
    if not shared:
        return own + "a" * max(0, n_in - len(own))
    chains = stream.block_chains
    bt = chains.block_tokens
    parts = [tag + ":"]  # every prompt of the run starts alike, as the trace's first block
    for b in chains.chain(i):
        seg = f"<{b:x}>"
        parts.append((seg * (bt // len(seg) + 1))[:bt])
    text = "".join(parts)[:n_in]
    return text + (own * (n_in // len(own) + 1))[: n_in - len(text)]


async def replay(
    url: str, model: str, stream: Any, tag: str, wall_rate_div: float, shared: bool = False
) -> list[Sample]:
    """Send every request of ``stream`` at its (scaled) time; streamed answers."""
    import aiohttp

    n = len(stream)
    samples = [Sample(float("nan")) for _ in range(n)]
    t0 = time.monotonic() + 0.2
    timeout = aiohttp.ClientTimeout(total=900)

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        delay = t0 + float(stream.arrival_s[i]) / wall_rate_div - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        n_out = int(stream.output_tokens[i])
        body = {"model": model, "prompt": prompt_text(stream, i, tag, shared),
                "max_tokens": n_out, "stream": True}
        s = samples[i]
        s.sent = time.monotonic()
        try:
            async with session.post(url + "/v1/completions", json=body,
                                    headers={"X-Request-Id": f"{tag}-{i}"}) as resp:
                if resp.status != 200:
                    return
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        now = time.monotonic()
                        if s.first != s.first:
                            s.first = now
                        s.last = now
                s.ok = s.first == s.first
        except (aiohttp.ClientError, TimeoutError):
            return

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await asyncio.gather(*(one(i, session) for i in range(n)))
    return samples


async def fetch_records(urls: Sequence[str]) -> list[dict[str, Any]]:
    import aiohttp

    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        for u in urls:
            async with s.get(u + "/emulation/records") as r:
                out += (await r.json())["records"]
    return out


# ---------------------------------------------------------------------- results
STAGES = ("prefill queue", "prefill", "KV transfer", "decode join")


@dataclass(slots=True)
class Measured:
    system: str
    rate: float
    ttft: np.ndarray
    tpot: np.ndarray
    ok: np.ndarray
    link_util: float | None
    link_gbps: float | None
    remote_share: float | None
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    """Per request, planned seconds of each part of TTFT (from the engines' records; only
    where the router forwards the client's request id)."""
    computed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per request, the prompt tokens its prefill engine computed (the rest hit its prefix
    cache); NaN where no prefill record names it."""

    def attainment(self, ttft_s: float, tpot_s: float) -> float:
        good = self.ok & (self.ttft <= ttft_s) & (self.tpot <= tpot_s)
        return float(good.mean())


def _pct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else float("nan")


def _stages(
    records: list[dict[str, Any]], tag: str, n: int, ts: float
) -> dict[str, np.ndarray]:
    by = {(r["role"], r["request_id"]): r for r in records}
    out = {k: np.full(n, np.nan) for k in STAGES}
    for i in range(n):
        dec = by.get(("decode", f"{tag}-{i}"))
        if dec is None or dec["first_token"] is None:
            continue
        pre = by.get(("prefill", f"{tag}-{i}"), dec)
        if pre.get("prefill_start") is None:
            continue
        ready = dec["kv_end"] if dec["kv_end"] is not None else pre["prefill_end"]
        out["prefill queue"][i] = (pre["prefill_start"] - pre["arrived"]) * ts
        out["prefill"][i] = (pre["prefill_end"] - pre["prefill_start"]) * ts
        out["KV transfer"][i] = (ready - pre["prefill_end"]) * ts
        out["decode join"][i] = (dec["first_token"] - ready) * ts
    return out


def sim_stages(r: Any) -> dict[str, np.ndarray]:
    return {
        "prefill queue": r.prefill_start_s - r.prefill_queued_s,
        "prefill": r.prefill_end_s - r.prefill_start_s,
        "KV transfer": r.kv_ready_s - r.prefill_end_s,
        "decode join": r.first_token_s - r.kv_ready_s,
    }


def measure(
    system: str, rate: float, stream: Any, samples: list[Sample], records: list[dict[str, Any]],
    link_host: str | None, args: argparse.Namespace, link_gbps: float, tag: str,
) -> Measured:
    ts = args.time_scale
    sent = np.array([s.sent for s in samples])
    first = np.array([s.first for s in samples])
    last = np.array([s.last for s in samples])
    ok = np.array([s.ok for s in samples])
    out_tok = np.asarray(stream.output_tokens, dtype=float)
    ttft = (first - sent) * ts
    tpot = np.where(out_tok > 1, (last - first) * ts / np.maximum(out_tok - 1, 1), 0.0)
    ttft[~ok], tpot[~ok] = np.inf, np.inf
    util = gbps = share = None
    if link_host is not None:
        start, end = float(np.nanmin(sent)), float(np.nanmax(last))
        pulls = [r for r in records if r["role"] == "decode" and r["kv_start"] is not None
                 and start <= r["arrived"] <= end]
        remote = [r for r in pulls if r["kv_from"] == link_host]
        wire = sum(r["kv_bytes"] for r in remote)
        wire_bps = 8 * wire / max(end - start, 1e-9)
        planned_bps = wire_bps / (ts * args.byte_scale)
        gbps = planned_bps / 1e9
        util = gbps / link_gbps
        share = len(remote) / max(len(samples), 1)
    stages = _stages(records, tag, len(samples), ts)
    computed = np.full(len(samples), np.nan)
    for r in records:
        if r["role"] == "prefill" and r["request_id"].startswith(f"{tag}-"):
            computed[int(r["request_id"].rsplit("-", 1)[1])] = r["uncached_tokens"]
    return Measured(system, rate, ttft, tpot, ok, util, gbps, share, stages, computed)


def repeated(stream: Any, n: int) -> Any:
    """``stream`` followed by copies of itself (shifted past its last arrival, same chains)
    until it holds ``n`` requests at least."""
    from prfaas.planner.routing.prefix import Chains
    from prfaas.planner.sim.arrivals import RequestStream

    k = max(1, math.ceil(n / len(stream)))
    if k == 1:
        return stream
    span = float(stream.arrival_s[-1]) + float(np.mean(np.diff(stream.arrival_s)))
    c = stream.block_chains
    lens = np.tile(c.lengths(), k)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return RequestStream(
        np.concatenate([stream.arrival_s + j * span for j in range(k)]),
        np.tile(stream.input_tokens, k),
        np.tile(stream.output_tokens, k),
        np.tile(stream.prefix_id, k),
        Chains(np.tile(c.ids, k), offsets, c.block_tokens),
    )


def trace(base: Any, rate: float, duration: float) -> Any:
    """The common trace at ``rate``: its arrivals in the first ``duration`` planned seconds."""
    stream = base.scaled(rate)
    n = int(np.searchsorted(stream.arrival_s, duration, side="right"))
    if n >= len(stream):
        raise SystemExit("internal: the base trace is too short for this duration")
    return stream.head(max(n, 1))


def dump(
    out: Path, tag: str, system: str, rate: float, samples: list[Sample],
    records: list[dict[str, Any]],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "system": system,
        "rate": rate,
        "samples": [[s.sent, s.first, s.last, s.ok] for s in samples],
        "records": records,
    }
    (out / f"{tag}.json").write_text(json.dumps(data))


def predict(case: CaseStudy, scenario: str, stream: Any, args: argparse.Namespace) -> Any:
    from prfaas.planner.sim.simulator import simulate

    return simulate(case.scenarios[scenario].config, stream, seed=args.seed)


def reordered(stream: Any, seed: int) -> Any:
    """``stream`` with the requests that share an arrival instant in a random order. A trace's
    timestamps may be coarse (Mooncake's conversation trace: every 3 s, ~10 requests at once):
    the router takes such requests in whatever order their connections land, the simulator in
    trace order, and the order decides who queues behind whom."""
    from prfaas.planner.sim.arrivals import RequestStream

    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(stream)), stream.arrival_s))
    return RequestStream(
        stream.arrival_s,
        stream.input_tokens[order],
        stream.output_tokens[order],
        stream.prefix_id[order],
        stream.block_chains.take(order),
    )


def order_band(
    case: CaseStudy, scenario: str, stream: Any, args: argparse.Namespace
) -> tuple[float, float] | None:
    """The lowest and highest simulated P90 TTFT over ``args.orderings`` random orders of the
    same-instant arrivals (``reordered``); ``None`` when no two requests share an instant."""
    if args.orderings < 1 or not np.any(np.diff(stream.arrival_s) == 0):
        return None
    p90 = [_pct(predict(case, scenario, reordered(stream, k + 1), args).ttft, 90)
           for k in range(args.orderings)]
    return min(p90), max(p90)


# ---------------------------------------------------------------------- main
def _fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}f}{unit}"


async def run_bench(args: argparse.Namespace) -> None:
    from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin
    from prfaas.engine.router.emulation import Scale
    from prfaas.planner.sim.arrivals import synthetic_stream

    if not have_net_admin():
        raise SystemExit("bench/goodput.py needs root (network namespaces and tc); run it as root")
    t_start = time.monotonic()
    loaded = None
    if args.trace is not None:
        from prfaas.planner.sim.traces import load_trace

        loaded = load_trace(args.trace)
        if len(loaded) < 2 or loaded.rate <= 0:
            raise SystemExit(f"{args.trace}: needs at least two requests over a positive span")
    case = load_case(args.manifest, args.trace, loaded)
    prob, plan = case.problem, case.plan
    slo_ttft, slo_tpot, target = prob.slo.ttft_s, prob.slo.tpot_s, prob.slo.attainment
    cfg = case.scenarios["prfaas-pd"].config
    link = cfg.links[0]
    scale = Scale(args.time_scale, args.byte_scale)
    lam = case.scenarios["prfaas-pd"].planned_rps
    loads = [float(x) for x in args.loads.split(",")]
    w = prob.workload
    most = math.ceil(max(loads) * lam * args.duration * 1.5) + 50
    if loaded is None:
        base = synthetic_stream(most, 1.0, w.input_length, w.output_length, seed=args.seed)
    else:  # the trace at 1 req/s, repeated (later copies after the last arrival) if too short
        base = repeated(loaded.scaled(1.0 / loaded.rate), most)
        print(f"trace {args.trace}: {len(loaded):,} requests at {loaded.rate:.2f} req/s, "
              f"mean input {float(np.mean(loaded.input_tokens)):,.0f} tokens, "
              f"{float(loaded.block_chains.lengths().mean()):.1f} chain blocks per request")
    print(
        f"case study {args.manifest.name}: plan t = {plan.threshold_tokens:,.0f} tokens, "
        f"Λ_max {lam:.2f} req/s; SLO TTFT ≤ {slo_ttft:g} s, TPOT ≤ {slo_tpot * 1e3:g} ms, "
        f"{target:.0%} attainment"
    )
    wire_mbps = scale.wire_bps(link.capacity_gbps * 1e9) / 1e6
    print(
        f"emulation: time ×{args.time_scale:g} faster, bytes ×{args.byte_scale:g}; link "
        f"{link.capacity_gbps:g} Gbps planned → tbf {wire_mbps:.0f} Mbit/s; "
        f"{args.duration:g} s of arrivals per run, loads {loads} × Λ_max",
        flush=True,
    )
    systems = [s for s in (PRFAAS, VR_CACHE, VR_RR, HOMOG) if s in args.systems]
    vr = Path(sys.executable).parent / "vllm-router"
    if not vr.exists() and any(s.startswith("vllm-router") for s in systems):
        print("vllm-router is not installed (pip install 'vllm-router>=0.1.17'); skipped")
        systems = [s for s in systems if not s.startswith("vllm-router")]
    results: dict[str, list[Measured]] = {s: [] for s in systems}
    tmp = Path(tempfile.mkdtemp(prefix="prfaas-goodput-"))
    net = TwoDatacenterNet(link.from_dc, link.to_dc, scale.wire_bps(link.capacity_gbps * 1e9))
    net.open()
    procs: list[Any] = []
    try:
        groups = [("prfaas-pd", [s for s in systems if s != HOMOG]),
                  ("homogeneous-pd", [s for s in systems if s == HOMOG])]
        for scenario, members in groups:
            if not members:
                continue
            layout = start_engines(case, scenario, net, args, tmp)
            procs += layout.procs
            link_host = net.prefill.link_address if scenario == "prfaas-pd" else None
            for system in members:
                router, url = start_router(system, case, scenario, layout, args, tmp)
                procs.append(router)
                try:
                    for k, load in enumerate(loads):
                        rate = load * lam
                        stream = trace(base, rate, args.duration)
                        tag = f"{system.split()[-1]}-{k}"
                        t0 = time.monotonic()
                        samples = await replay(url, plan.model, stream, tag,
                                               args.time_scale, shared=loaded is not None)
                        records = await fetch_records(layout.urls)
                        m = measure(system, rate, stream, samples, records, link_host, args,
                                    link.capacity_gbps, tag)
                        results[system].append(m)
                        if args.dump is not None:
                            dump(args.dump, tag, system, rate, samples, records)
                        print(
                            f"  {system:26s} {rate:5.2f} req/s: attainment "
                            f"{m.attainment(slo_ttft, slo_tpot):6.1%}  TTFT p90 "
                            f"{_fmt(_pct(m.ttft, 90), ' s')}  ({time.monotonic() - t0:.0f} s wall)",
                            flush=True,
                        )
                finally:
                    router.stop()
                    procs.remove(router)
            for p in layout.procs:
                p.stop()
                procs.remove(p)
    finally:
        for p in procs:
            p.stop()
        net.close()
    report(case, results, base, loads, lam, args)
    print(f"(wall time {time.monotonic() - t_start:.0f} s; logs in {tmp})")


def report(
    case: CaseStudy, results: dict[str, list[Measured]], base: Any, loads: list[float],
    lam: float, args: argparse.Namespace,
) -> None:
    prob = case.problem
    slo_ttft, slo_tpot, target = prob.slo.ttft_s, prob.slo.tpot_s, prob.slo.attainment
    sim_of = {PRFAAS: "prfaas-pd", HOMOG: "homogeneous-pd"}
    print()
    print("system                      rate   attain  goodput  TTFT p50/p90 (s)   TPOT p50/p90 (ms)"
          "  link util (Gbps)   | simulated: attain  TTFT p50/p90    TPOT p90  link Gbps")
    sims: dict[tuple[str, float], Any] = {}
    for system, ms in results.items():
        for m in ms:
            att = m.attainment(slo_ttft, slo_tpot)
            line = (
                f"{system:26s} {m.rate:5.2f}  {att:6.1%}  {att * m.rate:6.2f}   "
                f"{_fmt(_pct(m.ttft, 50))} / {_fmt(_pct(m.ttft, 90)):>6s}     "
                f"{_fmt(_pct(m.tpot, 50) * 1e3, '', 1)} / {_fmt(_pct(m.tpot, 90) * 1e3, '', 1):>5s}"
                f"      {_fmt(m.link_util and m.link_util * 100, '%', 1):>6s} "
                f"({_fmt(m.link_gbps)})"
            )
            if system in sim_of:
                r = predict(case, sim_of[system], trace(base, m.rate, args.duration), args)
                sims[(system, m.rate)] = r
                egress = [
                    8 * float(np.sum(b)) / max(r.end_s - float(r.arrival_s[0]), 1e-9) / 1e9
                    for _, b in r.offered.values()
                ]
                line += (
                    f"   | {r.attainment(slo_ttft, slo_tpot):6.1%}  "
                    f"{_fmt(_pct(r.ttft, 50))} / {_fmt(_pct(r.ttft, 90)):>6s}  "
                    f"{_fmt(_pct(r.tpot, 90) * 1e3, ' ms', 1):>8s}  "
                    f"{_fmt(egress[0] if egress else None)}"
                )
            print(line)
    print()
    best: dict[str, float] = {}
    for system, ms in results.items():
        meeting = [m.rate for m in ms if m.attainment(slo_ttft, slo_tpot) >= target]
        best[system] = max(meeting) if meeting else 0.0
        print(f"goodput {system:26s}: highest load with ≥ {target:.0%} attainment "
              f"{best[system]:.2f} req/s" + ("" if meeting else " (none of the loads tried)"))
    if PRFAAS in results:
        ours = results[PRFAAS]
        at = best[PRFAAS]
        ref = next((m for m in ours if m.rate == at), None)
        for peer in (VR_CACHE, VR_RR, HOMOG):
            if peer not in results:
                continue
            ratio = best[PRFAAS] / best[peer] if best[peer] > 0 else float("inf")
            line = f"prfaas / {peer}: max-load goodput {_fmt(ratio, '×')}"
            if ref is not None:
                pm = next((m for m in results[peer] if m.rate == at), None)
                if pm is not None:
                    g_ours = ref.attainment(slo_ttft, slo_tpot) * at
                    g_peer = pm.attainment(slo_ttft, slo_tpot) * at
                    line += (
                        f"; at {at:.2f} req/s (prfaas ≥ {target:.0%}): SLO goodput "
                        f"{g_ours:.2f} vs {g_peer:.2f} req/s = "
                        f"{_fmt(g_ours / g_peer if g_peer > 0 else float('inf'), '×')}"
                    )
            print(line)
    print()
    for (system, rate), r in sims.items():
        m = next(x for x in results[system] if x.rate == rate)
        meas = _pct(m.ttft, 90)
        pred = _pct(r.ttft, 90)
        err = (pred - meas) / meas if np.isfinite(meas) and meas > 0 else float("nan")
        print(f"simulator vs emulation, {system} at {rate:.2f} req/s: P90 TTFT predicted "
              f"{_fmt(pred, ' s')} vs measured {_fmt(meas, ' s')} ({_fmt(err * 100, '%', 1)})")
        seen = np.isfinite(m.computed)
        if seen.any():
            emu, sim = float(m.computed[seen].sum()), float(r.uncached_tokens[seen].sum())
            print(f"    prefill tokens computed (prefix-cache misses and new text), "
                  f"{int(seen.sum())} requests: emulated {emu:,.0f} vs simulated {sim:,.0f} "
                  f"({_fmt((emu / sim - 1) * 100 if sim else float('nan'), '%', 1)})")
        band = order_band(case, sim_of[system], trace(base, rate, args.duration), args)
        if band is not None:
            lo, hi = band
            where = "inside" if lo <= meas <= hi else "outside"
            print(f"    same-instant arrivals in {args.orderings} other orders: predicted P90 "
                  f"{_fmt(lo)}–{_fmt(hi)} s (measured {where}; "
                  f"{_fmt((lo - meas) / meas * 100, '%', 1)} to "
                  f"{_fmt((hi - meas) / meas * 100, '%', 1)})")
        if m.stages and np.isfinite(m.stages["prefill"]).any():
            ss = sim_stages(r)
            parts = "; ".join(
                f"{k} {_fmt(_pct(m.stages[k], 50))}/{_fmt(_pct(m.stages[k], 90))} vs "
                f"{_fmt(_pct(ss[k], 50))}/{_fmt(_pct(ss[k], 90))}"
                for k in STAGES
            )
            print(f"    TTFT parts p50/p90 s, emulated vs simulated: {parts}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=ROOT / "crds/samples/case-study.yaml")
    ap.add_argument("--time-scale", type=float, default=10.0,
                    help="emulated time runs this many times faster than planned")
    ap.add_argument("--byte-scale", type=float, default=1e-3,
                    help="KV bytes on the wire = planned bytes × this (link shaped to match)")
    ap.add_argument("--emit-interval", type=float, default=0.2,
                    help="wall seconds between streamed token chunks (first/last: exact)")
    ap.add_argument("--duration", type=float, default=200.0,
                    help="planned seconds of arrivals per run (requests = rate × duration)")
    ap.add_argument("--loads", default="0.3,0.55,0.8,0.95",
                    help="arrival rates as fractions of the plan's Λ_max")
    ap.add_argument("--dump", type=Path, help="write every run's samples and engine records here")
    ap.add_argument("--systems", default=f"{PRFAAS},{VR_CACHE},{VR_RR},{HOMOG}",
                    help="comma-separated subset of the systems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--orderings", type=int, default=8,
                    help="also simulate this many random orders of the requests that share an "
                         "arrival instant (a coarse trace's bursts), and print the P90 range")
    ap.add_argument("--trace", type=Path,
                    help="replay this trace (Mooncake JSONL, CSV/JSONL; .xz ok) with its prefix "
                         "sharing, against the case study planned from it")
    ap.add_argument("--serve-engines", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",")]
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    if args.serve_engines:
        run(serve_engines(args.serve_engines))
        return
    with contextlib.suppress(KeyboardInterrupt):
        run(run_bench(args))


if __name__ == "__main__":
    main()
