"""Custom resources → planner ``Problem`` (used by ``prfaas plan`` and by the operator).

The boundary between pydantic (validated API objects) and the planner's dataclasses: names are
resolved against the catalog, durations parsed, distributions built, and a measured link
bandwidth (``InterDCLink.status.measuredGbps``) preferred over the provisioned one when asked.
Every input's provenance goes into ``Problem.notes`` so that the plan can say where each number
came from. Errors are ``TranslateError`` with the object and field to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from prfaas.operator.api import models as api
from prfaas.planner.distributions import Empirical, Fixed, LengthDistribution, LogNormal
from prfaas.planner.errors import CatalogError, PlannerError, ProfileError
from prfaas.planner.latency.catalog import ModelArch, gpu_spec, model_arch, with_memory
from prfaas.planner.latency.measured import (
    DataPlane,
    IdleWake,
    measured_data_plane,
    measured_idle_wake,
    measured_profile,
)
from prfaas.planner.latency.profiles import ProfileData
from prfaas.planner.problem import (
    ClusterInput,
    LinkInput,
    OffloadInput,
    PlannerSettings,
    Problem,
    SloInput,
    WorkloadInput,
)
from prfaas.planner.sharing import ConversationSharing, DocumentSharing, Sharing
from prfaas.planner.trace_workload import with_sharing

__all__ = [
    "TranslateError",
    "distribution",
    "model_from_spec",
    "problem_from_resources",
    "problems_from_manifests",
    "sharing_pattern",
    "spec_profiles",
]


class TranslateError(PlannerError, ValueError):
    """The resources cannot be turned into a planning problem (a missing reference, an unknown
    catalog name); the message names the object and field."""


def sharing_pattern(spec: api.SharingPattern | None) -> Sharing | None:
    """The planner's sharing pattern for ``workload.sharing`` (``planner.sharing``)."""
    if isinstance(spec, api.ConversationSharing):
        return ConversationSharing(spec.concurrent, spec.turns, spec.block_tokens)
    if isinstance(spec, api.DocumentSharing):
        return DocumentSharing(
            spec.documents, distribution(spec.length), spec.zipf, spec.block_tokens
        )
    return None


def distribution(
    spec: api.LogNormalDistribution | api.EmpiricalDistribution | api.FixedDistribution,
) -> LengthDistribution:
    """The planner distribution for an API ``Distribution``."""
    if isinstance(spec, api.LogNormalDistribution):
        return LogNormal(spec.mu, spec.sigma, float(spec.min), float(spec.max))
    if isinstance(spec, api.EmpiricalDistribution):
        return Empirical.from_buckets(
            [b.up_to for b in spec.buckets], [b.weight for b in spec.buckets]
        )
    return Fixed(float(spec.value))


def model_from_spec(spec: api.ModelSpec) -> ModelArch:
    """The catalog model, or an inline architecture turned into a ``ModelArch``."""
    if spec.catalog is not None:
        try:
            return model_arch(spec.catalog)
        except CatalogError as exc:
            raise TranslateError(f"spec.model.catalog: {exc}") from exc
    a = spec.architecture
    assert a is not None  # the API model requires catalog xor architecture
    hybrid = a.full_attention_every > 1
    return ModelArch(
        name=spec.served_name,
        layers=a.layers,
        hidden=a.hidden,
        heads=a.heads,
        kv_heads=a.kv_heads,
        head_dim=a.head_dim,
        ffn=a.ffn,
        vocab=a.vocab,
        params_b=a.params_b,
        active_params_b=a.active_params_b,
        attention=a.attention,
        kv_lora_rank=a.kv_lora_rank or 0,
        rope_dim=a.rope_dim or 0,
        full_attention_every=a.full_attention_every,
        linear_kind="linear" if hybrid else "none",
        linear_state_bytes_per_layer=a.linear_state_bytes_per_layer if hybrid else None,
        dtype_bytes=a.dtype_bytes,
        weight_bytes_per_param=float(a.dtype_bytes),
        max_context=a.max_context,
        note="inline architecture from the ServingPlan",
    ).check()


def _profile(p: api.PublishedProfile, where: str) -> ProfileData:
    prefill = tuple((float(x.tokens), x.seconds) for x in p.prefill if x.tokens is not None)
    decode = []
    for i, x in enumerate(p.decode):
        if x.batch is None or x.context is None:
            raise TranslateError(f"{where}.decode[{i}]: a decode point needs batch and context")
        decode.append((float(x.batch), float(x.context), x.seconds))
    kv = tuple((float(x.tokens), x.kv_mi_b) for x in p.prefill if x.tokens and x.kv_mi_b)
    return ProfileData(
        p.accelerator,
        p.tensor_parallel,
        p.pipeline_parallel,
        p.source or where,
        prefill,
        tuple(decode),
        kv,
    )


def _measured(ref: api.MeasuredProfileRef, model: ModelArch, where: str) -> ProfileData:
    field = f"{where} spec.model.measuredProfile"
    if ref.inline is None:
        cm = ref.config_map_key_ref
        raise TranslateError(
            f"{field}.configMapKeyRef: ConfigMap {cm.name if cm else '?'} was not read; the "
            "operator reads it (offline, put the profile JSON under inline)"
        )
    try:
        return measured_profile(ref.inline, model, f"{field}.inline")
    except ProfileError as exc:
        raise TranslateError(str(exc)) from exc


_T = TypeVar("_T")


def _inline_section(
    spec: api.ModelSpec, where: str, parse: Callable[[Mapping[str, Any], str], _T | None]
) -> _T | None:
    """One optional section of the inline measured profile, parsed; errors name the field."""
    ref = spec.measured_profile
    if ref is None or ref.inline is None:
        return None
    try:
        return parse(ref.inline, f"{where} spec.model.measuredProfile.inline")
    except ProfileError as exc:
        raise TranslateError(str(exc)) from exc


def spec_data_plane(spec: api.ModelSpec, where: str) -> DataPlane | None:
    """The measured profile's per-request data-plane cost per path, if it has one."""
    return _inline_section(spec, where, measured_data_plane)


def spec_idle_wake(spec: api.ModelSpec, where: str) -> IdleWake | None:
    """The measured profile's idle-wake cost, if it has one."""
    return _inline_section(spec, where, measured_idle_wake)


def spec_profiles(spec: api.ModelSpec, model: ModelArch, where: str) -> tuple[ProfileData, ...]:
    """The profiles a ServingPlan gives: its measured one (inline) first, then the published."""
    profiles = tuple(
        _profile(p, f"{where} spec.model.profiles[{i}]") for i, p in enumerate(spec.profiles)
    )
    if spec.measured_profile is not None:
        profiles = (_measured(spec.measured_profile, model, where), *profiles)
    return profiles


def _cluster(
    obj: api.PrefillCluster | api.DecodeCluster, kind: Literal["prefill", "decode"]
) -> ClusterInput:
    acc = obj.spec.accelerator
    try:
        gpu = with_memory(gpu_spec(acc.type), acc.memory_gi_b)
    except CatalogError as exc:
        raise TranslateError(
            f"{obj.KIND}/{obj.metadata.name} spec.accelerator.type: {exc}"
        ) from exc
    fabric = obj.spec.fabric_gbps if isinstance(obj, api.DecodeCluster) else api.FABRIC_GBPS
    return ClusterInput(
        obj.metadata.name,
        obj.spec.datacenter,
        kind,
        gpu,
        acc.count,
        acc.per_node,
        fabric,
    )


def problem_from_resources(
    plan: api.ServingPlan,
    prefill: Sequence[api.PrefillCluster],
    decode: Sequence[api.DecodeCluster],
    links: Sequence[api.InterDCLink],
    *,
    settings: PlannerSettings | None = None,
    use_measured_bandwidth: bool = True,
    corrections: Sequence[tuple[str, str, str, float]] = (),
) -> Problem:
    """The planning problem of one ServingPlan over the clusters and links it can use;
    ``corrections``: ``(cluster, role, phase, factor)`` learned by the autoscaler."""
    spec = plan.spec
    where = f"ServingPlan/{plan.metadata.name}"
    by_name_p = {c.metadata.name: c for c in prefill}
    by_name_d = {c.metadata.name: c for c in decode}
    clusters: list[ClusterInput] = []
    for name in spec.clusters.prefill:
        if name not in by_name_p:
            raise TranslateError(
                f"{where} spec.clusters.prefill: no PrefillCluster {name!r} in the file "
                f"(defined: {', '.join(by_name_p) or 'none'}); add it, or fix the name"
            )
        clusters.append(_cluster(by_name_p[name], "prefill"))
    for name in spec.clusters.decode:
        if name not in by_name_d:
            raise TranslateError(
                f"{where} spec.clusters.decode: no DecodeCluster {name!r} in the file "
                f"(defined: {', '.join(by_name_d) or 'none'}); add it, or fix the name"
            )
        clusters.append(_cluster(by_name_d[name], "decode"))
    link_inputs = []
    notes = []
    for lk in links:
        gbps = lk.spec.bandwidth_gbps
        measured = lk.status.measured_gbps if lk.status else None
        if use_measured_bandwidth and measured is not None:
            notes.append(
                f"link {lk.metadata.name}: measured {measured:g} Gbps (provisioned {gbps:g})"
            )
            gbps = measured
        link_inputs.append(
            LinkInput(lk.metadata.name, lk.spec.from_, lk.spec.to, gbps, lk.spec.rtt_ms)
        )
    model = model_from_spec(spec.model)
    if model.note:
        notes.append(f"model {model.name}: {model.note}")
    profiles = spec_profiles(spec.model, model, where)
    notes.extend(
        f"{p.source} profile {p.accelerator} TP{p.tensor_parallel}×PP{p.pipeline_parallel}: "
        f"{p.origin}"
        for p in profiles
    )
    data_plane = spec_data_plane(spec.model, where)
    idle_wake = spec_idle_wake(spec.model, where)
    if data_plane is not None:
        notes.append(
            f"data plane per request (measured profile's dataPlane, {data_plane.origin}): "
            f"local path {data_plane.local_s * 1e3:.1f} ms, remote path "
            f"{data_plane.remote_s * 1e3:.1f} ms beyond the engines' own timings; the "
            "simulator adds it to each request's TTFT"
        )
    if idle_wake is not None:
        i = len(idle_wake.idle_s) - 1
        notes.append(
            f"idle wake (measured profile's idleWake, {idle_wake.origin}): an engine idle "
            f"{idle_wake.idle_s[i]:g} s takes {idle_wake.prefill_engine_s[i] * 1e3:.1f} ms longer "
            f"for its next prefill, the client sees {idle_wake.prefill_outside_s[i] * 1e3:.1f} ms "
            "more beside it; the simulator adds it where an instance was idle"
        )
    w = spec.workload
    workload = with_sharing(
        WorkloadInput(
            distribution(w.input_length),
            distribution(w.output_length),
            w.requests_per_second,
            w.prefix_cache_hit_rate,
            None if w.uncached_length is None else distribution(w.uncached_length),
        ),
        sharing_pattern(w.sharing),
    )
    slo = SloInput(
        api.duration_seconds(spec.slo.ttft),
        api.duration_seconds(spec.slo.tpot),
        spec.slo.percentile,
        spec.slo.attainment,
    )
    o = spec.offload
    offload = OffloadInput(
        o.mode, float(o.threshold_tokens) if o.threshold_tokens else None, o.bandwidth_headroom
    )
    return Problem(
        name=plan.metadata.name,
        model=model,
        clusters=tuple(clusters),
        links=tuple(link_inputs),
        workload=workload,
        slo=slo,
        offload=offload,
        profiles=profiles,
        max_batch_size=spec.engine.max_batch_size,
        max_num_batched_tokens=spec.engine.max_num_batched_tokens,
        block_tokens=spec.engine.block_size,
        pins=tuple((p.cluster, p.role, p.instances) for p in spec.pins),
        shape=spec.shape,
        settings=settings or PlannerSettings(),
        notes=tuple(notes),
        latency_corrections=tuple(corrections),
        data_plane=data_plane,
        idle_wake=idle_wake,
    )


def problems_from_manifests(resources: Sequence[api.Resource]) -> list[Problem]:
    """One problem per ServingPlan among ``resources`` (clusters and links from the same set)."""
    prefill = [r for r in resources if isinstance(r, api.PrefillCluster)]
    decode = [r for r in resources if isinstance(r, api.DecodeCluster)]
    links = [r for r in resources if isinstance(r, api.InterDCLink)]
    return [
        problem_from_resources(r, prefill, decode, links)
        for r in resources
        if isinstance(r, api.ServingPlan)
    ]
