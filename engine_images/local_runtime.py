"""A plan realised as processes on this machine: what ``prfaas up FILE.yaml`` runs.

From the manifests (PrefillCluster, DecodeCluster, InterDCLink, ServingPlan) it builds a
``LocalLayout`` — one vLLM CPU engine per planned (cluster, role), the tiny generated model, the
router's file — and ``LocalRuntime`` starts it: engines first (each in its own process group,
bound to its own core with ``VLLM_CPU_OMP_THREADS_BIND``, ``--enforce-eager``, a small KV
space, the compatibility shim on ``PYTHONPATH``), then the router in front of the decode
datacenter once every engine answers ``/health``.

With ``netns=True`` (root) each datacenter runs in its own network namespace and the two are
joined by a veth pair shaped with ``tc tbf`` at the InterDCLink's bandwidth (``netns.py``); the
engines' UCX traffic — the KV — crosses that link. ``set_link_gbps`` reshapes it and rewrites
the router's file with the new capacity, as the operator's link probe would.

``stop()`` (also run at interpreter exit) kills every process group it started and deletes the
namespaces it created; it is idempotent.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

from prfaas.engine.compat import SHIM_DIR
from prfaas.engine.launch import EngineLaunch, EngineRole, vllm_argv, vllm_env
from prfaas.engine.netns import DatacenterNet, TwoDatacenterNet
from prfaas.planner.plan import ClusterPlan, LinkPlan, Plan, RemotePrefill, RouterPlan

__all__ = [
    "LocalEngine",
    "LocalLayout",
    "LocalRuntime",
    "LocalRuntimeError",
    "ManagedProcess",
    "build_layout",
    "direct_local_plan",
    "free_port",
    "local_plan",
    "monolithic_layout",
    "wait_healthy",
]

_ENGINE_PORT_BASE = {"prefill": 8100, "decode": 8200, "monolithic": 8300}
_SIDE_CHANNEL_BASE = 5600


class LocalRuntimeError(RuntimeError):
    """The local deployment could not be planned, started or reached; the message says which
    part and where its log is."""


# ----------------------------------------------------------------------------------------------
# Planning: manifests → Plan → layout
# ----------------------------------------------------------------------------------------------


def local_plan(manifests: Any) -> Plan:
    """The plan ``prfaas up`` runs: the planner's, with one instance per cluster and role.

    The planner (``prfaas.planner.planning.plan``) decides ``t``, the KV bytes per token and
    which clusters and roles exist; on one small host each planned (cluster, role) runs as a
    single engine. If the planner is unavailable or cannot plan these manifests, a direct layout
    is used (``direct_local_plan``) and the plan's notes say why.
    """
    from prfaas.operator import api

    plans = manifests.of_kind(api.ServingPlan)
    if len(plans) != 1:
        raise LocalRuntimeError(f"expected exactly one ServingPlan, found {len(plans)}")
    if plans[0].spec.model.architecture is None:
        raise LocalRuntimeError(
            "prfaas up runs a tiny generated model: give spec.model.architecture "
            "(a catalog model is too large for this machine)"
        )
    try:
        from prfaas.operator.translate import problems_from_manifests
        from prfaas.planner.errors import PlannerError
        from prfaas.planner.planning import plan as planner_plan
    except ImportError as exc:
        return _with_note(direct_local_plan(manifests), f"planner unavailable ({exc})")
    try:
        planned = planner_plan(problems_from_manifests(manifests.resources)[0])
    except (PlannerError, ValueError, IndexError) as exc:
        return _with_note(direct_local_plan(manifests), f"planner failed: {exc}")
    if not planned.feasible:
        return _with_note(direct_local_plan(manifests), f"planner: infeasible: {planned.reason}")
    planned.clusters = [
        replace(c, instances=1, tensor_parallel=1, pipeline_parallel=1)
        for c in planned.clusters
        if c.instances > 0
    ]
    planned.notes.append("prfaas up: one CPU engine per planned cluster and role")
    return planned


def _with_note(plan: Plan, note: str) -> Plan:
    plan.notes.append(note)
    return plan


def direct_local_plan(manifests: Any) -> Plan:
    """One instance per cluster and role named by the ServingPlan, without the planner.

    Every PrefillCluster gets one prefill instance; every DecodeCluster one decode instance
    (which also prefills short prompts). ``t`` is the ServingPlan's ``thresholdTokens`` (or
    256); KV bytes per token come from the model's architecture.
    """
    from prfaas.operator import api

    plans = manifests.of_kind(api.ServingPlan)
    if len(plans) != 1:
        raise LocalRuntimeError(f"expected exactly one ServingPlan, found {len(plans)}")
    sp = plans[0].spec
    arch = sp.model.architecture
    if arch is None:
        raise LocalRuntimeError(
            "prfaas up runs a tiny generated model: give spec.model.architecture "
            "(a catalog model is too large for this machine)"
        )
    prefill = {p.metadata.name: p.spec for p in manifests.of_kind(api.PrefillCluster)}
    decode = {d.metadata.name: d.spec for d in manifests.of_kind(api.DecodeCluster)}
    links = [ln for ln in manifests.of_kind(api.InterDCLink)]
    clusters: list[ClusterPlan] = []
    for name in sp.clusters.prefill:
        if name not in prefill:
            raise LocalRuntimeError(f"ServingPlan names PrefillCluster {name!r}, not in the file")
        clusters.append(ClusterPlan(name, prefill[name].datacenter, "prefill", "CPU", 1))
    for name in sp.clusters.decode:
        if name not in decode:
            raise LocalRuntimeError(f"ServingPlan names DecodeCluster {name!r}, not in the file")
        clusters.append(ClusterPlan(name, decode[name].datacenter, "decode", "CPU", 1))
    kv_per_token = float(2 * arch.layers * arch.kv_heads * arch.head_dim * arch.dtype_bytes)
    link_plans = [
        LinkPlan(ln.metadata.name, ln.spec.from_, ln.spec.to, ln.spec.bandwidth_gbps,
                 sp.offload.bandwidth_headroom)
        for ln in links
    ]
    threshold = None if sp.offload.mode == "off" else float(sp.offload.threshold_tokens or 256)
    routers = []
    for name in sp.clusters.decode:
        dc = decode[name].datacenter
        remotes = [
            RemotePrefill(p, ln.name)
            for p in sp.clusters.prefill
            for ln in link_plans
            if ln.from_ == prefill[p].datacenter and ln.to == dc
        ]
        routers.append(RouterPlan(name, threshold, kv_per_token, remotes=remotes))
    return Plan(
        model=sp.model.served_name,
        threshold_tokens=threshold,
        kv_bytes_per_token=kv_per_token,
        clusters=clusters,
        links=link_plans,
        routers=routers,
        notes=["local layout: one CPU engine per cluster and role (prfaas up)"],
    )


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

    def engine(self, role: EngineRole) -> LocalEngine:
        """The first engine with ``role``."""
        for e in self.engines:
            if e.role == role:
                return e
        raise LocalRuntimeError(f"the layout has no {role} engine")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    n = 0
    for cluster in plan.clusters:
        for i in range(cluster.instances):
            name = f"{cluster.name}-{cluster.role}-{i}"
            dc_net = _dc_net(net, cluster.datacenter)
            port = ports.get(name) or (
                _ENGINE_PORT_BASE[cluster.role] + i if dc_net is not None else free_port()
            )
            if dc_net is not None:
                host, sc_host, device = "0.0.0.0", dc_net.link_address, dc_net.link_device
                url = f"http://{dc_net.access_address}:{port}"
                router_url = f"http://{dc_net.link_address}:{port}"
            else:
                host, sc_host, device = "127.0.0.1", "127.0.0.1", "lo"
                url = router_url = f"http://127.0.0.1:{port}"
            launch = EngineLaunch(
                role=cluster.role,
                model=str(model_dir),
                served_name=plan.model,
                host=host,
                port=port,
                device="cpu",
                side_channel_host=sc_host,
                side_channel_port=_SIDE_CHANNEL_BASE + 1 + n if dc_net is None
                else _SIDE_CHANNEL_BASE,
                net_device=device,
                block_size=block_size,
                max_model_len=max_model_len,
                max_num_seqs=8,
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
    )


def monolithic_layout(
    model_dir: Path, served_name: str, *, port: int | None = None, core: int = 0,
    max_model_len: int = 2048, block_size: int = 128,
) -> LocalLayout:
    """One engine without a connector: the reference the disaggregated path must equal."""
    port = port or free_port()
    launch = EngineLaunch(
        role="monolithic", model=str(model_dir), served_name=served_name, host="127.0.0.1",
        port=port, device="cpu", block_size=block_size, max_model_len=max_model_len,
        max_num_seqs=8, enforce_eager=True, cpu_threads_bind=str(core),
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


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ManagedProcess:
    """A child started in its own process group (so its whole tree can be signalled)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; reap the leader."""
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(self.popen.pid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)
        if self._log is not None:
            self._log.close()
            self._log = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(
    name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path
) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    popen = subprocess.Popen(
        list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return ManagedProcess(name, popen, log_path, log)


def wait_healthy(
    url: str, procs: Sequence[ManagedProcess], *, timeout_s: float = 300.0, path: str = "/health"
) -> float:
    """Poll ``url + path`` until it answers 200; returns the seconds waited.

    Raises ``LocalRuntimeError`` with the log tail if a process in ``procs`` exits first, or
    after ``timeout_s``.
    """
    import httpx

    start = time.monotonic()
    while True:
        for p in procs:
            if not p.alive():
                raise LocalRuntimeError(
                    f"{p.name} exited with {p.popen.returncode} before {url} was healthy; "
                    f"log {p.log_path}:\n{p.log_tail()}"
                )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=2.0).status_code == 200:
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            tails = "\n".join(f"--- {p.name} ({p.log_path})\n{p.log_tail(10)}" for p in procs)
            raise LocalRuntimeError(f"{url} not healthy after {timeout_s:.0f}s\n{tails}")
        time.sleep(0.5)


# ----------------------------------------------------------------------------------------------
# The runtime
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class LocalRuntime:
    """Starts and stops one ``LocalLayout``. Use as a context manager or call start/stop."""

    layout: LocalLayout
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prfaas-up-")))
    net: TwoDatacenterNet | None = None
    """The namespaces the layout lives in; ``stop`` closes it."""
    router_argv: Sequence[str] | None = None
    """Overrides the router command (tests); default ``python -m prfaas router``."""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    start_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds from spawn to healthy, per process name."""
    _stopped: bool = False

    @property
    def router_config_path(self) -> Path:
        return self.workdir / "router.yaml"

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, with_router: bool = True, timeout_s: float = 300.0) -> None:
        """Spawn every engine, wait for health, then the router. On failure stop everything."""
        atexit.register(self.stop)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            t0 = time.monotonic()
            for engine in self.layout.engines:
                self.start_engine(engine)
            for engine in self.layout.engines:
                proc = self.processes[engine.name]
                wait_healthy(engine.url, [proc], timeout_s=timeout_s)
                self.start_seconds[engine.name] = time.monotonic() - t0
            if with_router:
                self.start_router(timeout_s=60.0)
        except BaseException:
            self.stop()
            raise

    def start_engine(self, engine: LocalEngine) -> ManagedProcess:
        """Spawn one engine (in its namespace, if any); does not wait."""
        argv = vllm_argv(engine.launch, python=sys.executable)
        if engine.net is not None:
            argv = engine.net.exec_prefix() + argv
        proc = _spawn(engine.name, argv, _engine_env(engine.launch), self.workdir)
        self.processes[engine.name] = proc
        return proc

    def write_router_config(self, capacity_gbps: float | None = None) -> Path:
        """(Re)write the router's file; the router reloads it when its mtime changes."""
        from prfaas.engine.router_config import dump_router_config, router_config_from_plan

        layout = self.layout
        endpoints: dict[str, dict[Literal["prefill", "decode"], list[str]]] = {}
        for e in layout.engines:
            if e.role == "prefill" or e.role == "decode":
                endpoints.setdefault(e.cluster, {}).setdefault(e.role, []).append(e.router_url)
        plan = layout.plan
        if capacity_gbps is not None:
            plan = Plan.from_dict(plan.to_dict())
            for ln in plan.links:
                ln.capacity_gbps = capacity_gbps
        cfg = router_config_from_plan(
            plan, endpoints, model=layout.served_name, tokenizer=str(layout.model_dir),
            max_model_len=layout.max_model_len, block_size=layout.block_size,
        )
        path = self.router_config_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(dump_router_config(cfg))
        tmp.replace(path)
        return path

    def start_router(self, *, timeout_s: float = 60.0) -> ManagedProcess:
        layout = self.layout
        config = self.write_router_config()
        argv = list(self.router_argv or [
            sys.executable, "-m", "prfaas", "router", "--config", str(config),
            "--host", layout.router_host, "--port", str(layout.router_port),
        ])
        if layout.router_net is not None:
            argv = layout.router_net.exec_prefix() + argv
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        t0 = time.monotonic()
        proc = _spawn("router", argv, env, self.workdir)
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

    def kill(self, name: str) -> None:
        """Kill one process group at once (SIGKILL), e.g. to fail a prefill engine."""
        proc = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stop(timeout_s=5.0)

    def pids(self) -> list[int]:
        """Leader pids of every process started (alive or not)."""
        return [p.pid for p in self.processes.values()]

    def stop(self) -> None:
        """Stop every process group (router first), then delete the namespaces. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for name in sorted(self.processes, key=lambda n: n != "router"):
            self.processes[name].stop()
        if self.net is not None:
            self.net.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def describe(self) -> dict[str, Any]:
        """What runs where (printed by ``prfaas up``)."""
        return {
            "endpoint": self.layout.router_url,
            "model": self.layout.served_name,
            "modelDir": str(self.layout.model_dir),
            "workdir": str(self.workdir),
            "engines": [
                {"name": e.name, "role": e.role, "datacenter": e.datacenter, "url": e.url,
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


def _engine_env(launch: EngineLaunch) -> dict[str, str]:
    env = dict(os.environ)
    added = vllm_env(launch)
    if "PYTHONPATH" in added and env.get("PYTHONPATH"):
        added["PYTHONPATH"] = added["PYTHONPATH"] + os.pathsep + env["PYTHONPATH"]
    env.update(added)
    return env
