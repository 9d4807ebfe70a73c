"""KV throughput of remote prefills over the shaped inter-DC link, against iperf3 on that link.

Needs root (two network namespaces joined by a veth pair shaped with ``tc tbf``) and iperf3
(``apt-get install -y iperf3``). For each link rate it

1. measures the link with iperf3 (server in the decode datacenter, client in the prefill one,
   so bytes flow the way KV does: dc-a → dc-b);
2. runs remote prefills: a prefill request with ``kv_transfer_params`` to the dc-a engine, then
   the decode request to the dc-b engine, which pulls the KV over NIXL (UCX over TCP). Prompts
   are distinct so no block comes from the decode engine's prefix cache;
3. reads the decode engine's NIXL counters: KV throughput = Δ ``nixl_bytes_transferred_sum`` /
   Δ ``nixl_xfer_time_seconds_sum`` (time spent in transfers), and prints it beside iperf3's.

Prints numbers only; asserts nothing about time. Usage::

    .venv/bin/python bench/kv_link.py --gbps 0.05 0.2 1 --requests 6
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin
from prfaas.engine.local.runtime import LocalRuntime, build_layout
from prfaas.engine.vllm.tinymodel import ensure_tiny_model
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.cli.local_plan import local_plan

__all__ = ["main"]

SAMPLE = Path(__file__).resolve().parents[1] / "crds" / "samples" / "local.yaml"
_PREFILL_PARAMS = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        s.value for fam in text_string_to_metric_families(text) for s in fam.samples
        if s.name == name
    )


def iperf3_gbps(net: TwoDatacenterNet, seconds: float) -> float:
    """Throughput dc-a → dc-b measured by iperf3 (Gbit/s, receiver side)."""
    server = subprocess.Popen(
        [*net.decode.exec_prefix(), "iperf3", "-s", "-1", "-B", net.decode.link_address],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        done = subprocess.run(
            [*net.prefill.exec_prefix(), "iperf3", "-c", net.decode.link_address,
             "-t", str(seconds), "-J"],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        )
    finally:
        server.kill()
        server.wait()
    return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def remote_prefills(prefill: str, decode: str, n: int, words: int, tag: str) -> dict[str, float]:
    """``n`` sequential remote prefills; returns KV bytes, transfer seconds and wall time."""
    names = ("vllm:nixl_bytes_transferred_sum", "vllm:nixl_xfer_time_seconds_sum",
             "vllm:nixl_xfer_time_seconds_count")
    before = {k: _metric(decode, k) for k in names}
    walls = []
    with httpx.Client(timeout=300) as client:
        for i in range(n):
            prompt = " ".join(f"{tag}{i}w{j} here" for j in range(words))
            body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 4, "temperature": 0,
                    "ignore_eos": True}
            t0 = time.perf_counter()
            first = client.post(prefill + "/v1/completions", json={
                **body, "max_tokens": 1, "kv_transfer_params": _PREFILL_PARAMS})
            first.raise_for_status()
            params = first.json()["kv_transfer_params"]
            second = client.post(decode + "/v1/completions",
                                 json={**body, "kv_transfer_params": params})
            second.raise_for_status()
            walls.append(time.perf_counter() - t0)
    after = {k: _metric(decode, k) for k in names}
    return {
        "bytes": after[names[0]] - before[names[0]],
        "xfer_s": after[names[1]] - before[names[1]],
        "transfers": after[names[2]] - before[names[2]],
        "wall_p50_s": statistics.median(walls),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gbps", type=float, nargs="+", default=[0.05, 0.2, 1.0],
                    help="link rates to measure (Gbit/s)")
    ap.add_argument("--requests", type=int, default=6, help="remote prefills per rate")
    ap.add_argument("--words", type=int, default=180, help="prompt length in words (~9 tokens)")
    ap.add_argument("--iperf-seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    if not have_net_admin():
        print("kv_link: needs root for network namespaces and tc", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("kv_link: iperf3 not found; apt-get install -y iperf3", file=sys.stderr)
        return 2
    plan = local_plan(load_manifests(SAMPLE))
    net = TwoDatacenterNet("dc-a", "dc-b", args.gbps[0] * 1e9).open()
    runtime = LocalRuntime(build_layout(plan, model_dir=ensure_tiny_model(), net=net), net=net)
    try:
        runtime.start(with_router=False)
        prefill = runtime.layout.engine("prefill").url
        decode = runtime.layout.engine("decode").url
        print(f"engines healthy after {max(runtime.start_seconds.values()):.1f}s "
              f"(2-core CPU, both starting at once)")
        remote_prefills(prefill, decode, 1, args.words, "warm")
        print(f"{'link Gbps':>9} {'iperf3 Gbps':>11} {'KV Gbps':>8} {'KV/iperf3':>9} "
              f"{'MB/req':>7} {'xfer ms/req':>11} {'req p50 s':>9}")
        for gbps in args.gbps:
            net.shape(gbps * 1e9)
            link = iperf3_gbps(net, args.iperf_seconds)
            kv = remote_prefills(prefill, decode, args.requests, args.words, f"g{gbps}")
            kv_gbps = 8 * kv["bytes"] / kv["xfer_s"] / 1e9 if kv["xfer_s"] else float("nan")
            n = max(kv["transfers"], 1)
            print(f"{gbps:9.3f} {link:11.3f} {kv_gbps:8.3f} {kv_gbps / link:9.2f} "
                  f"{kv['bytes'] / n / 1e6:7.2f} {1000 * kv['xfer_s'] / n:11.1f} "
                  f"{kv['wall_p50_s']:9.3f}")
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
