"""Router goodput under overload, with and without its in-flight bound (issue #11, item 3).

One decode fake engine with ``--seats`` seats and ``--service-s`` per request has a capacity of
seats / service-s requests/s. An open-loop Poisson load of 0.5× to 3× that capacity goes
through the router for ``--seconds`` at each level; goodput counts the answers that came back
200 within ``--slo-s``. Without a bound the engine's queue grows for as long as the overload
lasts, so ever more answers miss the SLO; with the plan-sized bound (2 × seats) the router
answers the excess at once with 429 + Retry-After and what it admits stays within the SLO.
Router, fake and load generator share one process and event loop (numbers are relative).

    python bench/overload.py                 # both modes, 0.5×…3×
    python bench/overload.py --seconds 4     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.service import RouterService
from prfaas.engine.router.tokenizer import ByteTokenizer


@dataclass
class Level:
    offered_rps: float
    ok_in_slo: int = 0
    ok_late: int = 0
    rejected: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    peak_in_flight: int = 0


async def _one(http: aiohttp.ClientSession, url: str, level: Level, slo_s: float) -> None:
    t0 = time.perf_counter()
    try:
        async with http.post(url, json={"prompt": "hi", "max_tokens": 1}) as r:
            await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError):
        level.failed += 1
        return
    dt = time.perf_counter() - t0
    if status == 200:
        level.latencies.append(dt)
        if dt <= slo_s:
            level.ok_in_slo += 1
        else:
            level.ok_late += 1
    elif status in (429, 503):
        level.rejected += 1
    else:
        level.failed += 1


async def _level(
    svc: RouterService, http: aiohttp.ClientSession, rps: float, seconds: float, slo_s: float
) -> Level:
    level = Level(rps)
    url = svc.url + "/v1/completions"
    rng = random.Random(11)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    next_at = start
    while next_at - start < seconds:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(http, url, level, slo_s)))
        level.peak_in_flight = max(level.peak_in_flight, svc.router.in_flight)
        next_at += rng.expovariate(rps)
    await asyncio.gather(*tasks)
    return level


async def _mode(args: argparse.Namespace, bound: int | None) -> list[Level]:
    capacity = args.seats / args.service_s
    async with FakeEngine("decode", "decode", delay_s=args.service_s, seats=args.seats) as dec:
        admission = {"max_in_flight": bound, "retry_after_s": 1.0}
        cfg = RouterConfig.model_validate(
            {
                "model": "tiny",
                "local_datacenter": "dc-b",
                "datacenters": {"dc-b": {"prefill": [], "decode": [dec.url]}},
                "max_model_len": 4096,
                "health": {"enabled": False},
                "timeouts": {"decode_s": 120.0, "first_byte_s": 120.0},
                "admission": admission,
            }
        )
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with (
            RouterService(cfg, port=0, tokenizer=ByteTokenizer()) as svc,
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        ):
            out = []
            for factor in args.loads:
                out.append(await _level(svc, http, factor * capacity, args.seconds, args.slo_s))
            return out


def _print(name: str, capacity: float, levels: list[Level], seconds: float) -> None:
    print(f"\n{name}")
    print(
        f"{'offered':>8} {'×cap':>5} {'goodput':>8} {'×cap':>5} {'late':>6} {'429/503':>8} "
        f"{'failed':>6} {'p50 s':>6} {'p99 s':>6} {'peak in-flight':>14}"
    )
    for lv in levels:
        good = lv.ok_in_slo / seconds
        lat = sorted(lv.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
        print(
            f"{lv.offered_rps:8.1f} {lv.offered_rps / capacity:5.2f} {good:8.1f} "
            f"{good / capacity:5.2f} {lv.ok_late:6d} {lv.rejected:8d} {lv.failed:6d} "
            f"{p50:6.3f} {p99:6.3f} {lv.peak_in_flight:14d}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seats", type=int, default=8, help="fake engine's concurrent requests")
    p.add_argument("--service-s", type=float, default=0.1, help="fake engine's time a request")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each load level")
    p.add_argument("--slo-s", type=float, default=1.0, help="latency that counts as goodput")
    p.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    args = p.parse_args()
    capacity = args.seats / args.service_s
    print(
        f"capacity {capacity:.0f} req/s ({args.seats} seats × {args.service_s} s); "
        f"goodput = 200 within {args.slo_s} s, per second of offered load"
    )
    unbounded = asyncio.run(_mode(args, None))
    _print("no in-flight bound (before #11)", capacity, unbounded, args.seconds)
    bound = 2 * args.seats
    bounded = asyncio.run(_mode(args, bound))
    _print(
        f"admission.maxInFlight = {bound} (2 × seats, as sized from a plan)",
        capacity,
        bounded,
        args.seconds,
    )
    last_u, last_b = unbounded[-1], bounded[-1]
    ratio = (last_b.ok_in_slo or 0) / max(1, last_u.ok_in_slo)
    print(f"\nat {args.loads[-1]:g}× capacity: goodput bounded / unbounded = {ratio:.1f}×")


if __name__ == "__main__":
    main()
