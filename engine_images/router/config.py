"""The router's configuration: the file in the router ConfigMap, and how a ``Plan`` becomes one.

One router runs in front of each decode cluster. Its file (YAML or JSON, camelCase keys, key
``router.yaml`` in the ConfigMap) says where the engines are and how to route::

    version: 1
    model: tiny-llama                 # served model name (checked against requests)
    tokenizer: /models/tiny-llama     # path for AutoTokenizer; null: count UTF-8 bytes
    maxModelLen: 2048                 # longer prompts get a 400, bodies over 1 MiB + 16 B/token a
                                      # 413; null: not checked (bodies up to 64 MiB)
    localDatacenter: dc-b
    datacenters:
      dc-b: {prefill: [], decode: ["http://10.0.1.5:8000"]}   # no local PD-P: decode prefills
      dc-a: {prefill: ["http://10.0.0.7:8000"], decode: [],
             cacheBlocks: {prefill: 1646412}}  # an engine's KV memory in blocks (the plan's)
      # or, a convertible pool (kv_both engines, ``Plan.convertible``): the role of each
      # engine now. Rewriting it changes roles live (the router re-reads the file); a role
      # change drains the old role first (``policy``: leaving → joining → serving).
      # dc-b: {convertible: {"http://10.0.1.5:8000": decode, "http://10.0.1.6:8000": prefill}}
    links:                            # one per remote datacenter that may prefill for us
      dc-a: {name: dc-a-to-dc-b, capacityGbps: 1.0, headroom: 0.8}

A PrfaaS cluster inside the local datacenter is listed under its cluster name with a link of
unbounded capacity (``capacityGbps: null``), so long prompts still go to it and short ones to
the local PD-P pool.
    thresholdTokens: 256              # planned t; null: never offload
    kvBytesPerToken: 8192.0
    kvFixedBytes: 0.0
    blockSize: 16                     # the engines' KV block (--block-size): prefix hashes, and
                                      # the unit a KV transfer moves (whole blocks)
    prefixCacheBlocks: 65536          # LRU size of the prefix-cache model of an engine whose
                                      # datacenter gives no cacheBlocks for its role
    timeouts: {connectS: 5, prefillS: 60, decodeS: 600}
    discovery:                        # on Kubernetes: follow these pools' pods (optional)
      namespace: serving
      pools: [{datacenter: dc-b, role: decode, service: plan-pd-decode, port: 8000}]

``router_config_from_plan`` builds it from a ``Plan`` and the engines' URLs; the operator's
ConfigMap builder and ``prfaas up`` both call it, so the two never disagree. The router re-reads
the file when its modification time changes (``load_router_config``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from prfaas.planner.plan import Plan
from prfaas.planner.routing.threshold import DEFAULTS
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "CONFIGMAP_KEY",
    "AdmissionSettings",
    "CircuitSettings",
    "ControllerSettings",
    "DatacenterEndpoints",
    "DiscoveredPool",
    "DiscoverySettings",
    "HealthSettings",
    "LinkSettings",
    "PoolRole",
    "RouterConfig",
    "RouterConfigError",
    "Timeouts",
    "admission_from_plan",
    "dump_router_config",
    "load_router_config",
    "parse_router_config",
    "role_assignment",
    "router_config_from_plan",
]

CONFIGMAP_KEY = "router.yaml"
"""The key of the router's file in its ConfigMap (mounted at ``/etc/prfaas/router.yaml``)."""

PoolRole = Literal["prefill", "decode"]


class RouterConfigError(ValueError):
    """The router file is missing, unreadable or invalid; the message names the field to fix.

    (A ``ValueError`` so that callers outside the router can catch it without importing the
    router's error tree; ``prfaas.engine.router.errors.RouterError`` wraps it when serving.)
    """


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown keys rejected (typos fail loudly)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


class DatacenterEndpoints(_Model):
    """Base URLs (``http://host:port``) of the engine instances of one datacenter, by role."""

    prefill: list[str] = Field(default_factory=list)
    """Prefill-only instances: the PrfaaS cluster in a remote datacenter, the PD-P pool locally.
    Empty locally: short prompts go straight to a decode instance, which prefills itself."""
    decode: list[str] = Field(default_factory=list)
    """Decode instances (only the local datacenter's are used)."""
    convertible: dict[str, PoolRole] = Field(default_factory=dict)
    """``kv_both`` instances (URL → the role it serves now): each request's
    ``kv_transfer_params`` say which part it plays, so this map is a routing decision, changed
    without a restart (a role change drains the old role first)."""
    cache_blocks: dict[PoolRole, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """Prefix-cache capacity of one engine of each role here, in ``blockSize`` blocks: its KV
    memory (the plan's ``kvCacheTokens / blockSize``), so that the router's model of an engine's
    cache forgets a prefix when the engine does, not sooner. 0: the engines keep no prefix
    cache (affinity is off for them). A role absent: ``prefixCacheBlocks``. The model costs the
    router ~163 bytes per block it holds (an LRU entry and its 64-bit hash, measured; the case
    study's PrfaaS H200, 1.6M blocks of 16 tokens: ~270 MB per engine once full); on
    Kubernetes the router pod's memory grows with it (``builders.router_resources``)."""

    @model_validator(mode="after")
    def _check_once(self) -> DatacenterEndpoints:
        both = sorted(set(self.convertible) & (set(self.prefill) | set(self.decode)))
        if both:
            raise ValueError(
                f"{both} are listed under convertible and under prefill/decode: a kv_both "
                "engine's role is its convertible entry only; remove it from the lists"
            )
        return self


class LinkSettings(_Model):
    """The inter-datacenter link from one remote datacenter to the local one."""

    name: str = ""
    """The InterDCLink's name (metric label); defaults to ``<remote>-to-<local>``."""
    capacity_gbps: float | None = Field(default=None, ge=0)
    """Usable bandwidth, Gbit/s. 0 marks the link down (no remote prefill); ``None`` means
    unbounded (a prefill cluster inside the local datacenter: ``t`` never rises)."""
    headroom: float = Field(default=DEFAULTS.headroom, gt=0, le=1)
    """Fraction of capacity the router may fill with KV before raising ``t``."""
    down: bool = False
    """Set by an operator (or a failed probe) to stop offloading over this link."""


class Timeouts(_Model):
    """Per-leg timeouts, seconds."""

    connect_s: float = Field(default=5.0, gt=0)
    """TCP connect to an engine."""
    prefill_s: float = Field(default=60.0, gt=0)
    """The whole prefill call (``max_tokens=1``); a remote one that exceeds it falls back."""
    decode_s: float = Field(default=600.0, gt=0)
    """The whole decode call, streaming included."""
    first_byte_s: float = Field(default=60.0, gt=0)
    """Decode's first response byte (KV pull + first step)."""


class AdmissionSettings(_Model):
    """Overload protection: how much the router takes on at once, and how long it waits for a
    client to send its request."""

    max_in_flight: int | None = Field(default=None, gt=0)
    """Requests served at once; one more gets 429 with ``Retry-After`` before its body is read.
    ``None``: unbounded. From a plan: twice the decode seats (instances × max batch)."""
    retry_after_s: float = Field(default=1.0, gt=0)
    """``Retry-After`` of those 429s; from a plan, the time the bound takes to drain."""
    header_timeout_s: float = Field(default=15.0, gt=0)
    """A connection that has not sent a whole request head by then is closed (also the idle
    keep-alive timeout)."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """Reading one request body may take this long; slower gets 408."""


class ControllerSettings(_Model):
    """The bandwidth-aware threshold loop (``prfaas.planner.routing.ThresholdController``)."""

    window_s: float = Field(default=DEFAULTS.meter_window_s, gt=0)
    """Egress is averaged over this sliding window, seconds."""
    interval_s: float = Field(default=DEFAULTS.interval_s, gt=0)
    """``t`` moves at most once per interval, seconds."""
    raise_factor: float = Field(default=DEFAULTS.raise_factor, gt=1)
    decay_factor: float = Field(default=DEFAULTS.decay_factor, gt=0, lt=1)
    low_water: float = Field(default=DEFAULTS.low_water, gt=0, le=1)
    """Decay ``t`` only while egress < ``low_water × headroom × capacity``."""
    max_threshold_tokens: float = Field(default=DEFAULTS.max_threshold_tokens, gt=0)


class CircuitSettings(_Model):
    """When a remote link or an engine instance is considered down after failures."""

    failures: int = Field(default=3, ge=1)
    """Consecutive failed calls that open the circuit."""
    retry_after_s: float = Field(default=10.0, gt=0)
    """How long an open circuit stays open before one trial request is let through."""


class HealthSettings(_Model):
    """Background probes of every engine instance (``GET <url><path>``)."""

    enabled: bool = True
    interval_s: float = Field(default=5.0, gt=0)
    """Seconds between probe rounds."""
    timeout_s: float = Field(default=2.0, gt=0)
    path: str = "/health"
    """vLLM's health endpoint."""


class DiscoveredPool(_Model):
    """A pool whose instances the router follows on Kubernetes: the ready addresses in the
    EndpointSlices of ``service`` replace the URLs listed under ``datacenters``."""

    datacenter: str = Field(min_length=1)
    """The key under ``datacenters`` (the local datacenter, or a local PrfaaS cluster's key)."""
    role: PoolRole | Literal["convertible"]
    """``convertible``: ``kv_both`` engines; the router gives ``prefill`` of them role prefill
    and the rest decode (``discovery.assign_roles``: stable, least-busy engines move)."""
    prefill: int | None = Field(default=None, ge=0)
    """Convertible pools only: how many of the pool's engines prefill now (the split the
    planner or the autoscaler chose). Rewriting it changes roles live."""
    service: str = Field(min_length=1)
    """The engines' (headless) Service; its slices carry ``kubernetes.io/service-name``."""
    port: int = Field(default=8000, gt=0, lt=65536)
    """The engines' port, used when a slice does not name it."""

    @model_validator(mode="after")
    def _check_prefill(self) -> DiscoveredPool:
        if (self.role == "convertible") != (self.prefill is not None):
            raise ValueError(
                f"discovery pool {self.service!r}: prefill (how many engines prefill) is set for "
                "role convertible, and only for it"
            )
        return self


class DiscoverySettings(_Model):
    """Per-engine discovery (``prfaas.engine.router.discovery``): the router watches the
    EndpointSlices of its pools' Services in its own namespace, read-only."""

    namespace: str = Field(min_length=1)
    pools: list[DiscoveredPool] = Field(default_factory=list)
    api_server: str | None = None
    """``None``: the in-cluster API with the pod's service-account token (as deployed);
    a URL: that API server without credentials (tests, ``kubectl proxy``)."""
    retry_s: float = Field(default=2.0, gt=0)
    """Pause before re-listing after the watch ends or fails (seconds)."""


class RouterConfig(_Model):
    """Everything one router needs (see the module docstring for the file's shape)."""

    version: Literal[1] = 1
    model: str = Field(min_length=1)
    """Served model name; requests naming another model get a 404."""
    tokenizer: str | None = None
    """Path (or hub id, offline) of the served model's tokenizer; ``None``: UTF-8 byte count."""
    max_model_len: int | None = Field(default=None, gt=0)
    local_datacenter: str = Field(min_length=1)
    datacenters: dict[str, DatacenterEndpoints]
    links: dict[str, LinkSettings] = Field(default_factory=dict)
    """Keyed by remote datacenter name."""
    threshold_tokens: float | None = Field(default=None, ge=0)
    """Planned offload threshold ``t``: remote iff uncached prompt tokens > t. ``None``: never."""
    kv_bytes_per_token: float = Field(default=0.0, ge=0)
    kv_fixed_bytes: float = Field(default=0.0, ge=0)
    """KV bytes per request independent of its length (e.g. linear-attention state)."""
    block_size: int = Field(default=DEFAULTS.block_size, gt=0)
    """The engines' KV block (``spec.engine.blockSize``, vLLM ``--block-size``): the router hashes
    prompts in it and counts a remote request's KV bytes in whole blocks of it."""
    prefix_cache_blocks: int = Field(default=DEFAULTS.prefix_cache_blocks, gt=0)
    """Prefix-cache capacity (blocks) of an engine whose datacenter entry gives none
    (``cacheBlocks``)."""
    affinity_max_imbalance: int = Field(default=DEFAULTS.affinity_max_imbalance, ge=0)
    """Cache affinity wins unless that instance has this many more requests in flight than the
    least-loaded one."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    """A failed probe counts as a failed call (it can open a circuit); once probes opened it,
    the first passing probe closes it again."""
    discovery: DiscoverySettings | None = None
    """On Kubernetes: follow these pools' pods (EndpointSlices); ``None``: the listed URLs."""

    @model_validator(mode="after")
    def _check_datacenters(self) -> RouterConfig:
        if self.local_datacenter not in self.datacenters:
            raise ValueError(
                f"localDatacenter {self.local_datacenter!r} has no entry under datacenters "
                f"(have {sorted(self.datacenters)})"
            )
        unknown = sorted(set(self.links) - set(self.datacenters))
        if unknown:
            raise ValueError(f"links name datacenters with no endpoints: {unknown}")
        if self.local_datacenter in self.links:
            raise ValueError("links are keyed by *remote* datacenter; remove the local one")
        if self.discovery is not None:
            stray = sorted(
                {p.datacenter for p in self.discovery.pools} - set(self.datacenters)
            )
            if stray:
                raise ValueError(
                    f"discovery.pools name datacenters absent from datacenters: {stray}"
                )
        return self

    @property
    def remote_datacenters(self) -> list[str]:
        """Datacenters (other than the local one) that have prefill instances and a link."""
        return [
            dc
            for dc, eps in self.datacenters.items()
            if dc != self.local_datacenter and eps.prefill and dc in self.links
        ]

    def cache_blocks(self, datacenter: str, role: str) -> int:
        """Prefix-cache capacity (blocks) of one engine of ``role`` in ``datacenter``."""
        eps = self.datacenters.get(datacenter)
        sizes = {} if eps is None else eps.cache_blocks
        return next((n for r, n in sizes.items() if r == role), self.prefix_cache_blocks)

    def link(self, datacenter: str) -> LinkSettings:
        """The link settings of a remote datacenter, with its default name filled in."""
        s = self.links[datacenter]
        return (
            s
            if s.name
            else s.model_copy(update={"name": f"{datacenter}-to-{self.local_datacenter}"})
        )


def _plain(cfg: RouterConfig) -> dict[str, Any]:
    data = cfg.model_dump(by_alias=True, mode="json")
    for eps in data.get("datacenters", {}).values():
        for key in ("convertible", "cacheBlocks"):  # files without them stay as before
            if not eps.get(key):
                eps.pop(key, None)
    return data


def dump_router_config(cfg: RouterConfig, *, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """The file's text (what goes into the ConfigMap under ``CONFIGMAP_KEY``)."""
    data = _plain(cfg)
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False)


def parse_router_config(text: str, *, source: str = "<string>") -> RouterConfig:
    """Parse YAML or JSON text (JSON is YAML) into a validated config."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RouterConfigError(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RouterConfigError(f"{source}: expected a mapping at the top level")
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise RouterConfigError(f"{source}: invalid router config:\n{exc}") from exc


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate the router file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise RouterConfigError(f"cannot read router config {p}: {exc.strerror}") from exc
    return parse_router_config(text, source=str(p))


def admission_from_plan(plan: Plan, decode_cluster: str, decode_batch: int) -> AdmissionSettings:
    """The in-flight bound of the router in front of ``decode_cluster``: twice its decode seats
    (``instances × decode_batch``: as many again may be prefilling; a convertible pool counts
    all its engines), and a ``Retry-After`` of
    the time the plan's throughput takes to serve that many (Little's law), 1–60 s."""
    pool = plan.convertible_pool(decode_cluster)
    # A convertible pool: every engine may be given role decode, and the bound must not move
    # with the split (a new split is a reload, not a new router).
    instances = pool.instances if pool is not None else sum(
        c.instances for c in plan.clusters if c.name == decode_cluster and c.role == "decode"
    )
    bound = max(1, 2 * instances * decode_batch)
    rate = plan.throughput_rps
    drain = bound / rate if rate and math.isfinite(rate) and rate > 0 else 1.0
    return AdmissionSettings(
        max_in_flight=bound, retry_after_s=float(min(60, max(1, math.ceil(drain))))
    )


def role_assignment(urls: Sequence[str], prefill: int) -> dict[str, PoolRole]:
    """The initial role assignment of a convertible pool's engines (in their order): the first
    ``prefill`` of them prefill, the rest decode (``ConvertiblePool`` counts)."""
    if not 0 <= prefill < len(urls):
        raise RouterConfigError(
            f"a convertible pool of {len(urls)} engines cannot have {prefill} in role prefill "
            "(at least one must decode)"
        )
    return {url: ("prefill" if i < prefill else "decode") for i, url in enumerate(urls)}


def router_config_from_plan(
    plan: Plan,
    endpoints: Mapping[str, Mapping[PoolRole, Sequence[str]]],
    *,
    decode_cluster: str | None = None,
    model: str | None = None,
    tokenizer: str | None = None,
    max_model_len: int | None = None,
    block_size: int = 16,
    decode_batch: int | None = None,
    assignment: Mapping[str, PoolRole] | None = None,
    **settings: Any,
) -> RouterConfig:
    """The router config for the router in front of ``decode_cluster`` (default: the plan's first).

    ``endpoints`` maps *cluster name* → role → engine base URLs, e.g.
    ``{"local-decode": {"decode": ["http://10.0.1.5:8000"]},
    "local-prefill": {"prefill": ["http://10.0.0.7:8000"]}}`` — the operator passes its Service
    URLs, ``prfaas up`` its loopback/netns addresses. Datacenters come from ``plan.clusters``;
    ``t``, KV bytes and the remote prefill clusters from the plan's ``RouterPlan``; capacity and
    headroom from its ``LinkPlan``; each pool's ``cacheBlocks`` from its row's
    ``kv_cache_tokens``. ``decode_batch`` (a decode instance's max batch) sizes the
    in-flight bound from the plan's decode instances (``admission_from_plan``). Where the plan
    runs the decode cluster as a convertible pool of ``kv_both`` engines (``Plan.convertible``)
    at known URLs, ``assignment`` maps each to its role now (``role_assignment`` makes the
    plan's initial one); they go under ``convertible`` instead of ``prefill``/``decode``.
    Extra keyword ``settings`` (``timeouts=Timeouts(...)``,
    ``prefix_cache_blocks=...``) are passed to ``RouterConfig``.
    """
    if not plan.routers:
        raise RouterConfigError("the plan has no routers (is it feasible? see plan.reason)")
    if decode_cluster is None:
        rplan = plan.routers[0]
    else:
        matches = [r for r in plan.routers if r.decode_cluster == decode_cluster]
        if not matches:
            have = [r.decode_cluster for r in plan.routers]
            raise RouterConfigError(f"the plan has no router for {decode_cluster!r} (have {have})")
        rplan = matches[0]
    dc_of = {c.name: c.datacenter for c in plan.clusters}
    local_dc = dc_of.get(rplan.decode_cluster)
    if local_dc is None:
        raise RouterConfigError(f"decode cluster {rplan.decode_cluster!r} is not in plan.clusters")

    pools: dict[str, dict[str, list[str]]] = {local_dc: {"prefill": [], "decode": []}}
    caches: dict[str, dict[PoolRole, int]] = {}

    def cache(key: str, cluster: str, role: PoolRole) -> None:
        """An engine's prefix cache is its KV memory (the plan's ``kv_cache_tokens``); where
        one entry gathers several clusters, the smallest."""
        for c in plan.clusters:
            if c.name == cluster and c.role == role and c.kv_cache_tokens is not None:
                have = caches.setdefault(key, {})
                blocks = c.kv_cache_tokens // block_size
                have[role] = min(have.get(role, blocks), blocks)

    def add(cluster: str, role: PoolRole) -> None:
        urls = list(endpoints.get(cluster, {}).get(role, []))
        dc = dc_of.get(cluster)
        if dc is None:
            raise RouterConfigError(f"cluster {cluster!r} is not in plan.clusters")
        pool = pools.setdefault(dc, {"prefill": [], "decode": []})[role]
        pool.extend(u for u in urls if u not in pool)
        cache(dc, cluster, role)

    convertible: dict[str, PoolRole] = {}
    if assignment:
        if plan.convertible_pool(rplan.decode_cluster) is None:
            raise RouterConfigError(
                f"assignment given, but {rplan.decode_cluster!r} is not a convertible pool in "
                "the plan (its prefill and decode instances differ in accelerator, TP×PP or "
                "flags, or it lacks one of the roles): list its engines by role instead"
            )
        convertible = dict(assignment)
        for role in ("prefill", "decode"):
            cache(local_dc, rplan.decode_cluster, role)
        if "decode" not in convertible.values():
            raise RouterConfigError(
                f"the role assignment of {rplan.decode_cluster!r} leaves no decode instance "
                f"({convertible}): keep at least one engine in role decode"
            )
    else:  # separate prefill and decode engines (or a pool the router discovers)
        add(rplan.decode_cluster, "decode")
        add(rplan.decode_cluster, "prefill")  # the local PD-P pool, when the plan has one
    if not pools[local_dc]["decode"] and not convertible:
        raise RouterConfigError(
            f"no decode endpoints for {rplan.decode_cluster!r}: pass "
            f"endpoints[{rplan.decode_cluster!r}]['decode']"
        )
    links_by_name = {ln.name: ln for ln in plan.links}
    links: dict[str, LinkSettings] = {}
    for remote in rplan.remotes:
        dc = dc_of.get(remote.prefill_cluster)
        if dc is None:
            raise RouterConfigError(f"cluster {remote.prefill_cluster!r} is not in plan.clusters")
        if not remote.link or dc == local_dc:
            # A PrfaaS cluster inside the local datacenter: its own pool (long prompts go there,
            # short ones to PD-P), reached without an inter-DC link.
            key = remote.prefill_cluster
            if key in dc_of.values():
                key = f"{local_dc}/{key}"
            urls = list(endpoints.get(remote.prefill_cluster, {}).get("prefill", []))
            pools.setdefault(key, {"prefill": [], "decode": []})["prefill"].extend(urls)
            cache(key, remote.prefill_cluster, "prefill")
            links[key] = LinkSettings(name=f"{remote.prefill_cluster}-in-{local_dc}")
            continue
        add(remote.prefill_cluster, "prefill")
        lp = links_by_name.get(remote.link)
        if lp is None:
            raise RouterConfigError(f"router names link {remote.link!r}, absent from plan.links")
        links[dc] = LinkSettings(name=lp.name, capacity_gbps=lp.capacity_gbps, headroom=lp.headroom)
    t = rplan.threshold_tokens
    if decode_batch is not None and "admission" not in settings:
        settings["admission"] = admission_from_plan(plan, rplan.decode_cluster, decode_batch)
    return RouterConfig(
        model=model or plan.model,
        tokenizer=tokenizer,
        max_model_len=max_model_len,
        local_datacenter=local_dc,
        datacenters={
            dc: DatacenterEndpoints(
                **p,
                convertible=convertible if dc == local_dc else {},
                cache_blocks=caches.get(dc, {}),
            )
            for dc, p in pools.items()
        },
        links=links,
        threshold_tokens=None if t is None or not math.isfinite(t) else t,
        kv_bytes_per_token=rplan.kv_bytes_per_token,
        kv_fixed_bytes=rplan.kv_fixed_bytes,
        block_size=block_size,
        **settings,
    )
