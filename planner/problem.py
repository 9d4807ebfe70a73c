"""The planner's input: plain dataclasses, already resolved against the catalog.

``prfaas.operator.api.translate`` builds a ``Problem`` from the custom resources; tests and
benchmarks
build one directly. Nothing here talks to Kubernetes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from prfaas.planner.distributions import LengthDistribution, Trace
from prfaas.planner.errors import PlannerError
from prfaas.planner.latency.catalog import GpuSpec, ModelArch
from prfaas.planner.latency.measured import DataPlane, IdleWake
from prfaas.planner.latency.model import InstanceLatency
from prfaas.planner.latency.profiles import ProfileData
from prfaas.planner.latency.roofline import RooflineSettings
from prfaas.planner.sharing import Sharing

__all__ = [
    "Candidate",
    "ClusterInput",
    "GoodputFn",
    "LinkInput",
    "OffloadInput",
    "PlannerSettings",
    "Problem",
    "RoleLoad",
    "SharingSample",
    "SloInput",
    "WorkloadInput",
]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One TP×PP instance shape with its latency model and free memory for KV."""

    tp: int
    pp: int
    latency: InstanceLatency
    kv_capacity_bytes: float
    """Memory left for KV and state after the weights, in the whole instance."""

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True, slots=True)
class RoleLoad:
    """What one role must serve, for ranking candidates."""

    role: Literal["prefill", "decode"]
    length: float
    """Prefill: the (uncached) prompt length; decode: mean cached context per sequence."""
    kv_bytes_per_sequence: float
    output_tokens: float
    ttft_s: float
    tpot_s: float
    max_batch_size: int = 256


GoodputFn = Callable[[Candidate, RoleLoad], float]
"""Per-instance goodput (req/s) of a candidate under a role's load and SLO; the simulator can
replace the M/D/1 closed form with a simulated one (``PlannerSettings.goodput``)."""


@dataclass(frozen=True, slots=True)
class ClusterInput:
    """A pool of identical GPUs in one datacenter."""

    name: str
    datacenter: str
    kind: Literal["prefill", "decode"]
    """``prefill``: a PrfaaS cluster (long prefills only); ``decode``: a local PD cluster."""
    gpu: GpuSpec
    count: int
    per_node: int = 8
    fabric_gbps: float = 200.0
    """Decode clusters: intra-datacenter KV bandwidth per instance, prefill → decode (Gbit/s)."""


@dataclass(frozen=True, slots=True)
class LinkInput:
    """A directed inter-datacenter path for KV (``from_`` prefills, ``to`` decodes)."""

    name: str
    from_: str
    to: str
    bandwidth_gbps: float
    rtt_ms: float = 1.0


@dataclass(frozen=True, slots=True)
class SloInput:
    ttft_s: float = 10.0
    tpot_s: float = 0.1
    percentile: float = 0.9
    attainment: float = 0.9


@dataclass(frozen=True, slots=True)
class SharingSample:
    """The uncached lengths of a sample of a sharing pattern's requests
    (``trace_workload.sharing_uncached``, which ``trace_workload.with_sharing`` puts into a
    ``WorkloadInput``: drawing it needs the simulator's generator, above this module)."""

    uncached: Trace
    requests: int
    hit_ratio: float
    """Token prefix-hit ratio of the sample: 1 − Σ uncached / Σ prompt."""
    kind: str
    """The pattern as ``workload.sharing`` names it (``conversations …``, ``documents …``)."""
    prompt_mean: float = 0.0
    """Mean whole prompt of the sample (a conversation's history included): what a decode
    holds as context, where ``inputLength`` may describe only the new part."""

    @property
    def note(self) -> str:
        """The plan's note on where its uncached lengths came from."""
        return (
            f"from workload.sharing {self.kind}, {self.requests} sampled requests, hit ratio "
            f"{self.hit_ratio:.3f} (one unbounded prefix cache shared by all instances: the "
            "pattern's upper bound on prefix reuse, as `prfaas trace stats` assumes)"
        )


@dataclass(frozen=True, slots=True)
class WorkloadInput:
    input_length: LengthDistribution
    output_length: LengthDistribution
    requests_per_second: float | None = None
    prefix_cache_hit_rate: float = 0.0
    uncached_length: LengthDistribution | None = None
    """Measured uncached lengths (e.g. a trace's); ``None``: the input lengths scaled by
    ``1 − prefix_cache_hit_rate``."""
    sharing: Sharing | None = None
    """How prompts share prefixes (``planner.sharing``); ``None``: not at all. Without
    ``uncached_length`` the plan's uncached lengths come from ``sharing_sample``."""
    sharing_sample: SharingSample | None = None
    """The sample of ``sharing``'s requests the plan's uncached lengths come from: required
    with ``sharing`` and without ``uncached_length`` (``trace_workload.with_sharing`` draws
    it), ignored with ``uncached_length``."""

    def __post_init__(self) -> None:
        if self.sharing is not None and self.prefix_cache_hit_rate > 0:
            raise PlannerError(
                "workload.prefixCacheHitRate: give prefixCacheHitRate or sharing, not both "
                "(the sharing pattern already decides which prompt tokens hit the cache); drop "
                "prefixCacheHitRate, or give uncachedLength to plan from measured lengths"
            )
        if self.sharing is not None and self.uncached_length is None and not self.sharing_sample:
            raise PlannerError(
                "workload.sharing: the plan needs a sample of the pattern's requests; build the "
                "workload with prfaas.planner.trace_workload.with_sharing"
            )

    @property
    def uncached(self) -> LengthDistribution:
        """Input lengths left to prefill after prefix-cache hits (what ``t`` is compared with):
        ``uncached_length`` if given (measured), else a sample of ``sharing``'s requests
        (``sharing_sample``), else the input lengths scaled by
        ``1 − prefix_cache_hit_rate``."""
        if self.uncached_length is not None:
            return self.uncached_length
        sample = self._sample
        if sample is not None:
            return sample.uncached
        return self.input_length.uncached(self.prefix_cache_hit_rate)

    @property
    def _sample(self) -> SharingSample | None:
        return self.sharing_sample if self.uncached_length is None else None

    @property
    def prompt_mean(self) -> float:
        """Mean whole prompt (tokens), the context a decode starts from: the sharing sample's
        prompts where a pattern extends them (a conversation's turns carry its history), else
        the input lengths."""
        sample = self._sample
        return sample.prompt_mean if sample is not None else self.input_length.mean

    @property
    def uncached_source(self) -> str:
        """Where ``uncached`` comes from, for the plan's notes."""
        if self.uncached_length is not None:
            extra = " (workload.sharing shapes only the simulated requests)" if self.sharing else ""
            return f"measured (empirical distribution){extra}"
        sample = self._sample
        if sample is not None:
            return sample.note
        if self.prefix_cache_hit_rate == 0.0:
            return "the input lengths (no prefix-cache hits assumed)"
        return (
            f"the input lengths scaled by 1 − prefixCacheHitRate ({self.prefix_cache_hit_rate:g})"
        )


@dataclass(frozen=True, slots=True)
class OffloadInput:
    mode: Literal["auto", "fixed", "off"] = "auto"
    threshold_tokens: float | None = None
    headroom: float = 0.8
    """Fraction of each link's bandwidth the plan may fill with KV."""


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """Knobs of the search; the defaults reproduce the PrfaaS case study."""

    memory_utilization: float = 0.9
    """Fraction of GPU memory usable for weights + KV (vLLM's ``gpu_memory_utilization``)."""
    max_nodes_per_instance: int = 1
    """Instances stay inside one node by default (TP and PP over NVLink), as in the case study."""
    roofline: RooflineSettings = field(default_factory=RooflineSettings)
    grid_points: int = 48
    """Log-spaced thresholds scanned before the golden-section refinement."""
    tolerance: float = 1e-6
    """Relative tolerance of the threshold optimisation."""
    goodput: GoodputFn | None = None
    """Per-instance goodput of a parallelism candidate; ``None``: the M/D/1 closed forms."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Everything ``plan()`` needs."""

    name: str
    model: ModelArch
    clusters: tuple[ClusterInput, ...]
    links: tuple[LinkInput, ...]
    workload: WorkloadInput
    slo: SloInput = field(default_factory=SloInput)
    offload: OffloadInput = field(default_factory=OffloadInput)
    profiles: tuple[ProfileData, ...] = ()
    max_batch_size: int = 256
    settings: PlannerSettings = field(default_factory=PlannerSettings)
    notes: tuple[str, ...] = ()
    """Provenance of inputs (where each number came from), copied into the plan's notes."""
    max_num_batched_tokens: int = 8192
    """Prefill token budget of one engine step (vLLM ``--max-num-batched-tokens``)."""
    block_tokens: int = 16
    """The engines' KV block (vLLM ``--block-size``, ``spec.engine.blockSize``): the simulator's
    prefix-cache unit and the unit a KV transfer moves (``RoutingCore.kv_block_tokens``)."""
    pins: tuple[tuple[str, str, int], ...] = ()
    """Fixed instance counts as (cluster, role, instances): the planner optimises around them."""
    shape: Literal["auto", "aggregated", "disaggregated"] = "auto"
    """``spec.shape``: the serving shape pinned for every decode cluster (``planner.shapes``)."""

    def pin(self, cluster: str, role: str) -> int | None:
        """The pinned instance count of ``role`` in ``cluster``, or ``None`` (planner's choice)."""
        for c, r, n in self.pins:
            if c == cluster and r == role:
                return n
        return None

    latency_corrections: tuple[tuple[str, str, str, float], ...] = ()
    """``(cluster, role, phase, factor)``: observed/predicted step time learned from the engines'
    own latency while running; ``factor ×`` that phase of that role's latency model."""

    data_plane: DataPlane | None = None
    """Per-request data-plane cost per path (router hop, API servers, NIXL set-up), from the
    measured profile's ``dataPlane``; the simulator adds it to each request's client-visible
    times. ``None``: the engines' own timings are the whole latency."""

    idle_wake: IdleWake | None = None
    """What an engine left idle adds to its next request, from the measured profile's
    ``idleWake``; the simulator adds it where an instance was idle. ``None``: nothing."""

    def correction(self, cluster: str, role: str, phase: str) -> float:
        """The correction factor of one (cluster, role, phase); 1 when none was learned."""
        for c, r, ph, f in self.latency_corrections:
            if (c, r, ph) == (cluster, role, phase):
                return f
        return 1.0

    @property
    def prefill_clusters(self) -> tuple[ClusterInput, ...]:
        return tuple(c for c in self.clusters if c.kind == "prefill")

    @property
    def decode_clusters(self) -> tuple[ClusterInput, ...]:
        return tuple(c for c in self.clusters if c.kind == "decode")
