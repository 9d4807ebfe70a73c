"""Two kmock ``KubernetesEmulator``s standing for two clusters, and the operator running on them.

``local`` is the cluster the operator runs in (it holds the prfaas CRs, the decode cluster's
children and the kubeconfig Secret); ``remote`` is reached through that Secret (the prefill
cluster's children). Recipes and pitfalls: shared/reference/kopf-kmock-vllm.md — async tests
that wait with ``await asyncio.sleep``, ``v1/namespaces`` discoverable, verbs declared, objects
with ``metadata.resourceVersion``, CRs created only after kopf's watch is open.

kmock keeps whatever ``resourceVersion`` an object was created with, so ``VersionedEmulator``
gives every write a new one, as a real API server does: kopf's consistency check relies on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp.web
import jsonpatch
import kmock
import pytest
import pytest_asyncio
import yaml
from prfaas.operator.api import models as api
from prfaas.operator.controller.reconcile import PlannerFn, PlanRequest, default_planner
from prfaas.operator.controller.runtime import run_operator
from prfaas.operator.controller.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CASE_STUDY = REPO / "crds" / "samples" / "case-study.yaml"
OPERATOR_NS = "prfaas-system"
SECRET = "dc-a-kubeconfig"
ALL_VERBS = {"list", "watch", "get", "create", "patch", "delete"}

_CORE = {
    "v1/namespaces": ("Namespace", False),
    "v1/secrets": ("Secret", True),
    "v1/services": ("Service", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/nodes": ("Node", False),
    "v1/events": ("Event", True),
    "apps/v1/deployments": ("Deployment", True),
    "v1/serviceaccounts": ("ServiceAccount", True),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True),
    "discovery.k8s.io/v1/endpointslices": ("EndpointSlice", True),
}


_VERSIONS = itertools.count(2)  # "1": what tests create objects with


class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, but every create or patch gives the object a new
    ``metadata.resourceVersion`` (one counter for all objects and emulators, like etcd's revision).

    kopf relies on it: after patching an object (its finalizer, its last-handled
    configuration) it waits for the version its patch returned and holds back older watch
    events. With kmock's fixed version every queued event looks current, so kopf took each
    status write that was queued while a creation handler ran for a new object with no
    last-handled annotation and ran the creation handler again, once per event; under load
    the InterDCLink's creation handler (which reconciles every plan) ran a dozen times in a
    row and starved the autoscaling timer. A JSON patch whose ``test`` of the version fails
    gets 422 (kopf retries on 422, not on kmock's 500).
    """

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.action in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
        ):
            _set_version(request.data, str(next(_VERSIONS)))
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "status": "Failure",
                    "reason": "Invalid",
                    "message": str(exc),
                    "code": 422,
                },
                status=422,
            )


def _set_version(data: Any, version: str) -> None:
    """Make ``data`` (the request's parsed body: an object, a merge patch or a JSON patch) also
    set ``metadata.resourceVersion`` (in place: kmock matches reactions by the request object)."""
    if isinstance(data, dict):
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            meta = data["metadata"] = {}
        meta["resourceVersion"] = version
    elif isinstance(data, list):
        data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})


def declare(emulator: kmock.KubernetesEmulator, with_crds: bool) -> None:
    """Make the emulator serve the kinds the operator (and kopf) use, with their verbs."""
    for res, (kind, namespaced) in _CORE.items():
        emulator.resources[res] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            verbs=ALL_VERBS,
            namespaced=namespaced,
            subresources={"status"} if kind == "Deployment" else set(),
        )
    if with_crds:
        for cls in api.KINDS:
            emulator.resources[f"{api.API_VERSION}/{cls.PLURAL}"] = kmock.ResourceInfo(
                kind=cls.KIND,
                singular=cls.KIND.lower(),
                verbs=ALL_VERBS,
                subresources={"status"},
                namespaced=cls.NAMESPACED,
            )


def kubeconfig(url: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "dc-a", "cluster": {"server": url}}],
            "users": [{"name": "prfaas", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "dc-a", "context": {"cluster": "dc-a", "user": "prfaas"}}],
            "current-context": "dc-a",
        }
    )


def case_study() -> dict[str, dict[str, Any]]:
    """The case-study objects by kind; the prefill cluster is moved to the remote cluster."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(CASE_STUDY.read_text()) if d}
    docs["PrefillCluster"]["spec"]["target"] = {
        "namespace": "prefill",
        "kubeconfigSecretRef": {"name": SECRET},
    }
    return docs


def path_of(obj: dict[str, Any], name: str | None = None) -> str:
    cls = api.model_for_kind(obj["kind"])
    base = f"/apis/{api.API_VERSION}"
    if cls.NAMESPACED:
        base += f"/namespaces/{obj['metadata'].get('namespace', 'default')}"
    base += f"/{cls.PLURAL}"
    return f"{base}/{name}" if name else base


def _res(r: Any) -> str:
    return f"{r.group}/{r.version}/{r.plural}".lstrip("/")


def find(
    emulator: kmock.KubernetesEmulator, res: str, namespace: str | None, name: str
) -> dict[str, Any] | None:
    """The live object ``res`` (``group/version/plural``) ``namespace/name``, or ``None``."""
    for (r, ns, n), obj in list(emulator.objects.items()):
        if _res(r) == res and ns == namespace and n == name and not obj.deleted:
            return dict(obj.raw)
    return None


@dataclass
class World:
    """Both emulators and helpers to drive them like ``kubectl`` would."""

    local: kmock.KubernetesEmulator
    remote: kmock.KubernetesEmulator
    planner: PlannerFn = default_planner
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)

    async def start_operator(self, **overrides: Any) -> None:
        settings = OperatorSettings()
        settings.reconcile.apply_mode = "merge"
        settings.reconcile.namespace = OPERATOR_NS
        settings.reconcile.resync_seconds = overrides.pop("resync", 0.5)
        settings.reconcile.cluster_probe_seconds = 1.0
        settings.retry.api_backoff_seconds = 0.02
        settings.retry.reconcile_delay_seconds = 0.3
        settings.metrics_port = 0
        settings.autoscale = overrides.pop("autoscale", settings.autoscale)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_operator(
                settings,
                server=str(self.local.url),
                planner=overrides.pop("planner", self.planner),
                stop_flag=stop,
                metrics=overrides.pop("metrics", None),
                autoscaler=overrides.pop("autoscaler", None),
            )
        )
        self.tasks.append((task, stop))
        watches_before = len(self.local["watch prfaas.io/v1alpha1/servingplans"])
        await self.until(
            lambda: len(self.local["watch prfaas.io/v1alpha1/servingplans"]) > watches_before,
            what="kopf to watch ServingPlans",
        )

    async def stop_operator(self) -> None:
        while self.tasks:
            task, stop = self.tasks.pop()
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=20)

    async def kill_operator(self) -> None:
        """Stop abruptly (no graceful shutdown), as a crash or an OOM kill would."""
        while self.tasks:
            task, _ = self.tasks.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def until(self, check: Callable[[], Any], *, what: str, timeout: float = 180.0) -> Any:
        """Poll ``check`` (sync or async) until truthy; fail naming ``what`` after ``timeout``.

        ``timeout`` only stops a hang: it is no speed requirement. Emulators, kopf and the
        operator share one event loop, so on a loaded machine every API call is slow (seen:
        ~0.1 s a request, 5-9 s a reconcile pass with 2 cores shared by many runs, and the
        autoscale test timed out after 20 s while still converging)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = check()
            if isinstance(value, Awaitable):
                value = await value
            if value:
                return value
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    @staticmethod
    def request_for(docs: dict[str, dict[str, Any]]) -> PlanRequest:
        """The planner input the operator builds from these objects."""
        return PlanRequest(
            api.ServingPlan.model_validate(docs["ServingPlan"]),
            (api.PrefillCluster.model_validate(docs["PrefillCluster"]),),
            (api.DecodeCluster.model_validate(docs["DecodeCluster"]),),
            (api.InterDCLink.model_validate(docs["InterDCLink"]),),
        )

    # -- kubectl-like helpers -------------------------------------------------------------------

    async def create(self, obj: dict[str, Any]) -> None:
        obj = {
            **obj,
            "metadata": {
                **obj["metadata"],
                "resourceVersion": "1",
                "uid": str(uuid.uuid4()),
                "generation": 1,
            },
        }
        resp = await self.local.post(path_of(obj), json=obj)
        assert resp.status < 300, await resp.text()

    async def edit_spec(self, obj: dict[str, Any], patch: dict[str, Any]) -> None:
        """Merge-patch ``spec`` and bump ``generation`` (the emulator does not)."""
        name = obj["metadata"]["name"]
        live = self.get_cr(obj["kind"], name, obj["metadata"].get("namespace"))
        gen = (live or {}).get("metadata", {}).get("generation", 1) + 1
        resp = await self.local.patch(
            path_of(obj, name), json={"metadata": {"generation": gen}, "spec": patch}
        )
        assert resp.status < 300, await resp.text()

    async def delete(self, obj: dict[str, Any]) -> None:
        resp = await self.local.delete(path_of(obj, obj["metadata"]["name"]))
        assert resp.status < 300, await resp.text()

    def get_cr(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        cls = api.model_for_kind(kind)
        return find(
            self.local,
            f"{api.API_VERSION}/{cls.PLURAL}",
            namespace if cls.NAMESPACED else None,
            name,
        )

    @staticmethod
    def children(
        emulator: kmock.KubernetesEmulator,
        res: str = "apps/v1/deployments",
        plan: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Live objects of ``res`` carrying ``prfaas.io/plan`` (= ``plan`` if given), by name."""
        out = {}
        for (r, _, name), obj in list(emulator.objects.items()):
            if _res(r) != res or obj.deleted:
                continue
            labels = obj.raw.get("metadata", {}).get("labels") or {}
            if "prfaas.io/plan" in labels and (plan is None or labels["prfaas.io/plan"] == plan):
                out[name] = dict(obj.raw)
        return out

    def condition(self, name: str, type_: str, namespace: str = "default") -> dict[str, Any]:
        sp = self.get_cr("ServingPlan", name, namespace) or {}
        for cond in (sp.get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        return {}

    async def make_available(
        self, emulator: kmock.KubernetesEmulator, name: str, namespace: str
    ) -> None:
        """What the Deployment controller would write once every replica is up."""
        live = find(emulator, "apps/v1/deployments", namespace, name)
        assert live is not None, name
        n = live["spec"]["replicas"]
        resp = await emulator.patch(
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status",
            json={
                "status": {
                    "replicas": n,
                    "readyReplicas": n,
                    "availableReplicas": n,
                    "updatedReplicas": n,
                }
            },
        )
        assert resp.status < 300, await resp.text()


@pytest_asyncio.fixture()
async def world() -> AsyncIterator[World]:
    async with (
        VersionedEmulator() as local,
        kmock.Server(local),
        VersionedEmulator() as remote,
        kmock.Server(remote),
    ):
        declare(local, with_crds=True)
        declare(remote, with_crds=False)
        text = kubeconfig(str(remote.url))
        local.objects[("v1/secrets", OPERATOR_NS, SECRET)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": OPERATOR_NS, "resourceVersion": "1"},
            "data": {"kubeconfig": base64.b64encode(text.encode()).decode()},
        }
        w = World(local=local, remote=remote)
        try:
            yield w
        finally:
            await w.kill_operator()


class AnswersQueries(Protocol):
    """A fake Prometheus: ``answer(promql)`` gives (labels, value) pairs; ``url`` is set here."""

    url: str

    def answer(self, expr: str) -> list[tuple[dict[str, str], float]]: ...


@contextlib.asynccontextmanager
async def serve_fake_prometheus(fake: AnswersQueries) -> AsyncIterator[None]:
    """Serve ``fake`` as Prometheus' instant-query API on a free loopback port."""

    async def query(request: aiohttp.web.Request) -> aiohttp.web.Response:
        result = [
            {"metric": labels, "value": [0, str(v)]}
            for labels, v in fake.answer(request.query["query"])
        ]
        return aiohttp.web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    app = aiohttp.web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield
    finally:
        await runner.cleanup()
