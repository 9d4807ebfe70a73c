"""A plan realised as processes on this machine: what ``prfaas up FILE.yaml`` runs.

``build_layout`` turns a plan (``local_plan.local_plan`` of the manifests) into a
``LocalLayout``: one vLLM CPU engine per planned (cluster, role), the tiny generated model, the
router's file. A convertible pool (``Plan.convertible``: a decode cluster whose prefill and
decode instances are interchangeable) runs as ``kv_both`` engines (``<cluster>-both-<i>``) with
the plan's counts as the initial role assignment; an aggregated pool (``ClusterPlan.aggregated``)
runs as ``aggregated`` engines (``<cluster>-aggregated-<i>``: ``kv_both`` with chunked prefill
and the plan's token budget, the same ``launch.py`` flags as on Kubernetes), the router's local
decode pool; ``LocalRuntime.assign`` changes roles live (it
rewrites the router's file, which the router re-reads) and ``LocalRuntime.remove`` takes an
engine out the way Kubernetes does: out of the router first, then ``drain``, then stopped.
``LocalRuntime`` starts it: engines first (each in its own process group, bound
to its own core with ``VLLM_CPU_OMP_THREADS_BIND``, ``--enforce-eager``, a small KV space, the
compatibility shim on ``PYTHONPATH``), then the router in front of the decode datacenter once
every engine answers ``/health``.

Given a ``TwoDatacenterNet`` (root), each datacenter runs in its own network namespace and the
two are joined by a veth pair shaped with ``tc tbf`` at the InterDCLink's bandwidth
(``netns.py``); the engines' UCX traffic — the KV — crosses that link. ``set_link_gbps``
reshapes it and rewrites the router's file with the new capacity, as the operator's link probe
would.

Once the engines answer, ``check_kv_layout`` compares the KV bytes per token each engine
reports with the plan's and refuses to serve on a mismatch (the router's byte meter counts with
the plan's figure).

``stop()`` (also run at interpreter exit) kills every process group it started, deletes the
namespaces it created and its temporary folder of logs (kept when ``start`` failed, or when the
caller gave ``workdir``); it is idempotent. ``start`` checks the router's port before it spends
tens of seconds starting engines. A failed or interrupted start stops without a grace
period.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from prfaas.engine.local.netns import DatacenterNet, TwoDatacenterNet
from prfaas.engine.local.processes import (
    LocalRuntimeError,
    ManagedProcess,
    free_port,
    spawn,
    wait_healthy,
)
from prfaas.engine.vllm.compat import SHIM_DIR
from prfaas.engine.vllm.launch import (
    EngineLaunch,
    EngineRole,
    dtype_args,
    reported_kv_bytes_per_token,
    vllm_argv,
    vllm_env,
)
from prfaas.planner.plan import LinkPlan, Plan, Role

__all__ = [
    "LocalEngine",
    "LocalLayout",
    "LocalRuntime",
    "LocalRuntimeError",
    "build_layout",
    "monolithic_layout",
]

_ENGINE_PORT_BASE = {
    "prefill": 8100, "decode": 8200, "monolithic": 8300, "both": 8400, "aggregated": 8500,
}
_DRAIN_SETTLE_S = 2.0
"""``remove`` waits this long before polling the engine: the router re-reads its file every
second, so by then no new request goes to the engine."""
_SIDE_CHANNEL_BASE = 5600


@dataclass(frozen=True, slots=True)
class LocalEngine:
    """One engine process of the layout."""

    name: str
    cluster: str
    datacenter: str
    launch: EngineLaunch
    url: str
    """Base URL from this host (tests, the live table)."""
    router_url: str
    """Base URL as the router reaches it (across the link for a remote datacenter)."""
    net: DatacenterNet | None = None

    @property
    def role(self) -> EngineRole:
        return self.launch.role


@dataclass(frozen=True, slots=True)
class LocalLayout:
    """Everything ``LocalRuntime`` starts, decided before anything runs."""

    plan: Plan
    model_dir: Path
    served_name: str
    max_model_len: int
    block_size: int
    engines: tuple[LocalEngine, ...]
    router_host: str
    router_port: int
    router_url: str
    router_net: DatacenterNet | None = None
    link: LinkPlan | None = None
    assignment: dict[str, Role] = field(default_factory=dict)
    """Initial role of each ``kv_both`` engine (by name): the plan's counts, in engine order."""

    def engine(self, role: EngineRole) -> LocalEngine:
        """The first engine with ``role``."""
        for e in self.engines:
            if e.role == role:
                return e
        raise LocalRuntimeError(f"the layout has no {role} engine")

    def named(self, name: str) -> LocalEngine:
        """The engine called ``name`` (``LocalRuntimeError`` naming the choices otherwise)."""
        for e in self.engines:
            if e.name == name:
                return e
        raise LocalRuntimeError(
            f"no engine {name!r} in the layout (have {[e.name for e in self.engines]})"
        )


def build_layout(
    plan: Plan,
    *,
    model_dir: Path,
    max_model_len: int = 2048,
    block_size: int = 128,
    net: TwoDatacenterNet | None = None,
    router_port: int = 8000,
    engine_ports: dict[str, int] | None = None,
    cores: int | None = None,
    kvcache_gib: int = 1,
) -> LocalLayout:
    """Turn the plan into engine launches, URLs and core bindings.

    ``engine_ports`` maps engine names (``<cluster>-<role>-<i>``) to ports; missing ones get
    fixed defaults (8100+ prefill, 8200+ decode) in namespaces and free ports on loopback.
    """
    cores = cores or os.cpu_count() or 1
    ports = dict(engine_ports or {})
    engines: list[LocalEngine] = []
    assignment: dict[str, Role] = {}
    convertible = {p.decode_cluster: p for p in plan.convertible()}
    n = 0
    for cluster in plan.clusters:
        pool = convertible.get(cluster.name)
        role: EngineRole = "aggregated" if cluster.aggregated else cluster.role
        count = cluster.instances
        if pool is not None:  # one pool of kv_both engines, built once (at the decode row)
            if cluster.role == "prefill":
                continue
            role, count = "both", pool.instances
        for i in range(count):
            name = f"{cluster.name}-{role}-{i}"
            if pool is not None:
                assignment[name] = "prefill" if i < pool.prefill else "decode"
            dc_net = _dc_net(net, cluster.datacenter)
            port = ports.get(name) or (
                _ENGINE_PORT_BASE[role] + i if dc_net is not None else free_port()
            )
            if dc_net is not None:
                host, sc_host, device = "0.0.0.0", dc_net.link_address, dc_net.link_device
                url = f"http://{dc_net.access_address}:{port}"
                router_url = f"http://{dc_net.link_address}:{port}"
            else:
                host, sc_host, device = "127.0.0.1", "127.0.0.1", "lo"
                url = router_url = f"http://127.0.0.1:{port}"
            launch = EngineLaunch(
                role=role,
                model=str(model_dir),
                served_name=plan.model,
                host=host,
                port=port,
                device="cpu",
                side_channel_host=sc_host,
                side_channel_port=_SIDE_CHANNEL_BASE + 1 + n if dc_net is None
                else _SIDE_CHANNEL_BASE + i,  # unique within a namespace (kv_both pools)
                net_device=device,
                block_size=block_size,
                max_model_len=max_model_len,
                max_num_seqs=8,
                # An aggregated pool's token budget (chunked prefill); vLLM's default elsewhere.
                max_num_batched_tokens=cluster.max_num_batched_tokens if cluster.aggregated
                else None,
                dtype_bytes=plan.dtype_bytes,
                enforce_eager=True,
                cpu_kvcache_gib=kvcache_gib,
                cpu_threads_bind=str(n % cores),
                pythonpath=(str(SHIM_DIR),),
                extra_env={"HF_HUB_OFFLINE": "1"},
            )
            engines.append(LocalEngine(name, cluster.name, cluster.datacenter, launch, url,
                                       router_url, dc_net))
            n += 1
    decode_dc = next((c.datacenter for c in plan.clusters if c.role == "decode"), None)
    router_net = _dc_net(net, decode_dc) if decode_dc else None
    if router_net is not None:
        router_host, router_url = "0.0.0.0", f"http://{router_net.access_address}:{router_port}"
        # Engines in the router's own namespace are reached on loopback, not across the link.
        engines = [
            replace(e, router_url=f"http://127.0.0.1:{e.launch.port}") if e.net == router_net
            else e
            for e in engines
        ]
    else:
        router_host, router_url = "127.0.0.1", f"http://127.0.0.1:{router_port}"
    return LocalLayout(
        plan=plan,
        model_dir=model_dir,
        served_name=plan.model,
        max_model_len=max_model_len,
        block_size=block_size,
        engines=tuple(engines),
        router_host=router_host,
        router_port=router_port,
        router_url=router_url,
        router_net=router_net,
        link=plan.links[0] if plan.links else None,
        assignment=assignment,
    )


def monolithic_layout(
    model_dir: Path, served_name: str, *, port: int | None = None, core: int = 0,
    max_model_len: int = 2048, block_size: int = 128, dtype_bytes: int = 2,
) -> LocalLayout:
    """One engine without a connector: the reference the disaggregated path must equal (same
    ``dtype_bytes`` as the plan it is compared with)."""
    port = port or free_port()
    launch = EngineLaunch(
        role="monolithic", model=str(model_dir), served_name=served_name, host="127.0.0.1",
        port=port, device="cpu", block_size=block_size, max_model_len=max_model_len,
        max_num_seqs=8, dtype_bytes=dtype_bytes, enforce_eager=True, cpu_threads_bind=str(core),
        pythonpath=(str(SHIM_DIR),), extra_env={"HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    engine = LocalEngine("monolithic", "monolithic", "local", launch, url, url)
    return LocalLayout(
        plan=Plan(model=served_name), model_dir=model_dir, served_name=served_name,
        max_model_len=max_model_len, block_size=block_size, engines=(engine,),
        router_host="127.0.0.1", router_port=0, router_url="",
    )


def _dc_net(net: TwoDatacenterNet | None, datacenter: str | None) -> DatacenterNet | None:
    if net is None or datacenter is None:
        return None
    for dc in (net.prefill, net.decode):
        if dc.datacenter == datacenter:
            return dc
    raise LocalRuntimeError(
        f"datacenter {datacenter!r} has no namespace (have {net.prefill_dc!r}, {net.decode_dc!r})"
    )


@dataclass(slots=True)
class LocalRuntime:
    """Starts and stops one ``LocalLayout``. Use as a context manager or call start/stop."""

    layout: LocalLayout
    workdir: Path | None = None
    """Logs and the router's file. ``None``: a temporary folder that ``stop`` removes, unless
    ``keep_workdir`` (set when ``start`` fails, so the logs its error names stay readable)."""
    net: TwoDatacenterNet | None = None
    """The namespaces the layout lives in; ``stop`` closes it."""
    router_argv: Sequence[str] | None = None
    """Overrides the router command (tests); default ``python -P -m prfaas router``."""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    start_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds from spawn to healthy, per process name."""
    keep_workdir: bool = False
    roles: dict[str, Role] = field(default_factory=dict)
    """The role each ``kv_both`` engine serves now (``assign``); starts as the layout's."""
    removed: set[str] = field(default_factory=set)
    """Engines taken out by ``remove``."""
    _stopped: bool = False
    _temporary: bool = False

    def __post_init__(self) -> None:
        self.roles = {**self.layout.assignment, **self.roles}
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="prfaas-up-"))
            self._temporary = True

    @property
    def folder(self) -> Path:
        """The folder of logs and the router's file (``workdir``, or the temporary one)."""
        assert self.workdir is not None  # set in __post_init__
        return self.workdir

    @property
    def removes_folder(self) -> bool:
        """Whether ``stop`` deletes ``folder`` (a temporary one, and ``start`` did not fail)."""
        return self._temporary and not self.keep_workdir

    @property
    def router_config_path(self) -> Path:
        return self.folder / "router.yaml"

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, with_router: bool = True, timeout_s: float = 300.0) -> None:
        """Spawn every engine, wait for health, then the router. On failure stop everything."""
        atexit.register(self.stop)
        self.folder.mkdir(parents=True, exist_ok=True)
        if with_router and self.layout.router_net is None:
            # Before the engines (tens of seconds): a busy router port would only fail after.
            _check_port_free(self.layout.router_host, self.layout.router_port)
        try:
            t0 = time.monotonic()
            for engine in self.layout.engines:
                self.start_engine(engine)
            for engine in self.layout.engines:
                proc = self.processes[engine.name]
                wait_healthy(engine.url, [proc], timeout_s=timeout_s)
                self.start_seconds[engine.name] = time.monotonic() - t0
            self.check_kv_layout()
            self.warm_up()
            if with_router:
                self.start_router(timeout_s=60.0)
        except BaseException:
            # Nothing has been served yet: no grace period (an engine still loading can sit on
            # SIGTERM for 20 s), so Ctrl-C during start-up returns at once. The logs stay: the
            # error names them.
            self.keep_workdir = True
            self.stop(grace_s=0.0)
            raise

    def check_kv_layout(self, tolerance: float = 0.10) -> dict[str, float]:
        """Refuse to serve when an engine's KV cache does not have the plan's bytes per token.

        The router meters KV bytes and the operator derives a link's measured bandwidth from the
        plan's ``kvBytesPerToken``; an engine running another dtype than the plan assumed would
        make both wrong (by 2× for float32 vs bfloat16). Returns the bytes per token each engine
        reports (``reported_kv_bytes_per_token``); raises ``LocalRuntimeError`` when one differs
        from the plan by more than ``tolerance``.
        """
        import httpx

        expected = self.layout.plan.kv_bytes_per_token
        seen: dict[str, float] = {}
        for engine in self.layout.engines:
            try:
                text = httpx.get(engine.url + "/metrics", timeout=10.0).text
            except httpx.HTTPError as exc:
                raise LocalRuntimeError(
                    f"{engine.name}: cannot read {engine.url}/metrics to check its KV layout: {exc}"
                ) from exc
            reported = reported_kv_bytes_per_token(text)
            if reported is None:
                raise LocalRuntimeError(
                    f"{engine.name} does not report its KV cache size (vllm:cache_config_info "
                    f"at {engine.url}/metrics); cannot check it against the plan"
                )
            seen[engine.name] = reported
            if expected > 0 and abs(reported - expected) > tolerance * expected:
                dtype = self.layout.plan.dtype_bytes
                raise LocalRuntimeError(
                    f"{engine.name} keeps {reported:.0f} KV bytes per token, the plan assumes "
                    f"{expected:.0f} (dtypeBytes {dtype}, started with "
                    f"{' '.join(dtype_args(dtype))}): the router's KV byte counts and the "
                    "link's measured bandwidth would be wrong. Make "
                    "spec.model.architecture of the ServingPlan match the model the engines "
                    f"run (log: {self.processes[engine.name].log_path})"
                )
        return seen

    def warm_up(self) -> None:
        """One plain one-token completion per engine before the router serves. On vLLM CPU
        0.32 an engine whose first request is a KV pull (decode of a remote prefill) lost its
        worker to SIGILL (exit -4) in 2 of 2 tries, with kv_consumer and kv_both alike; after
        one local step it never did (reference/vllm-cpu-pd.md)."""
        import httpx

        for engine in self.layout.engines:
            body = {"model": self.layout.served_name, "prompt": "warm up", "max_tokens": 1}
            try:
                reply = httpx.post(engine.url + "/v1/completions", json=body, timeout=120.0)
                reply.raise_for_status()
            except httpx.HTTPError as exc:
                raise LocalRuntimeError(
                    f"{engine.name} failed its warm-up completion: {exc} "
                    f"(log: {self.processes[engine.name].log_path})"
                ) from exc

    def start_engine(self, engine: LocalEngine) -> ManagedProcess:
        """Spawn one engine (in its namespace, if any); does not wait."""
        argv = vllm_argv(engine.launch, python=sys.executable)
        if engine.net is not None:
            argv = engine.net.exec_prefix() + argv
        proc = spawn(engine.name, argv, _engine_env(engine.launch), self.folder)
        self.processes[engine.name] = proc
        return proc

    def write_router_config(self, capacity_gbps: float | None = None) -> Path:
        """(Re)write the router's file; the router reloads it when its mtime changes."""
        from prfaas.engine.router.config import dump_router_config, router_config_from_plan

        layout = self.layout
        endpoints: dict[str, dict[Literal["prefill", "decode"], list[str]]] = {}
        assignment: dict[str, Literal["prefill", "decode"]] = {}
        for e in layout.engines:
            if e.name in self.removed:
                continue
            if e.role == "prefill" or e.role == "decode":
                endpoints.setdefault(e.cluster, {}).setdefault(e.role, []).append(e.router_url)
            elif e.role == "aggregated":  # the local decode pool; each prefills its own prompts
                endpoints.setdefault(e.cluster, {}).setdefault("decode", []).append(e.router_url)
            elif e.role == "both":
                assignment[e.router_url] = self.roles[e.name]
        plan = layout.plan
        if capacity_gbps is not None:
            plan = Plan.from_dict(plan.to_dict())
            for ln in plan.links:
                ln.capacity_gbps = capacity_gbps
        cfg = router_config_from_plan(
            plan, endpoints, model=layout.served_name, tokenizer=str(layout.model_dir),
            max_model_len=layout.max_model_len, block_size=layout.block_size,
            assignment=assignment or None,
        )
        path = self.router_config_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(dump_router_config(cfg))
        tmp.replace(path)
        return path

    def start_router(self, *, timeout_s: float = 60.0) -> ManagedProcess:
        layout = self.layout
        config = self.write_router_config()
        # -P: the current folder (a checkout's root holds a bare prfaas/) must not shadow the
        # prfaas this process imported, or the router would run another tree's code.
        argv = list(self.router_argv or [
            sys.executable, "-P", "-m", "prfaas", "router", "--config", str(config),
            "--host", layout.router_host, "--port", str(layout.router_port),
        ])
        if layout.router_net is not None:
            argv = layout.router_net.exec_prefix() + argv
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        t0 = time.monotonic()
        proc = spawn("router", argv, env, self.folder)
        self.processes["router"] = proc
        wait_healthy(layout.router_url, [proc], timeout_s=timeout_s, path="/healthz")
        self.start_seconds["router"] = time.monotonic() - t0
        return proc

    def set_link_gbps(self, gbps: float) -> None:
        """Reshape the inter-DC link (namespaces only) and tell the router its new capacity."""
        if self.net is None:
            raise LocalRuntimeError("set_link_gbps needs the namespaces (prfaas up --netns)")
        self.net.shape(gbps * 1e9)
        self.write_router_config(capacity_gbps=gbps)

    def assign(self, roles: Mapping[str, Role]) -> Path:
        """Give ``kv_both`` engines (by name) new roles, live: the router re-reads its file
        within a second; each engine leaves its old role, finishes what it holds there, then
        serves the new one (the router's drain, ``prfaas.engine.router.policy``). No restart."""
        for name, role in roles.items():
            if name not in self.roles or name in self.removed:
                raise LocalRuntimeError(
                    f"{name!r} is not a kv_both engine of this layout "
                    f"(have {sorted(set(self.roles) - self.removed)})"
                )
            if role not in ("prefill", "decode"):
                raise LocalRuntimeError(f"role of {name!r}: got {role!r}; use prefill or decode")
        previous = dict(self.roles)
        self.roles.update(roles)
        try:
            return self.write_router_config()
        except Exception:
            self.roles = previous
            raise

    def remove(self, name: str, *, max_wait_s: float = 120.0) -> str:
        """Take engine ``name`` out without losing a request, as the operator does on
        Kubernetes: out of the router's file first (no new request reaches it), then
        ``prfaas.engine.vllm.drain`` until the engine holds nothing (at most ``max_wait_s``),
        then stop it. Returns the drain's outcome (``idle``, ``no-engine`` or ``bound``)."""
        from prfaas.engine.vllm.drain import drain

        engine = self.layout.named(name)
        self.removed.add(name)
        try:
            self.write_router_config()
        except Exception:
            self.removed.discard(name)
            raise
        outcome = drain(
            engine.url + "/metrics", max_wait_s=max_wait_s, settle_s=_DRAIN_SETTLE_S,
            log=lambda msg: None,
        )
        self.processes[name].stop(timeout_s=20.0)
        return outcome

    def adopt(self, proc: ManagedProcess) -> None:
        """Stop ``proc`` with everything else (e.g. the Prometheus of ``prfaas up
        --prometheus``); it is known by ``proc.name``."""
        self.processes[proc.name] = proc

    def kill(self, name: str) -> None:
        """Kill one process group at once (SIGKILL), e.g. to fail a prefill engine."""
        proc = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stop(timeout_s=5.0)

    def pids(self) -> list[int]:
        """Leader pids of every process started (alive or not)."""
        return [p.pid for p in self.processes.values()]

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop every process group (router first), then delete the namespaces. Idempotent.

        Every group gets SIGTERM at once and ``grace_s`` seconds in all (not each) before
        SIGKILL.
        """
        if self._stopped:
            return
        self._stopped = True
        ordered = sorted(self.processes, key=lambda n: n != "router")
        for name in ordered:
            self.processes[name].signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name in ordered:
            self.processes[name].stop(timeout_s=max(0.0, deadline - time.monotonic()))
        if self.net is not None:
            self.net.close()
        if self.removes_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def describe(self) -> dict[str, Any]:
        """What runs where (printed by ``prfaas up``)."""
        return {
            "endpoint": self.layout.router_url,
            "model": self.layout.served_name,
            "modelDir": str(self.layout.model_dir),
            "workdir": str(self.folder),
            "engines": [
                {"name": e.name, "role": self.roles.get(e.name, e.role),
                 "kvBoth": e.role == "both", "datacenter": e.datacenter, "url": e.url,
                 "tokenBudget": e.launch.max_num_batched_tokens if e.role == "aggregated"
                 else None,
                 "core": e.launch.cpu_threads_bind,
                 "namespace": e.net.namespace if e.net else None}
                for e in self.layout.engines
            ],
            "link": None if self.layout.link is None else {
                "name": self.layout.link.name,
                "gbps": self.net.rate_bps / 1e9 if self.net else None,
                "shaped": self.net is not None,
            },
        }


def _check_port_free(host: str, port: int) -> None:
    """Raise ``LocalRuntimeError`` naming the port and ``--port`` when ``host:port`` is taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LocalRuntimeError(
                f"port {port} on {host} is already in use ({exc.strerror}); stop what listens "
                f"there, or choose another router port with --port (e.g. --port {port + 1})"
            ) from exc


def _engine_env(launch: EngineLaunch) -> dict[str, str]:
    env = dict(os.environ)
    added = vllm_env(launch)
    if "PYTHONPATH" in added and env.get("PYTHONPATH"):
        added["PYTHONPATH"] = added["PYTHONPATH"] + os.pathsep + env["PYTHONPATH"]
    env.update(added)
    return env
