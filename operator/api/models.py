"""The prfaas custom resources (group ``prfaas.io``, version ``v1alpha1``) as pydantic v2 models.

These models are the single source of truth: the CRDs under ``crds/`` are generated from them
(``prfaas crds``), ``prfaas validate`` checks YAML against them, and the operator parses every
object it reads through them. Field names carry their units (``bandwidthGbps``, ``rttMs``,
``memoryGiB``); durations are strings such as ``"250ms"`` or ``"4s"``; unknown fields are
rejected.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSION",
    "FABRIC_GBPS",
    "GROUP",
    "KINDS",
    "MAX_COUNT",
    "MAX_GBPS",
    "PROMETHEUS_URL_PATTERN",
    "VERSION",
    "Accelerator",
    "ArrivalProcess",
    "Autoscaling",
    "AutoscalingStatus",
    "CalibrationStatus",
    "ClusterRefs",
    "ClusterStatus",
    "Condition",
    "ConfigMapKeyRef",
    "ConversationSharing",
    "DecodeCluster",
    "DecodeClusterSpec",
    "Distribution",
    "DocumentSharing",
    "Duration",
    "EmpiricalBucket",
    "EmpiricalDistribution",
    "EnginePolicy",
    "EngineSpec",
    "FixedDistribution",
    "InstancePin",
    "InterDCLink",
    "InterDCLinkSpec",
    "InterDCLinkStatus",
    "LinkProbing",
    "LogNormalDistribution",
    "MeasuredProfileRef",
    "ModelArchitecture",
    "ModelSpec",
    "ObjectMeta",
    "ObservedWorkload",
    "Offload",
    "PrefillCluster",
    "PrefillClusterSpec",
    "ProfilePoint",
    "PublishedProfile",
    "Resource",
    "RouterExposure",
    "Scheduling",
    "SecretKeyRef",
    "ServingPlan",
    "ServingPlanSpec",
    "ServingPlanStatus",
    "SharingPattern",
    "Slo",
    "Target",
    "Toleration",
    "Workload",
    "duration_seconds",
    "model_for_kind",
]

GROUP = "prfaas.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_DURATION = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"


def duration_seconds(value: object) -> float:
    """Parse a duration such as ``"250ms"``, ``"4s"``, ``"1.5m"`` or ``"2h"`` into seconds.

    Raises ``ValueError`` naming the accepted forms; a bare number is refused so that nobody
    has to guess whether ``4`` meant seconds or milliseconds.
    """
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; write a number with a unit: ms, s, m or h "
            '(e.g. "250ms", "4s")'
        )
    seconds = float(match["num"]) * _UNIT_SECONDS[match["unit"]]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def _check_duration(value: object) -> object:
    """Every duration field's one check; runs before the string type check, so that a bare
    YAML number (``tpot: 25``) gets the same help as any other malformed duration."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"{value!r} has no unit; write a number with a unit: ms, s, m or h "
            f'(e.g. "{value:g}ms" or "{value:g}s")'
        )
    duration_seconds(value)  # refuses anything else (a list, "4") with the same help
    return value


Duration = Annotated[
    str,
    BeforeValidator(_check_duration),
    Field(json_schema_extra={"pattern": DURATION_PATTERN}),
]
"""A positive duration string: a number followed by ``ms``, ``s``, ``m`` or ``h``."""

MAX_COUNT = 1_000_000_000
"""Upper bound of every count (GPUs, instances, tokens, layers): physical, and small enough
that the planner's arithmetic cannot overflow."""
MAX_GBPS = 1_000_000.0
"""1 Pbit/s: above any link or NIC."""
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
"""A number strictly between 0 and 1 (percentiles, hit rates)."""


class _Model(BaseModel):
    """Base for every spec model: camelCase on the wire, unknown fields rejected.

    Strict types, like the API server's schema: ``"10"`` is not a number and ``"true"`` is not
    a boolean, so what ``prfaas validate`` accepts is what ``kubectl apply`` accepts.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        frozen=False,
        strict=True,
    )


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


class Condition(_Model):
    """A Kubernetes-style condition (``metav1.Condition``)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class SecretKeyRef(_Model):
    """Where a kubeconfig for a remote cluster lives (in the operator's namespace by default)."""

    name: str = Field(min_length=1)
    namespace: str | None = None
    key: str = "kubeconfig"


class Target(_Model):
    """Where this pool's workloads are created."""

    namespace: str = Field(default="default", min_length=1)
    kubeconfig_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Absent: the cluster the operator runs in. Present: a remote cluster.",
    )


class Toleration(_Model):
    """A pod toleration (``core/v1 Toleration``) copied onto this pool's engine pods."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Scheduling(_Model):
    """Where in the target cluster this pool's engine pods may run."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class Accelerator(_Model):
    """The GPUs of one pool. ``type`` names a catalog GPU (H200, H20, H100, ...)."""

    type: str = Field(min_length=1, description="Catalog GPU name, e.g. H200 or H20.")
    count: PositiveInt = Field(description="GPUs in the pool.")
    per_node: PositiveInt = Field(default=8, description="GPUs per node.")
    memory_gi_b: float | None = Field(
        default=None,
        gt=0,
        le=1e5,
        alias="memoryGiB",
        description="Overrides the catalog's memory per GPU (GiB).",
    )
    resource_name: str = Field(default="nvidia.com/gpu", description="Extended resource name.")

    @model_validator(mode="after")
    def _per_node_fits(self) -> Accelerator:
        if self.count > self.per_node and self.count % self.per_node:
            raise ValueError(
                f"count ({self.count}) must be a multiple of perNode ({self.per_node}) "
                "when the pool spans several nodes"
            )
        return self


class ClusterStatus(_Model):
    """Status of a PrefillCluster or DecodeCluster, written by the operator."""

    observed_generation: int | None = None
    reachable: bool | None = None
    allocatable_gp_us: int | None = Field(default=None, alias="allocatableGPUs")
    conditions: list[Condition] = Field(default_factory=list)


class EnginePolicy(_Model):
    """What a ServingPlan may run in this cluster's namespace. The cluster resources are the
    cluster administrator's (cluster-scoped); ServingPlans are any namespace's tenants', and
    their engines run in the namespace named here, so this is where the admin limits them.
    Unset lists allow anything (single-tenant clusters)."""

    allowed_images: list[str] | None = Field(
        default=None,
        description="Image references a plan's engine.image may use; an entry ending in '*' "
        "is a prefix (e.g. 'vllm/vllm-openai:*'). Unset: any image.",
    )
    allowed_args: list[str] | None = Field(
        default=None,
        description="Flags a plan's engine.extraArgs may contain (e.g. '--enforce-eager'); "
        "a flag's value follows it. Unset: any flag.",
    )
    allowed_env: list[str] | None = Field(
        default=None,
        description="Variable names a plan's engine.env may set. Unset: any name.",
    )
    add_capabilities: list[str] = Field(
        default_factory=list,
        description="Capabilities added back to engine containers (all are dropped), e.g. "
        "IPC_LOCK where RDMA needs pinned memory.",
    )


class _ClusterSpec(_Model):
    datacenter: str = Field(min_length=1, description="Datacenter name; links join these.")
    accelerator: Accelerator
    target: Target = Field(default_factory=Target)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    engine_policy: EnginePolicy = Field(default_factory=EnginePolicy)


class PrefillClusterSpec(_ClusterSpec):
    """A compute-dense pool that only prefills long prompts (the PrfaaS cluster)."""


class RouterExposure(_Model):
    """How the per-decode-cluster router is exposed."""

    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=8000, gt=0, lt=65536)
    replicas: PositiveInt = 1


FABRIC_GBPS = 200.0
"""Default intra-datacenter KV bandwidth per instance: one 200 Gb/s RDMA NIC (InfiniBand or
RoCE; 400 Gb/s NICs are common on newer nodes)."""


class DecodeClusterSpec(_ClusterSpec):
    """A local PD pool: short prefills plus all decode, fronted by a router."""

    router: RouterExposure = Field(default_factory=RouterExposure)
    fabric_gbps: float = Field(
        default=FABRIC_GBPS,
        gt=0,
        le=MAX_GBPS,
        description="Bandwidth (Gbit/s) one instance has for KV from this cluster's own prefill "
        "instances to its decode instances (its RDMA NIC; default 200). When a prefill and a "
        "decode instance fit on one node together, KV moves over NVLink instead.",
    )


class LinkProbing(_Model):
    """Whether the operator measures the link (bandwidth, RTT, loss) and how often."""

    enabled: bool = True
    interval: Duration = Field(default="5m", description="Time between probes.")


class InterDCLinkSpec(_Model):
    """An Ethernet path between two datacenters over which KV is shipped."""

    from_: str = Field(alias="from", min_length=1, description="Datacenter that prefills.")
    to: str = Field(min_length=1, description="Datacenter that decodes.")
    bandwidth_gbps: float = Field(gt=0, le=MAX_GBPS, description="Provisioned bandwidth, Gbit/s.")
    rtt_ms: float = Field(
        default=1.0, ge=0, le=3_600_000, description="Round-trip time, milliseconds."
    )
    probing: LinkProbing = Field(default_factory=LinkProbing)

    @model_validator(mode="after")
    def _ends_differ(self) -> InterDCLinkSpec:
        if self.from_ == self.to:
            raise ValueError(f"from and to are both {self.to!r}; a link joins two datacenters")
        return self


class InterDCLinkStatus(_Model):
    """What the last probe measured, written by the operator."""

    observed_generation: int | None = None
    measured_gbps: float | None = Field(default=None, description="Measured bandwidth, Gbit/s.")
    rtt_ms: float | None = Field(default=None, description="Measured round-trip time, ms.")
    loss: float | None = Field(default=None, description="Packet loss fraction, 0..1.")
    last_probe: str | None = Field(default=None, description="RFC 3339 time of the last probe.")
    conditions: list[Condition] = Field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# ServingPlan
# ----------------------------------------------------------------------------------------------


class LogNormalDistribution(_Model):
    """Log-normal lengths ``exp(N(mu, sigma²))`` truncated to ``[min, max]`` tokens."""

    type: Literal["lognormal"]
    mu: float = Field(ge=-20, le=20, description="Mean of the log length (e^20 ≈ 5·10^8).")
    sigma: float = Field(gt=0, le=10)
    min: PositiveInt = 1
    max: PositiveInt

    @model_validator(mode="after")
    def _bounds(self) -> LogNormalDistribution:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class EmpiricalBucket(_Model):
    """Lengths up to ``upTo`` tokens (from the previous bucket's bound) with relative weight."""

    up_to: PositiveInt
    weight: float = Field(gt=0, le=1e12)


class EmpiricalDistribution(_Model):
    """A histogram: lengths uniform within each bucket, buckets in increasing ``upTo``."""

    type: Literal["empirical"]
    buckets: list[EmpiricalBucket] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> EmpiricalDistribution:
        bounds = [b.up_to for b in self.buckets]
        if any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must have strictly increasing upTo, got {bounds}")
        return self


class FixedDistribution(_Model):
    """Every request has the same length."""

    type: Literal["fixed"]
    value: PositiveInt


Distribution = Annotated[
    LogNormalDistribution | EmpiricalDistribution | FixedDistribution,
    Field(discriminator="type"),
]


class ArrivalProcess(_Model):
    """Poisson arrivals, or bursty Gamma inter-arrivals with coefficient of variation ``cv``."""

    kind: Literal["poisson", "gamma"] = "poisson"
    cv: float = Field(default=1.0, gt=0, le=100)


class _Sharing(_Model):
    """What every sharing pattern has: its block, the unit of sharing."""

    block_tokens: int = Field(
        default=512,
        ge=16,
        le=1 << 20,
        description="Tokens per shared block, the unit of sharing (cached lengths round down "
        "to it; smaller is finer and slower to simulate).",
    )


class ConversationSharing(_Sharing):
    """Multi-turn conversations that extend: each request is the next turn of one of
    ``concurrent`` open conversations (chosen at random); its prompt is the conversation so far
    (earlier prompts and answers) plus a new message of ``inputLength`` tokens."""

    type: Literal["conversations"]
    concurrent: int = Field(
        default=32, ge=1, le=1_000_000, description="Conversations open at once."
    )
    turns: int = Field(
        default=8, ge=1, le=10_000, description="Turns per conversation before a new one starts."
    )


class DocumentSharing(_Sharing):
    """Documents asked about many times: ``documents`` documents of ``length`` tokens, picked
    with Zipf popularity; a prompt is the document plus a question of ``inputLength`` tokens."""

    type: Literal["documents"]
    documents: int = Field(ge=1, le=10_000_000, description="How many distinct documents.")
    length: Distribution = Field(description="Document lengths, tokens.")
    zipf: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Popularity exponent: the k-th most asked document has weight 1/k^zipf "
        "(0: uniform).",
    )


SharingPattern = Annotated[
    ConversationSharing | DocumentSharing,
    Field(discriminator="type"),
]


class Workload(_Model):
    """What the plan is sized for."""

    requests_per_second: float | None = Field(
        default=None,
        gt=0,
        le=1e7,
        description="Target arrival rate. Absent: plan for the highest sustainable rate.",
    )
    observe: bool = Field(
        default=False,
        description="Re-plan from the rate and length mix observed in Prometheus.",
    )
    input_length: Distribution = Field(description="Prompt lengths, tokens.")
    output_length: Distribution = Field(description="Generated lengths, tokens.")
    prefix_cache_hit_rate: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of prompt tokens served from cache."
    )
    uncached_length: Distribution | None = Field(
        default=None,
        description="Measured prompt lengths left after prefix-cache hits, tokens (e.g. from "
        "`prfaas trace stats --emit-workload`); the plan's p, l_long and l_short come from it "
        "instead of inputLength scaled by 1 - prefixCacheHitRate.",
    )
    arrival: ArrivalProcess = Field(default_factory=ArrivalProcess)
    sharing: SharingPattern | None = Field(
        default=None,
        description="How prompts share prefixes (type: conversations or documents); "
        "inputLength is then each turn's new message or each document's question. The "
        "simulated requests follow it, and without uncachedLength the plan's p, l_long and "
        "l_short come from a sample of it (an unbounded shared cache). Absent: prompts share "
        "nothing.",
    )

    @model_validator(mode="after")
    def _one_cache_model(self) -> Workload:
        if self.uncached_length is not None and self.prefix_cache_hit_rate > 0:
            raise ValueError(
                "give prefixCacheHitRate or uncachedLength, not both (uncachedLength already "
                "counts the cache hits)"
            )
        if self.sharing is not None and self.prefix_cache_hit_rate > 0:
            raise ValueError(
                "prefixCacheHitRate: give prefixCacheHitRate or sharing, not both (the plan takes "
                "its uncached lengths from a sample of the sharing pattern; uncachedLength, if "
                "given, overrides both)"
            )
        return self


class Slo(_Model):
    """Latency objectives, met jointly by ``attainment`` of requests at ``percentile``."""

    ttft: Duration = "10s"
    tpot: Duration = "100ms"
    percentile: Fraction = 0.9
    attainment: float = Field(default=0.9, gt=0, le=1)


class ProfilePoint(_Model):
    """One measured point: a prefill of ``tokens`` (or a decode step at ``batch``/``context``)."""

    tokens: PositiveInt | None = None
    batch: PositiveInt | None = None
    context: PositiveInt | None = None
    seconds: float = Field(gt=0, le=1e6)
    kv_mi_b: float | None = Field(default=None, gt=0, le=1e9, alias="kvMiB")

    @model_validator(mode="after")
    def _kind(self) -> ProfilePoint:
        if (self.tokens is None) == (self.batch is None):
            raise ValueError("a profile point gives either tokens (prefill) or batch (decode)")
        return self


class PublishedProfile(_Model):
    """Published or measured timings of this model on an accelerator at a given TP/PP."""

    accelerator: str = Field(min_length=1)
    tensor_parallel: PositiveInt = 1
    pipeline_parallel: PositiveInt = 1
    source: str = Field(default="", description="Where the numbers come from (paper, run).")
    prefill: list[ProfilePoint] = Field(default_factory=list)
    decode: list[ProfilePoint] = Field(default_factory=list)


class ConfigMapKeyRef(_Model):
    """One key of a ConfigMap in the ServingPlan's namespace."""

    name: str = Field(min_length=1)
    key: str = Field(default="profile.json", min_length=1)


class MeasuredProfileRef(_Model):
    """A ``prfaas profile`` JSON for this model: inline, or in a ConfigMap the operator reads
    (``kubectl create configmap NAME --from-file=profile.json=PROFILE``)."""

    inline: dict[str, Any] | None = Field(
        default=None, description="The profile JSON object itself."
    )
    config_map_key_ref: ConfigMapKeyRef | None = None

    @model_validator(mode="after")
    def _one(self) -> MeasuredProfileRef:
        if (self.inline is None) == (self.config_map_key_ref is None):
            raise ValueError("give exactly one of inline or configMapKeyRef")
        return self


class ModelArchitecture(_Model):
    """Enough of a model's architecture to derive FLOPs, weights, KV bytes and fixed state."""

    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    ffn: PositiveInt
    vocab: PositiveInt = 32000
    params_b: float = Field(gt=0, le=1e5, description="Total parameters, billions.")
    active_params_b: float | None = Field(
        default=None, gt=0, description="Active parameters per token (MoE), billions."
    )
    attention: Literal["gqa", "mla"] = "gqa"
    kv_lora_rank: int | None = Field(default=None, gt=0, description="MLA latent size.")
    rope_dim: int | None = Field(default=None, gt=0, description="MLA decoupled RoPE size.")
    full_attention_every: PositiveInt = Field(
        default=1, description="One full-attention layer per N layers (hybrid models); 1 = all."
    )
    linear_state_bytes_per_layer: int = Field(
        default=0,
        ge=0,
        le=1 << 40,
        description="Fixed recurrent/SWA state per linear layer, bytes.",
    )
    dtype_bytes: PositiveInt = 2
    max_context: PositiveInt = 131072

    @model_validator(mode="after")
    def _consistent(self) -> ModelArchitecture:
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kvHeads ({self.kv_heads})"
            )
        if self.attention == "mla" and (self.kv_lora_rank is None or self.rope_dim is None):
            raise ValueError("attention: mla needs kvLoraRank and ropeDim")
        if self.active_params_b is not None and self.active_params_b > self.params_b:
            raise ValueError("activeParamsB must not exceed paramsB")
        return self


class ModelSpec(_Model):
    """The served model: a catalog profile by name, or an inline architecture."""

    served_name: str = Field(min_length=1)
    source: str = Field(default="", description="Weights: a Hugging Face id or a path.")
    catalog: str | None = Field(default=None, description="Catalog model name.")
    architecture: ModelArchitecture | None = None
    profiles: list[PublishedProfile] = Field(default_factory=list)
    measured_profile: MeasuredProfileRef | None = Field(
        default=None,
        description="A `prfaas profile` of this model on the hardware it runs on (source "
        "`measured`, preferred over published and fitted latencies).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.catalog is None) == (self.architecture is None):
            raise ValueError("give exactly one of catalog (a catalog model name) or architecture")
        return self


class ClusterRefs(_Model):
    """Names of the PrefillCluster and DecodeCluster objects this plan uses."""

    prefill: list[str] = Field(
        default_factory=list, description="PrefillCluster names; empty: no remote prefill."
    )
    decode: list[str] = Field(min_length=1, description="DecodeCluster names (at least one).")

    @model_validator(mode="after")
    def _unique(self) -> ClusterRefs:
        for role, names in (("prefill", self.prefill), ("decode", self.decode)):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{role} lists {', '.join(repeated)} more than once")
        return self


class Offload(_Model):
    """Cross-datacenter prefill offload: planned threshold, a fixed one, or none."""

    mode: Literal["auto", "fixed", "off"] = "auto"
    threshold_tokens: PositiveInt | None = None
    bandwidth_headroom: float = Field(
        default=0.8, gt=0, le=1, description="Fraction of a link the plan may fill with KV."
    )

    @model_validator(mode="after")
    def _fixed_needs_threshold(self) -> Offload:
        if self.mode == "fixed" and self.threshold_tokens is None:
            raise ValueError("mode: fixed needs thresholdTokens")
        return self


class EngineSpec(_Model):
    """How engine pods run."""

    image: str = "vllm/vllm-openai:v0.33.0"
    extra_args: list[str] = Field(default_factory=list)
    connector: Literal["NixlConnector", "MooncakeConnector"] = "NixlConnector"
    max_batch_size: PositiveInt = Field(default=256, description="BS_max of a decode instance.")
    max_num_batched_tokens: PositiveInt = Field(
        default=8192,
        description="Tokens one engine step may process (vLLM --max-num-batched-tokens): the "
        "prefill batch budget, passed to vLLM and used by the planner and the simulator.",
    )
    block_size: PositiveInt = 16
    env: dict[str, str] = Field(default_factory=dict)

    def max_model_len_arg(self) -> int | None:
        """``--max-model-len`` as ``extraArgs`` set it (``None``: not set there)."""
        args = self.extra_args
        for i, arg in enumerate(args):
            value = None
            if arg.startswith("--max-model-len="):
                value = arg.split("=", 1)[1]
            elif arg == "--max-model-len" and i + 1 < len(args):
                value = args[i + 1]
            if value is not None and value.isdigit() and int(value) > 0:
                return int(value)
        return None

    @model_validator(mode="after")
    def _budget_holds_a_block(self) -> EngineSpec:
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError(
                f"maxNumBatchedTokens ({self.max_num_batched_tokens}) is smaller than one KV "
                f"block (blockSize {self.block_size}); raise maxNumBatchedTokens to at least "
                f"{self.block_size}"
            )
        return self


PROMETHEUS_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
"""http(s), a host (and port), an optional path prefix; no query, fragment or user info, so
the operator's ``/api/v1/query`` cannot be cut off by a ``?`` or ``#`` to fetch another URL."""


class Autoscaling(_Model):
    """Re-plan and resize from observed load (Prometheus) every ``interval``."""

    enabled: bool = False
    prometheus_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=PROMETHEUS_URL_PATTERN,
        description="Prometheus' base URL: http(s)://host[:port][/path], no query, fragment or "
        "user info. The operator may ignore it (operator.allowPlanPrometheusUrl: false).",
    )
    interval: Duration = "60s"
    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt = 64

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must not exceed maxReplicas "
                f"({self.max_replicas})"
            )
        return self


class InstancePin(_Model):
    """A fixed instance count for one role of one cluster; the planner sizes the rest."""

    cluster: str = Field(min_length=1, description="A PrefillCluster or DecodeCluster name.")
    role: Literal["prefill", "decode"] = Field(
        description="prefill (PrfaaS, or a DecodeCluster's PD-P) or decode (PD-D)."
    )
    instances: int = Field(
        ge=0, le=MAX_COUNT, description="Instances of this role, kept by the planner."
    )


class ServingPlanSpec(_Model):
    """A model to serve across prefill and decode clusters, sized for a workload and SLO."""

    model: ModelSpec
    slo: Slo = Field(default_factory=Slo)
    workload: Workload
    clusters: ClusterRefs
    offload: Offload = Field(default_factory=Offload)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    shape: Literal["auto", "aggregated", "disaggregated"] = Field(
        default="auto",
        description="How each decode cluster serves: disaggregated (PD-P + PD-D), aggregated "
        "(one Deployment of chunked-prefill engines with the planned token budget, long "
        "prompts offloaded where that ranks best; infeasible where no aggregated pool meets "
        "the SLOs, and with several decode clusters), or auto (the best-ranked deployable "
        "shape; the plan's shapes table compares all of them).",
    )
    pins: list[InstancePin] = Field(
        default_factory=list,
        description="Instance counts fixed per cluster and role (GitOps, capacity planning); "
        "the planner optimises the threshold and the other roles around them, and neither "
        "target sizing nor autoscaling changes them.",
    )

    def model_length(self) -> tuple[int, str] | None:
        """The context the engines serve and where it comes from: ``--max-model-len`` in
        ``engine.extraArgs``, else the model's ``maxContext`` (``None``: an unknown catalog
        name, refused where the model is resolved)."""
        arg = self.engine.max_model_len_arg()
        if arg is not None:
            return arg, "--max-model-len in engine.extraArgs"
        if self.model.architecture is not None:
            return self.model.architecture.max_context, "model.architecture.maxContext"
        from prfaas.planner.latency.catalog import MODELS

        arch = MODELS.get(self.model.catalog or "")
        if arch is None:
            return None
        return arch.max_context, f"the {arch.name} catalog model's maxContext"

    @model_validator(mode="after")
    def _budget_within_the_model_length(self) -> ServingPlanSpec:
        found = self.model_length()
        budget = self.engine.max_num_batched_tokens
        if found is not None and budget > found[0]:
            limit, where = found
            raise ValueError(
                f"engine.maxNumBatchedTokens ({budget}) is larger than the model length "
                f"({limit} tokens, {where}); set engine.maxNumBatchedTokens to at most {limit}"
            )
        return self

    @model_validator(mode="after")
    def _pins_name_clusters_once(self) -> ServingPlanSpec:
        seen: set[tuple[str, str]] = set()
        for i, pin in enumerate(self.pins):
            if pin.cluster in self.clusters.prefill and pin.role == "decode":
                raise ValueError(
                    f"pins[{i}]: {pin.cluster} is a PrefillCluster; it has only role prefill"
                )
            if pin.cluster not in self.clusters.prefill + self.clusters.decode:
                raise ValueError(
                    f"pins[{i}]: cluster {pin.cluster!r} is not in clusters.prefill or "
                    "clusters.decode; pin a cluster this plan uses"
                )
            if (pin.cluster, pin.role) in seen:
                raise ValueError(f"pins[{i}]: {pin.cluster}/{pin.role} is pinned twice")
            seen.add((pin.cluster, pin.role))
        return self


class ObservedWorkload(_Model):
    """What the routers saw (from Prometheus), written by the autoscaler."""

    rate_rps: float | None = Field(default=None, description="Arrival rate, requests/s.")
    mean_input_tokens: float | None = Field(
        default=None, description="Mean uncached prompt length, tokens."
    )
    window_seconds: float | None = Field(default=None, description="Range of the queries, s.")
    at: str | None = Field(default=None, description="RFC 3339 time of the observation.")


class AutoscalingStatus(_Model):
    """Whether the autoscaler can read its metrics, and if not why."""

    metrics_available: bool | None = Field(
        default=None, description="Prometheus answered the last poll (unset before the first)."
    )
    message: str = Field(default="", description="Why not, and what to check.")
    last_answer: str | None = Field(
        default=None, description="RFC 3339 time of the last answered poll."
    )


class CalibrationStatus(_Model):
    """One latency correction factor: the engines' own measurement vs the model's prediction."""

    cluster: str
    role: str
    phase: Literal["prefill", "decode"]
    predicted_seconds: float = Field(description="What the latency model predicted, seconds.")
    observed_seconds: float = Field(description="What the engines measured, seconds.")
    samples: float = Field(description="Requests (prefill) or tokens (decode) behind it.")
    factor: float = Field(
        description="Correction factor the next plan uses (observed/predicted, smoothed)."
    )


class ServingPlanStatus(_Model):
    """The plan in force and how it is doing, written by the operator."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    plan: dict[str, Any] | None = Field(
        default=None, description="The current plan (the planner's JSON form)."
    )
    threshold_tokens: float | None = Field(
        default=None, description="Offload threshold t in force, tokens."
    )
    throughput_rps: float | None = Field(
        default=None, description="Predicted sustainable throughput, requests/s."
    )
    ready: str | None = Field(default=None, description="Short readiness summary.")
    observed: ObservedWorkload | None = Field(
        default=None, description="Load the routers saw (autoscaling only)."
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="State of the autoscaling loop (autoscaling only)."
    )
    calibration: list[CalibrationStatus] = Field(
        default_factory=list,
        description="Latency correction factors learned from the engines (autoscaling only).",
    )


# ----------------------------------------------------------------------------------------------
# Top-level objects
# ----------------------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of ``metadata`` we read; anything else the API server adds is kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None


class Resource(BaseModel):
    """Common shape of the four kinds; subclasses pin ``kind`` and the spec/status types."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    NAMESPACED: ClassVar[bool]

    api_version: Literal["prfaas.io/v1alpha1"] = Field(alias="apiVersion")
    metadata: ObjectMeta


class PrefillCluster(Resource):
    """A compute-dense GPU pool in one datacenter that only prefills long prompts."""

    KIND = "PrefillCluster"
    PLURAL = "prefillclusters"
    SHORT_NAMES = ("pfc",)
    NAMESPACED = False

    kind: Literal["PrefillCluster"]
    spec: PrefillClusterSpec
    status: ClusterStatus | None = None


class DecodeCluster(Resource):
    """A local PD pool: short prefills and all decoding, fronted by a router."""

    KIND = "DecodeCluster"
    PLURAL = "decodeclusters"
    SHORT_NAMES = ("dcc",)
    NAMESPACED = False

    kind: Literal["DecodeCluster"]
    spec: DecodeClusterSpec
    status: ClusterStatus | None = None


class InterDCLink(Resource):
    """A network path from a prefill datacenter to a decode datacenter that carries KV."""

    KIND = "InterDCLink"
    PLURAL = "interdclinks"
    SHORT_NAMES = ("idl", "link")
    NAMESPACED = False

    kind: Literal["InterDCLink"]
    spec: InterDCLinkSpec
    status: InterDCLinkStatus | None = None


class ServingPlan(Resource):
    """One model served across PrefillClusters and DecodeClusters with cross-DC prefill offload."""

    KIND = "ServingPlan"
    PLURAL = "servingplans"
    SHORT_NAMES = ("sp",)
    NAMESPACED = True

    kind: Literal["ServingPlan"]
    spec: ServingPlanSpec
    status: ServingPlanStatus | None = None


KINDS: tuple[type[Resource], ...] = (PrefillCluster, DecodeCluster, InterDCLink, ServingPlan)


def model_for_kind(kind: str) -> type[Resource]:
    """The model class for a ``kind``; ``KeyError`` lists the kinds we know."""
    for cls in KINDS:
        if kind == cls.KIND:
            return cls
    known = ", ".join(c.KIND for c in KINDS)
    raise KeyError(f"unknown kind {kind!r}; prfaas.io/v1alpha1 has {known}")
