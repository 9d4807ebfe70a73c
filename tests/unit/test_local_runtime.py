"""``prfaas up``'s planning and process handling, without starting vLLM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin, leftovers, tbf_args
from prfaas.engine.local.processes import ManagedProcess, spawn, wait_healthy
from prfaas.engine.local.runtime import LocalRuntime, LocalRuntimeError, build_layout
from prfaas.engine.router.config import load_router_config
from prfaas.engine.vllm.compat import SHIM_DIR
from prfaas.engine.vllm.launch import (
    dtype_args,
    reported_kv_bytes_per_token,
    vllm_argv,
    vllm_env,
)
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
    assert plan.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2  # K and V, 2 layers, 2 heads, bf16
    assert plan.dtype_bytes == 2
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


def test_engines_are_pinned_to_the_plans_dtype(tmp_path: Path) -> None:
    """vLLM's ``auto`` would run a float32 checkpoint in bfloat16 (half the plan's KV bytes)."""
    plan = local_plan(load_manifests(SAMPLE))
    for dtype_bytes, flags in ((2, ["--dtype", "bfloat16"]), (4, ["--dtype", "float32"])):
        plan.dtype_bytes = dtype_bytes
        for e in build_layout(plan, model_dir=tmp_path).engines:
            argv = vllm_argv(e.launch)
            i = argv.index("--dtype")
            assert argv[i:i + 2] == flags
    with pytest.raises(ValueError, match="dtypeBytes: got 3"):
        dtype_args(3)


def _cache_config_metrics(bytes_per_token: int, block_size: int = 128) -> bytes:
    """What a vLLM CPU engine with a 1 GiB KV space serves as ``vllm:cache_config_info``."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    memory = 1 << 30
    info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                 ["block_size", "cache_dtype", "kv_cache_memory_bytes", "num_gpu_blocks"],
                 registry=registry)
    info.labels(str(block_size), "auto", str(memory),
                str(memory // (block_size * bytes_per_token))).set(1)
    return generate_latest(registry)


def _serve_metrics(body: bytes) -> tuple[str, Callable[[], None]]:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server.shutdown


def test_reported_kv_bytes_per_token_reads_vllms_cache_info() -> None:
    assert reported_kv_bytes_per_token(_cache_config_metrics(1024).decode()) == 1024
    assert reported_kv_bytes_per_token("# nothing here\n") is None


@pytest.mark.parametrize(("engine_bytes", "refused"), [(1024, False), (2048, True)])
def test_start_up_refuses_engines_whose_kv_layout_differs_from_the_plan(
    tmp_path: Path, engine_bytes: int, refused: bool
) -> None:
    from dataclasses import replace

    plan = local_plan(load_manifests(SAMPLE))  # 1024 B/token: bfloat16
    url, shutdown = _serve_metrics(_cache_config_metrics(engine_bytes))
    try:
        layout = build_layout(plan, model_dir=tmp_path)
        layout = replace(layout, engines=tuple(replace(e, url=url) for e in layout.engines))
        runtime = LocalRuntime(layout, workdir=tmp_path)
        runtime.processes = {e.name: spawn(e.name, ["true"], dict(os.environ), tmp_path)
                             for e in layout.engines}
        if refused:
            with pytest.raises(LocalRuntimeError, match="keeps 2048 KV bytes per token, the "
                               "plan assumes 1024"):
                runtime.check_kv_layout()
        else:
            assert set(runtime.check_kv_layout().values()) == {1024.0}
    finally:
        shutdown()


def test_an_interrupted_start_kills_engines_without_a_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine still loading may sit on SIGTERM; Ctrl-C during start-up must not wait for it."""
    layout = build_layout(local_plan(load_manifests(SAMPLE)), model_dir=tmp_path)
    runtime = LocalRuntime(layout, workdir=tmp_path)
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(600)"]

    def start_engine(self: LocalRuntime, engine: Any) -> Any:
        proc = spawn(engine.name, stubborn, dict(os.environ), tmp_path)
        self.processes[engine.name] = proc
        return proc

    graces: list[float] = []
    real_stop = ManagedProcess.stop

    def stop(self: ManagedProcess, timeout_s: float = 20.0) -> None:
        graces.append(timeout_s)
        real_stop(self, timeout_s)

    monkeypatch.setattr(LocalRuntime, "start_engine", start_engine)
    monkeypatch.setattr(ManagedProcess, "stop", stop)
    with pytest.raises(LocalRuntimeError, match="not healthy"):
        runtime.start(timeout_s=0.5)
    assert graces and max(graces) == 0.0
    for proc in runtime.processes.values():
        assert proc.popen.returncode == -signal.SIGKILL


def test_a_busy_router_port_is_refused_before_any_engine_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        layout = build_layout(local_plan(load_manifests(SAMPLE)), model_dir=tmp_path,
                              router_port=port)
        runtime = LocalRuntime(layout, workdir=tmp_path)
        with pytest.raises(LocalRuntimeError, match=rf"port {port} on 127.0.0.1 is already in "
                           rf"use .*--port \(e.g. --port {port + 1}\)"):
            runtime.start()
    assert runtime.processes == {}


def test_the_temporary_log_folder_is_removed_at_stop_and_kept_when_asked(tmp_path: Path) -> None:
    layout = build_layout(local_plan(load_manifests(SAMPLE)), model_dir=tmp_path)
    temporary = LocalRuntime(layout)
    assert temporary.folder.is_dir() and temporary.removes_folder
    temporary.stop()
    assert not temporary.folder.exists()
    given = LocalRuntime(layout, workdir=tmp_path / "logs")
    given.folder.mkdir()
    given.stop()
    assert given.folder.is_dir() and not given.removes_folder


def test_a_failed_start_keeps_its_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = build_layout(local_plan(load_manifests(SAMPLE)), model_dir=tmp_path)
    runtime = LocalRuntime(layout)

    def start_engine(self: LocalRuntime, engine: Any) -> Any:
        proc = spawn(engine.name, [sys.executable, "-c", "raise SystemExit(3)"],
                     dict(os.environ), self.folder)
        self.processes[engine.name] = proc
        return proc

    monkeypatch.setattr(LocalRuntime, "start_engine", start_engine)
    with pytest.raises(LocalRuntimeError, match="exited with 3"):
        runtime.start()
    try:
        assert runtime.folder.is_dir() and any(runtime.folder.glob("*.log"))
    finally:
        import shutil

        shutil.rmtree(runtime.folder)
