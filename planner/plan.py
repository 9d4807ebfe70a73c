"""The ``Plan``: what the planner decided, in the one shape the operator, router and CLI read.

``Plan.to_dict()`` is the stable JSON form (camelCase keys, version 1) written to
``ServingPlan.status.plan``, printed by ``prfaas plan --output json`` and rendered into each
router's ConfigMap. ``Plan.from_dict()`` reads it back. Add fields only with defaults, so an
older reader keeps working.

With several decode clusters every router has its own threshold (``routers[].thresholdTokens``,
the one each router applies; ``planner.multicluster``). The plan-level ``thresholdTokens`` is
then the threshold of the largest offloading decode cluster (most GPUs; null only when no
cluster offloads), kept as a summary for status columns and events. ``offloadFraction``,
``lLong`` and ``lShort`` are then aggregates over the clusters: the offloaded share of
``throughputRps``, and the request-weighted means of the offloaded and of the local lengths.

Shape (version 1), as ``prfaas plan crds/samples/case-study.yaml -o json`` prints it::

    {
      "version": 1,
      "feasible": true,                 # false: "reason" says why and how to fix it; the
      "reason": "",                     #   other fields are then defaults
      "model": "hybrid-1t",
      "thresholdTokens": 19232.6,       # t on the *uncached* length; null: no offload (t = inf);
                                        #   several decode clusters: the largest offloading one's
      "offloadFraction": 0.499,         # p = P(uncached length > t)
      "lLong": 44862.1, "lShort": 10158.9,   # E[L | L > t], E[L | L <= t] (tokens)
      "throughputRps": 3.337,           # predicted Lambda_max (saturation rate, Eq. 6)
      "bottleneck": "pd-prefill",       # prfaas | pd-prefill | pd-decode | link
      "stages": {                       # req/s; prfaas/prfaasCompute/link only with offload
        "pdPrefill": 1.671,             #   Theta_pd-p, summed over decode clusters (Eq. 4)
        "pdDecode": 3.906,              #   Theta_pd-d (Eq. 5)
        "prfaas": 1.666,                #   Theta_prfaas = min(compute, bandwidth) (Eq. 3, max-flow)
        "prfaasCompute": 1.666,         #   N_prfaas / T_prefill(l_long)
        "link": 10.46},                 #   what headroom x bandwidth alone could carry
      "kvBytesPerToken": 17280.0, "kvFixedBytes": 180690944.0,   # S_kv(l) = fixed + l x per-token
      "dtypeBytes": 2,                  # bytes per KV element S_kv assumes; engines run with it
                                        #   pinned (4: float32, 2: bfloat16, 1: fp8 KV cache)
      "clusters": [                     # one row per (cluster, role) with instances; a decode
        {"name": "pd-h20", "datacenter": "dc-b", "role": "decode",   # cluster has a "prefill"
         "accelerator": "H20", "instances": 5,                       # row (PD-P) and a "decode"
         "tensorParallel": 8, "pipelineParallel": 1,                 # row (PD-D)
         "gpusPerInstance": 8, "gpus": 40,
         "latencySource": "published",      # measured | published | fit | roofline
         "maxNumSeqs": 64, "maxNumBatchedTokens": 8192,    # the vLLM flags (engine_images/vllm/
         "gpuMemoryUtilization": 0.9, "kvCacheTokens": 3000000,    # launch.py), also simulated
         "pinned": false,
         "aggregated": false}],         # true: the cluster's one row, an aggregated pool whose
                                        #   maxNumBatchedTokens is the chosen token budget
      "links": [{"name": "dc-a-to-dc-b", "from": "dc-a", "to": "dc-b", "capacityGbps": 100,
                 "headroom": 0.8, "egressGbps": 12.74,     # predicted KV egress at Lambda_max
                 "predictedEgressGbps": null}],   # simulated, at predicted.rateRps
      "routers": [{"decodeCluster": "pd-h20", "thresholdTokens": 19232.6,   # this router's t;
                                                                             # null: all local
                   "kvBytesPerToken": 17280.0, "kvFixedBytes": 180690944.0,
                   "remotes": [{"prefillCluster": "prfaas-h200", "link": "dc-a-to-dc-b"}],
                   "rateRps": 3.337,            # Λ_d: this cluster's part of throughputRps
                   "predicted": null}],         # several decode clusters: simulated, its own
      "predicted": {"ttftP90S": 3.5, "tpotP90S": 0.04, "attainment": 0.95,
                    "rateRps": 2.0, "goodputRps": 3.0,    # null until simulated
                    "offloadFraction": 0.5},
      "baselines": [{"name": "homogeneous-pd", "throughputRps": 2.026, "ratio": 1.65,
                     "gpus": 96, "note": "...", "predicted": null}],
                     # names: homogeneous-pd, naive-heterogeneous, homogeneous-pd-equal-cost;
                     # ratio = this plan's throughputRps / the baseline's
      "notes": ["..."],                 # provenance of every input and latency model
      "dataPlaneS": {"local": 0.01, "remote": 0.12},   # measured per-request data-plane cost
                                        #   per path (profile's dataPlane); {} when none
      "convertible": [{"decodeCluster": "pd-h20", "datacenter": "dc-b",   # roles one pool of
                       "prefill": 2, "decode": 3}],   # kv_both engines serves; the counts are
                                                      # the initial role assignment (derived from
                                                      # clusters, see ``ConvertiblePool``)
      "shapes": [{"decodeCluster": "pd-h20", "shape": "disaggregated+offload",
                  "instances": 5, "gpus": 96, "goodputRps": 3.34, "goodputPerGpu": 0.0348,
                  "costPerHour": 281.0, "goodputPerCost": 0.0119,   # req/s per USD/h
                  "tokenBudget": null,          # aggregated: the chosen max_num_batched_tokens
                  "thresholdTokens": 19232.6, "deployable": true, "chosen": true,
                  "limit": ""}]                 # one row per (decode cluster, shape) compared
    }
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

__all__ = [
    "PLAN_VERSION",
    "Baseline",
    "ClusterPlan",
    "ConvertiblePool",
    "LinkPlan",
    "Plan",
    "Predicted",
    "RemotePrefill",
    "Role",
    "RouterPlan",
    "ShapeOption",
]

PLAN_VERSION = 1

Role = Literal["prefill", "decode"]
"""``prefill`` instances only prefill (in a PrefillCluster they are PrfaaS instances, in a
DecodeCluster they are its local PD-P); ``decode`` instances are PD-D."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_SPECIAL = {"from_": "from", "ttft_p90_s": "ttftP90S", "tpot_p90_s": "tpotP90S"}


def _key(name: str) -> str:
    return _SPECIAL.get(name, _camel(name))


def _dump(value: Any) -> Any:
    """Dataclasses → camelCase dicts; non-finite floats → ``null`` (JSON has no infinity)."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {_key(f.name): _dump(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, ClusterPlan):
            out["gpusPerInstance"] = value.gpus_per_instance
            out["gpus"] = value.gpus
        return out
    if isinstance(value, dict):
        return {_key(k): _dump(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _from_json(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Map camelCase keys back to the dataclass's field names, ignoring unknown keys."""
    by_key = {_key(f.name): f.name for f in fields(cls)}
    return {by_key[k]: v for k, v in data.items() if k in by_key}


@dataclass(slots=True)
class ClusterPlan:
    """Instances of one role in one cluster."""

    name: str
    datacenter: str
    role: Role
    accelerator: str
    instances: int
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    latency_source: str = "roofline"
    """Where the latency model for this role came from: ``measured``, ``published``, ``fit`` or
    ``roofline``."""
    max_num_seqs: int | None = None
    """vLLM ``--max-num-seqs``: the decode batch the planner sized (TPOT SLO, memory,
    ``engine.maxBatchSize``); the simulator caps decode batches at it. ``None``: vLLM's default."""
    max_num_batched_tokens: int | None = None
    """vLLM ``--max-num-batched-tokens`` (``engine.maxNumBatchedTokens``): the prefill token
    budget of one step, in the simulator too."""
    gpu_memory_utilization: float | None = None
    """vLLM ``--gpu-memory-utilization``: the memory fraction for weights + KV."""
    kv_cache_tokens: int | None = None
    """KV capacity of one instance in tokens at that fraction (memory after weights / KV bytes
    per token): what vLLM will find, and the simulator's decode admission limit."""
    pinned: bool = False
    """``instances`` was fixed by ``spec.pins``, not chosen by the planner."""
    aggregated: bool = False
    """A decode row deployed as an aggregated pool (``shapes`` chose ``aggregated`` or
    ``aggregated+offload`` for the cluster; it then has no prefill row): every instance
    prefills its local prompts by chunked prefill within ``max_num_batched_tokens`` (the
    shape's token budget) and decodes them, and decodes the remote-prefilled ones with the KV
    PrfaaS sends (``kv_both`` engines, role ``aggregated`` in ``engine_images/vllm/launch.py``).
    ``False`` (older plans): a PD-D row, or a colocated one where no prefill row exists."""

    @property
    def gpus_per_instance(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def gpus(self) -> int:
        return self.instances * self.gpus_per_instance


def _flags(cp: ClusterPlan) -> tuple[object, ...]:
    return (
        cp.accelerator,
        cp.tensor_parallel,
        cp.pipeline_parallel,
        cp.max_num_batched_tokens,
        cp.gpu_memory_utilization,
    )


@dataclass(frozen=True, slots=True)
class ConvertiblePool:
    """A decode cluster whose prefill (PD-P) and decode (PD-D) instances are interchangeable:
    same accelerator, TP, PP and engine flags (``maxNumBatchedTokens``,
    ``gpuMemoryUtilization``; ``maxNumSeqs`` too where the prefill row sizes it, the pool runs
    the decode row's). They run as ONE pool of ``kv_both`` engines, and which of them prefill is
    a routing decision (the router's role assignment), changed without a restart. ``prefill`` and
    ``decode`` are the plan's instance counts: the initial assignment."""

    decode_cluster: str
    datacenter: str
    prefill: int
    decode: int

    @property
    def instances(self) -> int:
        return self.prefill + self.decode

    @staticmethod
    def of(clusters: list[ClusterPlan]) -> list[ConvertiblePool]:
        """The convertible pools among ``clusters`` (a decode cluster with both rows)."""
        rows: dict[str, dict[str, ClusterPlan]] = {}
        for cp in clusters:
            rows.setdefault(cp.name, {})[cp.role] = cp
        out = []
        for name, by_role in rows.items():
            p, d = by_role.get("prefill"), by_role.get("decode")
            if p is None or d is None or p.instances <= 0 or d.instances <= 0:
                continue
            seqs_agree = p.max_num_seqs is None or p.max_num_seqs == d.max_num_seqs
            if _flags(p) == _flags(d) and seqs_agree and p.datacenter == d.datacenter:
                out.append(ConvertiblePool(name, d.datacenter, p.instances, d.instances))
        return out


@dataclass(slots=True)
class LinkPlan:
    """Predicted KV egress on one inter-datacenter link."""

    name: str
    from_: str
    to: str
    capacity_gbps: float
    headroom: float
    egress_gbps: float = 0.0
    predicted_egress_gbps: float | None = None
    """Simulated mean egress at ``Predicted.rate_rps`` (``None``: not simulated)."""


@dataclass(slots=True)
class RemotePrefill:
    prefill_cluster: str
    link: str


@dataclass(slots=True)
class RouterPlan:
    """Routing policy for the router in front of one decode cluster."""

    decode_cluster: str
    threshold_tokens: float | None
    kv_bytes_per_token: float
    kv_fixed_bytes: float = 0.0
    remotes: list[RemotePrefill] = field(default_factory=list)
    rate_rps: float | None = None
    """``Λ_d``: the part of the plan's ``throughputRps`` this decode cluster serves (the
    simulator splits arrivals among clusters by it). ``None``: not planned (older plans)."""
    predicted: Predicted | None = None
    """Simulated latencies of this cluster's requests (several decode clusters only)."""


@dataclass(slots=True)
class Predicted:
    """Simulated latencies of this configuration (absent until simulated)."""

    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    attainment: float | None = None
    rate_rps: float | None = None
    """Arrival rate the latencies above were simulated at (the same for plan and baselines)."""
    goodput_rps: float | None = None
    """Highest simulated rate meeting the SLO attainment target (``None``: not searched)."""
    offload_fraction: float | None = None
    """Share of the simulated requests prefilled remotely."""


@dataclass(slots=True)
class Baseline:
    name: str
    throughput_rps: float
    ratio: float
    """Plan throughput divided by this baseline's throughput."""
    gpus: int = 0
    note: str = ""
    predicted: Predicted | None = None


@dataclass(slots=True)
class ShapeOption:
    """One way to serve a decode cluster, as the planner compared them (``planner.shapes``).

    ``shape``: ``disaggregated`` (PD-P + PD-D), ``aggregated`` (one chunked-prefill pool),
    each optionally ``+offload`` (prompts above ``thresholdTokens`` prefilled by PrfaaS).
    ``gpus`` counts the cluster's GPUs the option uses plus the PrfaaS GPUs its offload keeps
    busy; ``goodputRps`` is the predicted rate within the SLOs (analytic, like ``Λ_max``).
    """

    decode_cluster: str
    shape: str
    instances: int
    gpus: int
    goodput_rps: float
    goodput_per_gpu: float
    token_budget: int | None = None
    """Aggregated only: ``max_num_batched_tokens`` that keeps the TPOT SLO at this rate."""
    threshold_tokens: float | None = None
    deployable: bool = True
    """``False``: the planner would not deploy this shape here (advisory: an aggregated row of
    a plan with several decode clusters, whose shared PrfaaS and link bounds do not model
    aggregated pools yet)."""
    chosen: bool = False
    """The shape this plan deploys for the cluster."""
    limit: str = ""
    """What caps the rate (aggregated: ``tpot``, ``ttft``, ``kv``, ``max-num-seqs``)."""
    cost_per_hour: float = 0.0
    """USD per hour of ``gpus`` at the catalog's prices (an assumption); 0: a price missing."""
    goodput_per_cost: float = 0.0
    """``goodputRps`` per USD/h (0 without prices); options are ranked by it where every one
    has a price, else by ``goodputPerGpu`` (``planner.shapes.best_option``)."""


@dataclass(slots=True)
class Plan:
    model: str
    feasible: bool = True
    reason: str = ""
    threshold_tokens: float | None = None
    offload_fraction: float = 0.0
    l_long: float = 0.0
    l_short: float = 0.0
    throughput_rps: float = 0.0
    bottleneck: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    kv_bytes_per_token: float = 0.0
    kv_fixed_bytes: float = 0.0
    dtype_bytes: int = 2
    clusters: list[ClusterPlan] = field(default_factory=list)
    links: list[LinkPlan] = field(default_factory=list)
    routers: list[RouterPlan] = field(default_factory=list)
    predicted: Predicted | None = None
    baselines: list[Baseline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shapes: list[ShapeOption] = field(default_factory=list)
    """Aggregated vs disaggregated, with and without offload, per decode cluster (#18)."""
    data_plane_s: dict[str, float] = field(default_factory=dict)
    """``{"local": s, "remote": s}``: the measured per-request data-plane cost of each path
    (``latency.measured.DataPlane``) the simulator adds to TTFT; empty when none was measured."""

    def instances(self, cluster: str, role: Role) -> int:
        """Planned instances of ``role`` in ``cluster`` (0 when the plan has none)."""
        return sum(c.instances for c in self.clusters if c.name == cluster and c.role == role)

    def convertible(self) -> list[ConvertiblePool]:
        """Decode clusters whose prefill and decode instances form one pool of ``kv_both``
        engines (``ConvertiblePool``); derived from ``clusters``, so a re-plan that changes the
        split changes the initial assignment, never the pool."""
        return ConvertiblePool.of(self.clusters)

    def convertible_pool(self, cluster: str) -> ConvertiblePool | None:
        """The convertible pool of decode cluster ``cluster``, or ``None``."""
        return next((p for p in self.convertible() if p.decode_cluster == cluster), None)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (see the module docstring); ``convertible`` is derived (and
        ignored by ``from_dict``)."""
        return {"version": PLAN_VERSION, **_dump(self), "convertible": _dump(self.convertible())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ValueError(f"plan version {version} is not supported (expected {PLAN_VERSION})")
        kw = _from_json(cls, data)
        kw["clusters"] = [
            ClusterPlan(**_from_json(ClusterPlan, c)) for c in data.get("clusters", [])
        ]
        kw["links"] = [LinkPlan(**_from_json(LinkPlan, x)) for x in data.get("links", [])]
        kw["routers"] = [
            RouterPlan(
                **{
                    **_from_json(RouterPlan, r),
                    "remotes": [
                        RemotePrefill(**_from_json(RemotePrefill, x)) for x in r.get("remotes", [])
                    ],
                    "predicted": Predicted(**_from_json(Predicted, r["predicted"]))
                    if r.get("predicted")
                    else None,
                }
            )
            for r in data.get("routers", [])
        ]
        if data.get("predicted") is not None:
            kw["predicted"] = Predicted(**_from_json(Predicted, data["predicted"]))
        kw["baselines"] = [
            Baseline(
                **{
                    **_from_json(Baseline, b),
                    "predicted": Predicted(**_from_json(Predicted, b["predicted"]))
                    if b.get("predicted")
                    else None,
                }
            )
            for b in data.get("baselines", [])
        ]
        kw["stages"] = dict(data.get("stages", {}))
        kw["data_plane_s"] = {str(k): float(v) for k, v in (data.get("dataPlaneS") or {}).items()}
        kw["shapes"] = [ShapeOption(**_from_json(ShapeOption, x)) for x in data.get("shapes", [])]
        return cls(**kw)
