"""Per-cluster Kubernetes API clients: a small asyncio client on aiohttp, and the pool of them.

Why aiohttp and not the ``kubernetes`` package's client: the operator runs in kopf's event loop
and talks to several API servers at once; the official client is synchronous (a thread per
call) and its ``create_*`` returned ``None`` against the emulator. We still use the official
package for the part it is good at: turning a kubeconfig (certificates, tokens, in-cluster
service account) into a ``Configuration``, from which ``ClusterClient.from_configuration``
takes host, TLS and the bearer token.

Every call names a ``Kind`` and a verb; ``KINDS`` declares which verbs the operator uses on which
kind, a call with an undeclared verb fails, and the Helm chart's RBAC is checked against
``rbac_rules()`` by a test — so the chart grants exactly what the code uses.

A cluster whose ``target.kubeconfigSecretRef`` is set is reached through a client built from
that Secret; ``ClientPool`` caches it by the Secret's content and rebuilds it when it changes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from prfaas.operator.api import models as api
from prfaas.operator.api.messages import safe_message

__all__ = [
    "KINDS",
    "ApiError",
    "ClientPool",
    "ClusterClient",
    "Kind",
    "KubeconfigRefused",
    "OperatorError",
    "Unreachable",
    "check_kubeconfig",
    "kind_of",
    "rbac_rules",
    "workload_rules",
]

log = logging.getLogger(__name__)


class OperatorError(Exception):
    """Base of the operator's errors.

    OperatorError
    ├── ApiError            an API server answered with an error status
    │   └── Unreachable     no answer at all (DNS, TCP, TLS, timeout) or a bad kubeconfig
    ├── builders.BuildError the plan and the specs do not fit together
    └── apply.ApplyError    an object exists but is not ours (missing our labels)
    """


class ApiError(OperatorError):
    """An error status from an API server; ``status`` is the HTTP code."""

    reason = "Unreachable"
    """The ``reason`` of a cluster's ``Reachable`` condition when this error stops its probe."""

    def __init__(self, cluster: str, status: int, message: str) -> None:
        super().__init__(f"{cluster}: HTTP {status}: {message}")
        self.cluster = cluster
        self.status = status
        self.message = message


class Unreachable(ApiError):
    """The API server of a cluster cannot be reached, or its kubeconfig is unusable."""

    def __init__(self, cluster: str, message: str) -> None:
        super().__init__(cluster, 0, message)


class KubeconfigRefused(Unreachable):
    """A kubeconfig Secret asks for something the operator will not do on a tenant's behalf
    (run a command, read one of its own files) or is not readable text."""

    reason = "KubeconfigRefused"


@dataclass(frozen=True, slots=True)
class Kind:
    """One API resource and the verbs the operator uses on it (the RBAC source of truth)."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    verbs: frozenset[str]
    workload: bool = False
    """A child the operator writes in the target namespaces of clusters (the chart can bind
    these verbs in a list of namespaces only: ``operator.workloadNamespaces``)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


def _kind(
    kind: str,
    api_version: str,
    plural: str,
    namespaced: bool,
    verbs: str,
    workload: bool | None = None,
) -> Kind:
    group, _, version = api_version.rpartition("/")
    return Kind(
        kind,
        group,
        version,
        plural,
        namespaced,
        frozenset(verbs.split()),
        verbs == _CHILD_VERBS if workload is None else workload,
    )


# Children: get (compare with the desired object), create/patch (apply), list + delete (prune
# what a plan no longer wants). Nothing watches them: the resync timer re-reads their status.
_CHILD_VERBS = "get list create patch delete"
_CR_VERBS = "get list watch patch"

KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        # Children.
        _kind("Deployment", "apps/v1", "deployments", True, _CHILD_VERBS),
        _kind("Service", "v1", "services", True, _CHILD_VERBS),
        _kind("ConfigMap", "v1", "configmaps", True, _CHILD_VERBS),
        _kind(
            "LeaderWorkerSet", "leaderworkerset.x-k8s.io/v1", "leaderworkersets", True, _CHILD_VERBS
        ),
        _kind("PodMonitor", "monitoring.coreos.com/v1", "podmonitors", True, _CHILD_VERBS),
        # The router's identity for per-engine discovery: a ServiceAccount and a Role (read
        # EndpointSlices in its namespace) bound to it.
        _kind("ServiceAccount", "v1", "serviceaccounts", True, _CHILD_VERBS),
        _kind("Role", "rbac.authorization.k8s.io/v1", "roles", True, _CHILD_VERBS),
        _kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings", True, _CHILD_VERBS),
        # Never read by the operator: Kubernetes lets it grant the routers' Role only if it
        # holds these verbs itself (RBAC escalation prevention). Bound where children are.
        _kind(
            "EndpointSlice",
            "discovery.k8s.io/v1",
            "endpointslices",
            True,
            "get list watch",
            workload=True,
        ),
        # Our custom resources (kopf watches and patches them; we patch their status).
        _kind("ServingPlan", api.API_VERSION, "servingplans", True, _CR_VERBS),
        _kind("PrefillCluster", api.API_VERSION, "prefillclusters", False, _CR_VERBS),
        _kind("DecodeCluster", api.API_VERSION, "decodeclusters", False, _CR_VERBS),
        _kind("InterDCLink", api.API_VERSION, "interdclinks", False, _CR_VERBS),
        # Reading: kubeconfig Secrets, GPU capacity of nodes.
        _kind("Secret", "v1", "secrets", True, "get"),
        _kind("Node", "v1", "nodes", False, "list"),
        # kopf itself: namespaces and CRDs for its discovery, Events it posts.
        _kind("Namespace", "v1", "namespaces", False, "list watch"),
        _kind(
            "CustomResourceDefinition",
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            False,
            "list watch",
        ),
        _kind("Event", "v1", "events", True, "create"),
    )
}
"""Every kind the operator (and kopf on its behalf) touches, with the verbs it uses."""

# Sub-resources we write: ``<plural>/status`` of our CRs.
_STATUS_VERBS = {"servingplans", "prefillclusters", "decodeclusters", "interdclinks"}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The ``Kind`` of a manifest (``KeyError`` for a kind the operator does not manage)."""
    kind = KINDS[obj["kind"]]
    if kind.api_version != obj["apiVersion"]:
        raise KeyError(f"{obj['kind']} is served as {kind.api_version}, not {obj['apiVersion']}")
    return kind


def workload_rules() -> list[dict[str, Any]]:
    """The rules on children (``Kind.workload``): the chart binds them cluster-wide, or only in
    ``operator.workloadNamespaces``."""
    return _rules(k for k in KINDS.values() if k.workload)


def rbac_rules() -> list[dict[str, Any]]:
    """Rules granting exactly ``KINDS``' verbs (plus ``patch`` on our status)."""
    rules = _rules(KINDS.values())
    rules.append(
        {
            "apiGroups": [api.GROUP],
            "resources": sorted(f"{p}/status" for p in _STATUS_VERBS),
            "verbs": ["patch"],
        }
    )
    return rules


def _rules(kinds: Iterable[Kind]) -> list[dict[str, Any]]:
    by_group: dict[tuple[str, frozenset[str]], list[str]] = {}
    for k in kinds:
        by_group.setdefault((k.group, k.verbs), []).append(k.plural)
    rules = [
        {"apiGroups": [group], "resources": sorted(plurals), "verbs": sorted(verbs)}
        for (group, verbs), plurals in sorted(
            by_group.items(), key=lambda i: (i[0][0], sorted(i[0][1]))
        )
    ]
    return rules


# ----------------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------------

_RETRIED = {429, 500, 502, 503, 504}


@dataclass(slots=True)
class ClusterClient:
    """Async access to one API server. Create inside the running loop; ``close()`` when done.

    Transient answers (429, 5xx) and connection errors are retried ``retries`` times with
    ``backoff`` seconds doubling; after that ``Unreachable``/``ApiError`` propagate.
    """

    name: str
    server: str
    headers: dict[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | bool = True
    retries: int = 3
    backoff: float = 0.1
    timeout: float = 30.0
    max_answer_bytes: int = 32 << 20
    """Largest answer read (one list page included); more is an error, not memory growth."""
    page_size: int = 250
    """Objects per list page (``limit``/``continue``), so a cluster with thousands of Nodes is
    read a page at a time."""
    namespaces: frozenset[str] | None = None
    """The only namespaces whose children (``Kind.workload``) this client touches, when the
    operator's RBAC grants them there only (``operator.workloadNamespaces``); ``None``: all."""
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def from_configuration(cls, name: str, cfg: Any, **kw: Any) -> ClusterClient:
        """From a ``kubernetes.client.Configuration`` (kubeconfig or in-cluster)."""
        headers: dict[str, str] = {}
        token = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix(
            "BearerToken"
        )
        if token:
            headers["Authorization"] = token
        ctx: ssl.SSLContext | bool
        if not cfg.verify_ssl:
            ctx = False
        else:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(name=name, server=cfg.host.rstrip("/"), headers=headers, ssl_context=ctx, **kw)

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.ssl_context),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        verb: str,
        kind: Kind,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON, raises ``ApiError``/``Unreachable``."""
        if verb not in kind.verbs:
            raise OperatorError(
                f"the operator does not declare verb {verb!r} on {kind.plural}; add it to "
                "prfaas.operator.controller.clients.KINDS (and the chart's RBAC follows)"
            )
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                async with self._sess().request(
                    method, self.server + path, data=data, headers=headers, params=params
                ) as resp:
                    text = await _read_bounded(resp, self.max_answer_bytes, self.name, path)
                    if resp.status < 400:
                        return json.loads(text) if text else None
                    if resp.status in _RETRIED and attempt < self.retries:
                        log.debug("%s %s on %s: %s, retrying", method, path, self.name, resp.status)
                    else:
                        raise ApiError(self.name, resp.status, _message(text))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt >= self.retries:
                    raise Unreachable(self.name, f"{method} {path}: {exc!r}") from exc
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_namespace(self, kind: Kind, namespace: str | None) -> None:
        if self.namespaces is not None and kind.workload and namespace not in self.namespaces:
            allowed = ", ".join(sorted(self.namespaces)) or "none"
            raise ApiError(
                self.name,
                403,
                f"namespace {namespace!r} is outside the operator's workloadNamespaces "
                f"({allowed}); add it to the chart value operator.workloadNamespaces or target "
                "one of those",
            )

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._check_namespace(kind, namespace)
        try:
            out: dict[str, Any] = await self.request("get", kind, "GET", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return out

    async def list_objects(
        self, kind: Kind, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` whose labels include ``labels`` (filtered here too: some servers,
        the emulator among them, ignore ``labelSelector``). A kind not served lists as empty."""
        if namespace is None and kind.workload and self.namespaces is not None:
            return [
                item
                for ns in sorted(self.namespaces)
                for item in await self.list_objects(kind, ns, labels)
            ]
        self._check_namespace(kind, namespace)
        params = {"limit": str(self.page_size)}
        if labels:
            params["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        items: list[dict[str, Any]] = []
        while True:
            try:
                out = await self.request("list", kind, "GET", kind.path(namespace), params=params)
            except ApiError as exc:
                if exc.status == 404:
                    return []
                raise
            out = out if isinstance(out, dict) else {}
            for i in out.get("items") or []:
                if i and (
                    not labels
                    or all(
                        (i.get("metadata", {}).get("labels") or {}).get(k) == v
                        for k, v in labels.items()
                    )
                ):
                    items.append(i)
            token = (out.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": str(token)}

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind = kind_of(obj)
        ns = obj["metadata"].get("namespace")
        self._check_namespace(kind, ns)
        out = await self.request("create", kind, "POST", kind.path(ns), body=obj)
        return out or dict(obj)

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        content_type: str = "application/merge-patch+json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self._check_namespace(kind, namespace)
        path = kind.path(namespace, name) + (f"/{subresource}" if subresource else "")
        if subresource and kind.plural not in _STATUS_VERBS:
            raise OperatorError(f"the operator does not write {kind.plural}/{subresource}")
        out: dict[str, Any] = await self.request(
            "patch", kind, "PATCH", path, body=body, content_type=content_type, params=params
        )
        return out

    async def apply(self, obj: Mapping[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply (``force``: we own the fields we set)."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        return await self.patch(
            kind,
            meta.get("namespace"),
            meta["name"],
            obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": field_manager, "force": "true"},
        )

    async def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete (background propagation); ``False`` if it was already gone."""
        self._check_namespace(kind, namespace)
        try:
            await self.request(
                "delete",
                kind,
                "DELETE",
                kind.path(namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def serves(self, kind: Kind) -> bool:
        """Whether the API server serves ``kind`` (e.g. is the PodMonitor CRD installed)."""
        base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        try:
            async with self._sess().get(self.server + base, headers=self.headers) as resp:
                if resp.status >= 400:
                    return False
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False
        return any(r.get("name") == kind.plural for r in (doc or {}).get("resources", []))


async def _read_bounded(
    resp: aiohttp.ClientResponse, limit: int, cluster: str, path: str
) -> str:
    """The answer's text, refused past ``limit`` bytes (by Content-Length, or while reading)."""
    too_big = f"{path}: the answer is over the operator's limit of {limit} bytes"
    if resp.content_length is not None and resp.content_length > limit:
        raise ApiError(cluster, 507, too_big)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ApiError(cluster, 507, too_big)
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _message(text: str) -> str:
    """An API server's error message, redacted and bounded (it may be anyone's server)."""
    try:
        doc = json.loads(text) if len(text) < 1 << 20 else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        text = str(doc.get("message") or doc.get("reason") or text)
    return safe_message(text, 300)


# ----------------------------------------------------------------------------------------------
# The pool
# ----------------------------------------------------------------------------------------------


_KUBECONFIG_MAX_BYTES = 1 << 20
"""A kubeconfig with a few clusters and certificates is a few KiB; more is refused unread."""
_USER_KEYS = frozenset({"token", "client-certificate-data", "client-key-data"})
_CLUSTER_KEYS = frozenset(
    {"server", "certificate-authority-data", "insecure-skip-tls-verify", "tls-server-name"}
)
_CONTEXT_KEYS = frozenset({"cluster", "user", "namespace"})
_WHY_REFUSED = {
    "exec": "runs a command inside the operator",
    "auth-provider": "runs an auth-provider plugin inside the operator",
    "tokenFile": "reads a file of the operator's (its own ServiceAccount token, say)",
    "client-certificate": "reads a file of the operator's",
    "client-key": "reads a file of the operator's",
    "certificate-authority": "reads a file of the operator's",
    "username": "is basic auth (not accepted)",
    "password": "is basic auth (not accepted)",
    "proxy-url": "sends the operator's traffic through a proxy the Secret names",
}


def check_kubeconfig(cluster: str, data: Any) -> None:
    """Refuse (``KubeconfigRefused``) a kubeconfig that is more than inline credentials.

    A kubeconfig Secret is tenant input to a process holding the operator's own credentials:
    ``exec``/``auth-provider`` would run code in it, and ``tokenFile`` or a certificate path
    with an attacker's ``server`` would send the operator's files away. Only ``token``,
    ``client-certificate-data``/``client-key-data``, ``certificate-authority-data`` and an
    http(s) ``server`` are accepted; every entry is checked, not just the current context's.
    """

    def refuse(where: str, key: str) -> KubeconfigRefused:
        why = _WHY_REFUSED.get(key, "is not one of the accepted inline fields")
        return KubeconfigRefused(
            cluster,
            f"kubeconfig refused: {where} sets {key!r}, which {why}; put only inline credentials "
            "in the Secret (token, client-certificate-data and client-key-data, "
            "certificate-authority-data)",
        )

    if not isinstance(data, dict):
        raise KubeconfigRefused(cluster, "kubeconfig refused: not a mapping (kind: Config)")
    sections = (
        ("users", "user", _USER_KEYS),
        ("clusters", "cluster", _CLUSTER_KEYS),
        ("contexts", "context", _CONTEXT_KEYS),
    )
    for section, inner, allowed in sections:
        entries = data.get(section) or []
        if not isinstance(entries, list):
            raise KubeconfigRefused(cluster, f"kubeconfig refused: {section} is not a list")
        for i, entry in enumerate(entries):
            body = entry.get(inner) if isinstance(entry, dict) else None
            if not isinstance(body, dict):
                raise KubeconfigRefused(
                    cluster, f"kubeconfig refused: {section}[{i}].{inner} is not a mapping"
                )
            for key in body:
                if key not in allowed:
                    raise refuse(f"{section}[{i}].{inner}", str(key))
            server = body.get("server")
            if inner == "cluster" and not (
                isinstance(server, str) and server.startswith(("https://", "http://"))
            ):
                raise KubeconfigRefused(
                    cluster,
                    f"kubeconfig refused: {section}[{i}].cluster.server must be an http(s) URL",
                )


def _client_from_kubeconfig(name: str, text: str, **kw: Any) -> ClusterClient:
    """Build a client from kubeconfig text, after ``check_kubeconfig`` (the kubernetes package
    then resolves the inline certificates and token)."""
    import kubernetes

    if len(text) > _KUBECONFIG_MAX_BYTES:
        raise KubeconfigRefused(name, f"kubeconfig refused: over {_KUBECONFIG_MAX_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The YAML error quotes the offending line, which may hold the token: say only where.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigRefused(name, f"kubeconfig is not valid YAML{where}") from exc
    check_kubeconfig(name, data)
    try:
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config_from_dict(data, client_configuration=cfg)
    except Exception as exc:  # the loader raises many types; all mean "unusable kubeconfig"
        raise Unreachable(name, f"kubeconfig is unusable: {type(exc).__name__}") from exc
    return ClusterClient.from_configuration(name, cfg, **kw)


@dataclass(slots=True)
class ClientPool:
    """The local client plus one client per kubeconfig Secret, cached by the Secret's content."""

    local: ClusterClient
    namespace: str = "default"
    """Where ``kubeconfigSecretRef`` Secrets live when they name no namespace (the operator's)."""
    client_options: dict[str, Any] = field(default_factory=dict)
    _remote: dict[tuple[str, str, str], tuple[str, ClusterClient]] = field(default_factory=dict)

    def key(self, target: api.Target) -> str:
        """``local``, or ``namespace/secret/key`` naming the API server a target lives in."""
        ref = target.kubeconfig_secret_ref
        if ref is None:
            return "local"
        return f"{ref.namespace or self.namespace}/{ref.name}/{ref.key}"

    async def client_for(self, cluster: str, target: api.Target) -> ClusterClient:
        """The client for ``target``; ``Unreachable`` when its Secret is missing or unusable."""
        ref = target.kubeconfig_secret_ref
        if ref is None:
            return self.local
        ns = ref.namespace or self.namespace
        secret = await self.local.get(KINDS["Secret"], ns, ref.name)
        if secret is None:
            raise Unreachable(cluster, f"Secret {ns}/{ref.name} (kubeconfigSecretRef) not found")
        raw = (secret.get("data") or {}).get(ref.key)
        try:
            text = (
                base64.b64decode(raw, validate=True).decode()
                if raw
                else (secret.get("stringData") or {}).get(ref.key)
            )
        except (ValueError, TypeError) as exc:  # binascii.Error and UnicodeDecodeError
            raise KubeconfigRefused(
                cluster, f"Secret {ns}/{ref.name} key {ref.key!r} is not base64 of UTF-8 text"
            ) from exc
        if not isinstance(text, str) or not text:
            raise Unreachable(cluster, f"Secret {ns}/{ref.name} has no key {ref.key!r}")
        digest = hashlib.sha256(text.encode()).hexdigest()
        cache_key = (ns, ref.name, ref.key)
        cached = self._remote.get(cache_key)
        if cached is not None and cached[0] == digest:
            return cached[1]
        client = await asyncio.to_thread(
            _client_from_kubeconfig, cluster, text, **self.client_options
        )
        if cached is not None:
            log.info("kubeconfig Secret %s/%s changed; rebuilt the client", ns, ref.name)
            await cached[1].close()
        self._remote[cache_key] = (digest, client)
        return client

    async def all_clients(self) -> list[ClusterClient]:
        return [self.local, *(c for _, c in self._remote.values())]

    async def close(self) -> None:
        for client in await self.all_clients():
            await client.close()
        self._remote.clear()
