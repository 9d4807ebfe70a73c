"""``prfaas up``'s planning and process handling, without starting vLLM."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin, leftovers, tbf_args
from prfaas.engine.local.processes import spawn, wait_healthy
from prfaas.engine.local.runtime import LocalRuntime, LocalRuntimeError, build_layout
from prfaas.engine.router.config import load_router_config
from prfaas.engine.vllm.compat import SHIM_DIR
from prfaas.engine.vllm.launch import vllm_argv, vllm_env
from prfaas.operator.api import models as api
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.cli.local_plan import direct_local_plan, local_plan
from prfaas.planner.plan import Plan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"


@pytest.mark.parametrize("make_plan", [local_plan, direct_local_plan],
                         ids=["planner", "direct"])
def test_local_plan_of_the_sample(make_plan: Callable[[Any], Plan]) -> None:
    plan = make_plan(load_manifests(SAMPLE))
    assert plan.feasible
    roles = {(c.datacenter, c.role, c.instances) for c in plan.clusters}
    assert roles == {("dc-a", "prefill", 1), ("dc-b", "decode", 1)}
    assert plan.threshold_tokens == 256
    assert plan.kv_bytes_per_token == 2 * 2 * 2 * 64 * 4  # K and V, 2 layers, 2 heads, fp32
    [router] = plan.routers
    assert [r.prefill_cluster for r in router.remotes] == ["local-prefill"]
    assert [ln.capacity_gbps for ln in plan.links] == [1.0]


def test_prfaas_up_uses_the_planner() -> None:
    assert not any("planner" in note and "fail" in note
                   for note in local_plan(load_manifests(SAMPLE)).notes)


def test_local_plan_refuses_a_catalog_model() -> None:
    manifests = load_manifests(SAMPLE)
    model = manifests.of_kind(api.ServingPlan)[0].spec.model
    model.architecture, model.catalog = None, "llama-3-8b"
    with pytest.raises(LocalRuntimeError, match="architecture"):
        local_plan(manifests)


def test_loopback_layout_binds_one_engine_per_core_with_the_shim(tmp_path: Path) -> None:
    layout = build_layout(local_plan(load_manifests(SAMPLE)), model_dir=tmp_path, cores=2,
                          router_port=8123)
    prefill, decode = layout.engine("prefill"), layout.engine("decode")
    assert {prefill.launch.cpu_threads_bind, decode.launch.cpu_threads_bind} == {"0", "1"}
    assert prefill.launch.port != decode.launch.port
    assert prefill.launch.side_channel_port != decode.launch.side_channel_port
    for e in (prefill, decode):
        env = vllm_env(e.launch)
        assert env["PYTHONPATH"] == str(SHIM_DIR)
        assert env["UCX_NET_DEVICES"] == "lo"
        assert "--enforce-eager" in vllm_argv(e.launch)
    assert layout.router_url == "http://127.0.0.1:8123"


def test_router_file_points_at_the_engines(tmp_path: Path) -> None:
    layout = build_layout(local_plan(load_manifests(SAMPLE)), model_dir=tmp_path)
    runtime = LocalRuntime(layout, workdir=tmp_path)
    cfg = load_router_config(runtime.write_router_config())
    assert cfg.local_datacenter == "dc-b"
    assert cfg.datacenters["dc-a"].prefill == [layout.engine("prefill").router_url]
    assert cfg.datacenters["dc-b"].decode == [layout.engine("decode").router_url]
    assert cfg.threshold_tokens == 256 and cfg.block_size == 128
    slow = load_router_config(runtime.write_router_config(capacity_gbps=0.01))
    assert [ln.capacity_gbps for ln in slow.links.values()] == [0.01]


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    proc = spawn("tree", ["sh", "-c", "sleep 300 & sleep 300 & wait"], dict(os.environ),
                  tmp_path)
    proc.stop(timeout_s=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_wait_healthy_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    proc = spawn("dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                  dict(os.environ), tmp_path)
    with pytest.raises(LocalRuntimeError, match=r"(?s)exited with 3.*boom"):
        wait_healthy("http://127.0.0.1:9", [proc], timeout_s=30)


def test_tbf_burst_covers_gso_frames() -> None:
    args = tbf_args(10e6)
    assert args[:3] == ["tbf", "rate", "10000000bit"]
    assert int(args[args.index("burst") + 1]) >= 65536


@pytest.mark.netns
def test_namespaces_are_shaped_and_removed() -> None:
    if not have_net_admin():
        pytest.skip("needs root for network namespaces")
    net = TwoDatacenterNet("dc-a", "dc-b", 1e9).open()
    try:
        assert leftovers(net.tag)
        net.shape(20e6)
        shown = subprocess.run(
            ["tc", "-n", net.prefill.namespace, "qdisc", "show", "dev", net.prefill.link_device],
            capture_output=True, text=True, check=True,
        ).stdout
        assert "tbf" in shown and "20Mbit" in shown
    finally:
        net.close()
    assert leftovers(net.tag) == []
