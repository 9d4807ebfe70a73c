"""Per-engine discovery on Kubernetes: the router follows its engines' pods through the
EndpointSlices of their headless Services, so prefix affinity, the least-loaded choice, circuit
breaking and the KV meters act per pod, not per Service.

Who watches: the router, not the operator. A watch on EndpointSlices sees a pod come, go or turn
unready within a second; the operator reaches clusters by periodic resync (30 s), and a pushed
ConfigMap reaches a mounted file only after the kubelet's sync (up to a minute) and would roll
the routers (their pods carry the config's hash). The router's rights stay minimal: a Role in its
own namespace with get/list/watch on ``endpointslices`` (the operator's builders create it with
the router's ServiceAccount), no Secrets, no write verb, and no credentials for other clusters.
So the pools the router follows are those in its own namespace of its own cluster (the decode
cluster's prefill and decode pools, and a PrfaaS cluster deployed beside them); pools in another
Kubernetes cluster stay at their Service URL, because following them would mean handing the
remote kubeconfig to the router.

Protocol: list the namespace's EndpointSlices (filtered by ``kubernetes.io/service-name``), then
watch from the list's resourceVersion; when the watch ends, fails or answers 410 Gone, list
again after ``retry_s``. Each list replaces the known slices at once, so nothing deleted while
disconnected lingers. An endpoint is an instance while its ``conditions.ready`` is not false
(Kubernetes: unset means ready) and its ``conditions.terminating`` is not true;
``http://<address>:<port>`` is its URL. A pod that starts to leave (its preStop begins the
drain, ``prfaas.engine.vllm.drain``) turns terminating at once, and Kubernetes reports it not
ready too, unless its Service publishes not-ready addresses, where ``ready`` stays true and only
``terminating`` tells: either way it leaves the pool, so no new request goes to it, while the
requests already sent run to their end (the proxy holds their connections, not the pool).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prfaas.engine.router.config import (
    DatacenterEndpoints,
    DiscoveredPool,
    DiscoverySettings,
    RouterConfig,
)

__all__ = [
    "SERVICE_LABEL",
    "EndpointWatcher",
    "PoolKey",
    "apply_discovery",
    "assign_roles",
    "ready_urls",
]

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
"""The label Kubernetes puts on every EndpointSlice of a Service."""
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_PAGE = 250
"""Slices per list page (the API server's ``limit``)."""
_WATCH_TIMEOUT_S = 290
"""The API server ends each watch after this long; the router lists and watches again."""

PoolKey = tuple[str, str]
"""``(datacenter, role)``: a pool of the router file."""


def _slice_port(piece: Mapping[str, Any], fallback: int) -> int:
    ports = [p for p in piece.get("ports") or [] if p.get("port")]
    if any(p["port"] == fallback for p in ports):
        return fallback
    named = [p["port"] for p in ports if p.get("name") == "http"]
    if named:
        return int(named[0])
    return int(ports[0]["port"]) if len(ports) == 1 else fallback


def ready_urls(slices: Iterable[Mapping[str, Any]], pool: DiscoveredPool) -> list[str]:
    """The URLs of the ready, not terminating endpoints of ``pool``'s Service among ``slices``
    (sorted, once)."""
    urls: set[str] = set()
    for piece in slices:
        labels = (piece.get("metadata") or {}).get("labels") or {}
        if labels.get(SERVICE_LABEL) != pool.service:
            continue
        port = _slice_port(piece, pool.port)
        for endpoint in piece.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                urls.add(f"http://{host}:{port}")
    return sorted(urls)


def assign_roles(
    urls: Iterable[str],
    prefill: int,
    previous: Mapping[str, str],
    busy: Mapping[str, int] | None = None,
) -> dict[str, Literal["prefill", "decode"]]:
    """Roles for a convertible pool's engines: ``prefill`` of them prefill (at most all but one:
    a pool keeps a decode engine), the rest decode. Stable: an engine keeps its ``previous``
    role unless the count moved; then the engines holding the fewest requests (``busy``, then
    URL order) change, so the drain is short; a new engine takes the role that is short."""
    ordered = sorted(set(urls))
    target = max(0, min(prefill, len(ordered) - 1))
    load = busy or {}
    roles: dict[str, Literal["prefill", "decode"]] = {}
    for url in ordered:
        old = previous.get(url)
        if old == "prefill":
            roles[url] = "prefill"
        elif old == "decode":
            roles[url] = "decode"
    for url in ordered:
        if url not in roles:
            short = sum(r == "prefill" for r in roles.values()) < target
            roles[url] = "prefill" if short else "decode"

    def move(src: Literal["prefill", "decode"], dst: Literal["prefill", "decode"]) -> None:
        url = min((u for u in ordered if roles[u] == src), key=lambda u: (load.get(u, 0), u))
        roles[url] = dst

    while sum(r == "prefill" for r in roles.values()) > target:
        move("prefill", "decode")
    while sum(r == "prefill" for r in roles.values()) < target:
        move("decode", "prefill")
    return roles


def apply_discovery(
    config: RouterConfig,
    found: Mapping[PoolKey, list[str]],
    previous: Mapping[str, str] | None = None,
    busy: Mapping[str, int] | None = None,
) -> RouterConfig:
    """``config`` with each discovered pool's URLs replaced by what the watch found (pools not
    yet listed keep the URLs of the file). A convertible pool's engines get their roles from
    ``assign_roles`` (``previous``: the roles the router runs now, URL → role)."""
    if config.discovery is None or not found:
        return config
    datacenters = {dc: eps.model_dump() for dc, eps in config.datacenters.items()}
    replaced: set[PoolKey] = set()
    for pool in config.discovery.pools:
        key = (pool.datacenter, pool.role)
        if key not in found:
            continue
        if pool.role == "convertible":
            datacenters[pool.datacenter]["convertible"] = assign_roles(
                found[key], pool.prefill or 0, previous or {}, busy
            )
            continue
        urls = datacenters[pool.datacenter][pool.role]
        if key not in replaced:  # several Services may feed one pool
            urls.clear()
            replaced.add(key)
        urls.extend(u for u in found[key] if u not in urls)
    return config.model_copy(
        update={
            "datacenters": {
                dc: DatacenterEndpoints.model_validate(eps) for dc, eps in datacenters.items()
            }
        }
    )


class EndpointWatcher:
    """Keeps the EndpointSlices of ``settings.pools`` current and calls ``on_change`` with the
    ready URLs per pool whenever they change (and after the first list)."""

    def __init__(
        self,
        settings: DiscoverySettings,
        on_change: Callable[[dict[PoolKey, list[str]]], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self.slices: dict[str, dict[str, Any]] = {}
        self.found: dict[PoolKey, list[str]] = {}
        self.listed = asyncio.Event()
        """Set once the first list has answered (``found`` then covers every pool)."""
        self._session: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------------------- connection
    def _base(self) -> str:
        if self.settings.api_server is not None:
            return self.settings.api_server.rstrip("/")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError(
                "discovery: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset); set "
                "discovery.apiServer in the router file, or remove discovery"
            )
        return f"https://{host}:{port}"

    def _headers(self) -> dict[str, str]:
        if self.settings.api_server is not None:
            return {}
        # Bound service-account tokens rotate: read the file on every connection.
        token = (_SA_DIR / "token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.settings.api_server is not None:
            return False
        return ssl.create_default_context(cafile=str(_SA_DIR / "ca.crt"))

    def _path(self) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.settings.namespace}/endpointslices"

    def _params(self) -> dict[str, str]:
        services = ",".join(sorted({p.service for p in self.settings.pools}))
        return {"labelSelector": f"{SERVICE_LABEL} in ({services})"}

    # ---------------------------------------------------------------------------- loop
    async def run(self) -> None:
        """List and watch until cancelled; every failure is logged and retried."""
        # No total timeout (a watch is long-lived), but a read timeout above the server-side
        # watch timeout: a connection that went silent is dropped and listed again.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=_WATCH_TIMEOUT_S + 30
            )
        )
        try:
            while True:
                try:
                    version = await self._list()
                    await self._watch(version)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the API is down, 403, 410… list again
                    log.warning("discovery: %s; listing again in %gs", exc, self.settings.retry_s)
                await asyncio.sleep(self.settings.retry_s)
        finally:
            await self._session.close()
            self._session = None

    async def _list(self) -> str:
        """All matching slices, page by page (``limit``/``continue``); the list's version."""
        assert self._session is not None
        items: list[dict[str, Any]] = []
        params = {**self._params(), "limit": str(_PAGE)}
        while True:
            async with self._session.get(
                self._base() + self._path(),
                params=params,
                headers=self._headers(),
                ssl=self._ssl(),
            ) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    raise RuntimeError(f"list endpointslices: HTTP {resp.status} {text}")
                body = await resp.json()
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                break
            params = {**params, "continue": str(meta["continue"])}
        self.slices = {s["metadata"]["name"]: s for s in items if s.get("metadata")}
        await self._publish(first=not self.listed.is_set())
        self.listed.set()
        return str(meta.get("resourceVersion") or "")

    async def _watch(self, version: str) -> None:
        assert self._session is not None
        params = {
            **self._params(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(_WATCH_TIMEOUT_S),
        }
        if version:
            params["resourceVersion"] = version
        async with self._session.get(
            self._base() + self._path(), params=params, headers=self._headers(), ssl=self._ssl()
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"watch endpointslices: HTTP {resp.status}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise RuntimeError(f"watch ended: {obj.get('message', obj)}")
                name = (obj.get("metadata") or {}).get("name")
                if kind == "BOOKMARK" or not name:
                    continue
                if kind == "DELETED":
                    self.slices.pop(name, None)
                else:
                    self.slices[name] = obj
                await self._publish()

    async def _publish(self, *, first: bool = False) -> None:
        found: dict[PoolKey, list[str]] = {}
        for pool in self.settings.pools:
            key = (pool.datacenter, pool.role)
            urls = found.setdefault(key, [])
            urls.extend(u for u in ready_urls(self.slices.values(), pool) if u not in urls)
        if found == self.found and not first:
            return
        self.found = found
        try:
            await self.on_change(found)
        except Exception:  # a bad list must not end the watch
            log.exception("discovery: applying the instance list failed")
